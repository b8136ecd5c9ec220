"""LogitProbe: log Z and |logit| of the model's output logits on sampled steps."""

from __future__ import annotations

import gc
import math
import weakref
from typing import Any

import pytest
import torch
from torch import nn

from gradwatch._measure import logits as logits_module
from gradwatch._measure.logits import LOGIT_STATS, LogitProbe, find_logits


def _classifier(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5))


def _expected(logits: torch.Tensor) -> list[float]:
    lse = torch.logsumexp(logits.double().reshape(-1, logits.shape[-1]), dim=-1)
    return [lse.mean().item(), lse.max().item(), logits.double().abs().max().item()]


def test_values_equal_a_direct_computation() -> None:
    model = _classifier()
    probe = LogitProbe(model)
    x = torch.randn(8, 6) * 3
    probe.arm()
    out = model(x)
    values = probe.collect()
    assert values.shape == (len(LOGIT_STATS),) and values.dtype == torch.float32
    assert values.tolist() == pytest.approx(_expected(out.detach()), rel=1e-5)


def test_hook_exists_only_while_armed_and_a_forward_outside_is_not_measured() -> None:
    model = _classifier()
    probe = LogitProbe(model)
    assert not model._forward_hooks and not probe.armed
    model(torch.randn(4, 6))
    probe.arm()
    probe.arm()  # idempotent
    assert len(model._forward_hooks) == 1 and probe.armed
    values = probe.collect()
    assert not model._forward_hooks
    assert torch.isnan(values).all()  # armed, but no forward ran


def test_several_forwards_give_the_mean_over_all_tokens_and_the_maxima() -> None:
    model = _classifier()
    probe = LogitProbe(model)
    probe.arm()
    first = model(torch.randn(3, 6)).detach()
    second = model(torch.randn(5, 6) * 10).detach()
    values = probe.collect()
    assert values.tolist() == pytest.approx(_expected(torch.cat([first, second])), rel=1e-5)


def test_sequence_logits_in_slices_and_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = torch.randn(3, 7, 11) * 20
    monkeypatch.setattr(logits_module, "CHUNK_ELEMENTS", 25)  # 2 rows per slice
    total, lse_max, abs_max, tokens = logits_module.logit_sums(logits)
    assert tokens == 21
    result = [(total / tokens).item(), lse_max.item(), abs_max.item()]
    assert result == pytest.approx(_expected(logits), rel=1e-5)
    half = logits.bfloat16()
    total, lse_max, abs_max, _ = logits_module.logit_sums(half)
    assert total.dtype == torch.float32
    assert [(total / 21).item(), lse_max.item()] == pytest.approx(_expected(half)[:2], rel=1e-5)


class _Out:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.loss = logits.sum()


def test_where_the_logits_are_found() -> None:
    x = torch.randn(2, 4)
    assert find_logits(x) is x
    assert find_logits((x, torch.randn(3))) is x
    assert find_logits([None, x]) is x
    assert find_logits({"logits": x, "loss": x.sum()}) is x
    assert find_logits(_Out(x)) is x
    assert find_logits(torch.randn(4, 1)) is None  # one output: a regression, not logits
    assert find_logits(torch.randn(())) is None
    assert find_logits(torch.arange(6).reshape(3, 2)) is None  # integers
    assert find_logits("text") is None


def test_eval_and_no_grad_forwards_are_skipped_unless_asked() -> None:
    model = _classifier()
    probe = LogitProbe(model)
    probe.arm()
    with torch.no_grad():
        model(torch.randn(4, 6))
    model.eval()
    model(torch.randn(4, 6))
    assert torch.isnan(probe.collect()).all()
    counting = LogitProbe(model, include_eval=True)
    counting.arm()
    with torch.no_grad():
        model(torch.randn(4, 6))
    assert not torch.isnan(counting.collect()).any()


def test_a_failing_statistic_never_breaks_the_forward(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(logits: torch.Tensor) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(logits_module, "logit_sums", broken)
    model = _classifier()
    probe = LogitProbe(model)
    for _ in range(2):
        probe.arm()
        model(torch.randn(4, 6))
        assert torch.isnan(probe.collect()).all()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "boom" in str(warnings[0].exc_info)


def test_the_probe_does_not_keep_the_model_alive() -> None:
    model = _classifier()
    probe = LogitProbe(model)
    probe.arm()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    probe.arm()
    assert torch.isnan(probe.collect()).all()


def _train(model: nn.Module, probe: LogitProbe | None, steps: int = 4) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    losses = []
    torch.manual_seed(7)  # the dropout stream
    for step in range(steps):
        x = torch.randn(16, 6, generator=generator)
        y = torch.randint(0, 5, (16,), generator=generator)
        if probe is not None and step % 2 == 0:
            probe.arm()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if probe is not None and probe.armed:
            assert not math.isnan(probe.collect()[0].item())
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_is_bit_identical_to_an_unwatched_run() -> None:
    plain, watched = _classifier(), _classifier()
    plain_losses = _train(plain, None)
    watched_losses = _train(watched, LogitProbe(watched))
    assert plain_losses == watched_losses
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


def test_hugging_face_model_output() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0
    )
    config.eos_token_id = 0
    model = transformers.GPT2LMHeadModel(config)
    probe = LogitProbe(model)
    probe.arm()
    ids = torch.randint(0, 50, (2, 8))
    out = model(ids, labels=ids)
    values = probe.collect()
    assert values.tolist() == pytest.approx(_expected(out.logits.detach()), rel=1e-5)


def test_large_logits_are_measured_on_every_kth_token() -> None:
    """Above MEASURED_VALUES values only every k-th token is read (at least MIN_TOKENS):
    the mean log-sum-exp is estimated closely, and a token-wide drift shows in the maxima."""
    from gradwatch._measure.logits import MEASURED_VALUES, MIN_TOKENS, logit_sums

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 512, 1000, generator=generator)
    total, lse_max, abs_max, tokens = logit_sums(logits)
    assert MIN_TOKENS <= tokens <= MEASURED_VALUES // 1000 < 16 * 512
    full = torch.logsumexp(logits, dim=-1)
    assert (total / tokens).item() == pytest.approx(full.mean().item(), rel=1e-3)
    assert lse_max.item() <= full.max().item() and abs_max.item() <= logits.abs().max().item()
    drifted = logits + 30.0
    _, drifted_max, drifted_abs, _ = logit_sums(drifted)
    assert drifted_max.item() > lse_max.item() + 29 and drifted_abs.item() > 30
    few = torch.randn(2, 10, 1000, generator=generator)
    assert logit_sums(few)[3] == 20  # small logits: every token


@pytest.mark.parametrize(
    "edit",
    ["plus-inf", "minus-inf", "all-minus-inf", "nan", "masked-vocabulary"],
)
def test_non_finite_logits_give_what_logsumexp_and_aminmax_give(edit: str) -> None:
    """log Z through log-softmax keeps torch.logsumexp's answers where a row is not
    finite: +inf for a row holding +inf, -inf for a row of -inf only, NaN for NaN."""
    logits = torch.randn(4, 3, 9) * 5
    if edit == "plus-inf":
        logits[1, 2, 4] = float("inf")
    elif edit == "minus-inf":
        logits[0, 1, 3] = float("-inf")
    elif edit == "all-minus-inf":
        logits[2, 0] = float("-inf")
    elif edit == "nan":
        logits[3, 1, 0] = float("nan")
    else:  # a vocabulary masked with -inf on every token, as constrained decoding does
        logits[..., 7:] = float("-inf")
    before = logits.clone()
    total, lse_max, abs_max, tokens = logits_module.logit_sums(logits)
    assert torch.equal(logits.nan_to_num(), before.nan_to_num())  # left as it was
    lse = torch.logsumexp(logits.reshape(-1, 9), dim=-1)
    low, high = torch.aminmax(logits)
    expected = [lse.sum(), lse.max(), torch.maximum(high, -low)]
    for value, want in zip((total, lse_max, abs_max), expected):
        assert value.isnan().item() == want.isnan().item()
        if not want.isnan():
            assert value.item() == pytest.approx(want.item(), rel=1e-5)
    assert tokens == 12
