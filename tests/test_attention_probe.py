"""AttentionProbe: the largest attention logit and the attention entropy per module."""

from __future__ import annotations

import gc
import math
import weakref
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch._measure import attention as attention_module
from gradwatch._measure.attention import AttentionProbe, AttentionSample, sdpa_stats

transformers = pytest.importorskip("transformers")


# ------------------------------------------------------------------ brute force
def _brute(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    allowed: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    """Largest logit, mean entropy and mean ln(keys taking part), in float64."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.double() @ k.double().transpose(-2, -1) * scale
    if bias is not None:
        scores = scores + bias.double()
    if allowed is None:
        allowed = torch.ones_like(scores, dtype=torch.bool)
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    entropy = -(probs * probs.log()).nan_to_num().sum(-1)
    keys = allowed.sum(-1)
    rows = keys > 0
    return (
        scores.max().item(),
        entropy[rows].mean().item(),
        keys[rows].double().log().mean().item(),
    )


def _measure(model: nn.Module, run: Callable[[], Any], **options: Any) -> AttentionSample:
    probe = AttentionProbe(model, **options)
    probe.arm()
    run()
    sample = probe.collect()
    assert sample is not None
    return sample


def _triple(sample: AttentionSample, index: int = 0) -> tuple[float, float, float]:
    return (
        sample.max_logit[index].item(),
        sample.entropy[index].item(),
        sample.max_entropy[index].item(),
    )


def _mha_qk(mha: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys per head of a batch-first self-attention, computed by hand."""
    batch, length, _ = x.shape
    heads = mha.num_heads
    w_q, w_k, _ = mha.in_proj_weight.chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.chunk(3)
    q = (x @ w_q.T + b_q).view(batch, length, heads, -1).transpose(1, 2)
    k = (x @ w_k.T + b_k).view(batch, length, heads, -1).transpose(1, 2)
    return q.detach(), k.detach()


# --------------------------------------------------------- nn.MultiheadAttention
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_equals_brute_force(need_weights: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # MHA's bool mask: True is masked
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])

    def run() -> None:
        mha(x, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=need_weights)

    sample = _measure(mha, run)
    assert sample.modules == ("",) and sample.bounded == (False,)
    q, k = _mha_qk(mha, x)
    allowed = ~causal[None, None] & ~padding[:, None, None, :]
    assert _triple(sample) == pytest.approx(_brute(q, k, allowed=allowed), rel=1e-5)


def test_scaled_query_and_key_weights_grow_the_logit_and_collapse_the_entropy() -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 6, 16)
    before = _measure(mha, lambda: mha(x, x, x, need_weights=False))
    with torch.no_grad():
        mha.in_proj_weight[:32].mul_(10.0)  # queries and keys, not values
        mha.in_proj_bias.zero_()
    after = _measure(mha, lambda: mha(x, x, x, need_weights=False))
    assert after.max_logit[0] > 30 * before.max_logit[0]
    assert before.entropy_fraction[0] > 0.9
    assert after.entropy_fraction[0] < 0.5 * before.entropy_fraction[0]


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layers_are_attributed_to_their_self_attention(
    norm_first: bool,
) -> None:
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    x = torch.randn(3, 4, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    inputs: dict[str, torch.Tensor] = {}
    for index, block in enumerate(encoder.layers):
        block.self_attn.register_forward_pre_hook(
            lambda m, args, i=index: inputs.__setitem__(f"layers.{i}.self_attn", args[0])
        )
    sample = _measure(encoder, lambda: encoder(x, mask=mask, is_causal=True))
    assert sample.modules == ("layers.0.self_attn", "layers.1.self_attn")
    for index, name in enumerate(sample.modules):
        q, k = _mha_qk(encoder.layers[index].self_attn, inputs[name])
        expected = _brute(q, k, allowed=mask == 0)
        assert _triple(sample, index) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------- F.scaled_dot_product
class _CustomSelfAttention(nn.Module):
    """Calls SDPA directly, with every option the probe must honour."""

    def __init__(self, heads: int = 4, kv_heads: int = 2, width: int = 32) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * kv_heads * self.head_dim)
        self.options: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.heads, -1).transpose(1, 2)
        k, v = self.kv(x).view(batch, length, 2 * self.kv_heads, -1).transpose(1, 2).chunk(2, 1)
        self.last = (q.detach(), k.detach())
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **self.options)
        return out.transpose(1, 2).reshape(batch, length, -1)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"is_causal": True},
        {"scale": 0.7},
        {"attn_mask": torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) > 0.3},
        {"attn_mask": torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))},
    ],
    ids=["plain", "causal", "scale", "bool-mask", "float-mask"],
)
def test_sdpa_with_masks_scale_and_grouped_keys_equals_brute_force(
    options: dict[str, Any],
) -> None:
    torch.manual_seed(3)
    model = _CustomSelfAttention()
    model.options = options
    x = torch.randn(2, 5, 32)
    sample = _measure(model, lambda: model(x))
    assert sample.modules == ("",)
    q, k = model.last
    k = k.repeat_interleave(2, dim=1)  # 4 query heads share 2 key heads
    allowed, bias = None, None
    if options.get("is_causal"):
        allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    mask = options.get("attn_mask")
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask
    elif mask is not None:
        bias = mask
    expected = _brute(q, k, scale=options.get("scale"), allowed=allowed, bias=bias)
    assert _triple(sample) == pytest.approx(expected, rel=1e-5)


def test_the_bound_is_used_above_the_limit_and_is_never_below_the_exact_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(4)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 7, 8) * 3
    exact = sdpa_stats(q, k)
    monkeypatch.setattr(attention_module, "EXACT_ELEMENTS", 10)
    bound = sdpa_stats(q, k)
    assert not exact.bounded and bound.bounded and bound.rows is None
    assert bound.max_logit.item() >= exact.max_logit.item()
    norms = q.norm(dim=-1).amax() * k.norm(dim=-1).amax() / math.sqrt(8)
    assert bound.max_logit.item() <= norms.item() * (1 + 1e-6)
    model = _CustomSelfAttention()
    sample = _measure(model, lambda: model(torch.randn(2, 5, 32)))
    assert sample.bounded == (True,) and torch.isnan(sample.entropy).all()
    assert sample.max_entropy[0].item() == pytest.approx(math.log(5))


class _Mixer(nn.Module):
    """Calls SDPA, but is not named like attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.view(2, 2, 3, 4)
        return F.scaled_dot_product_attention(q, q, q)


def test_attention_modules_are_found_by_class_name() -> None:
    model = nn.Sequential(nn.Linear(32, 32), _CustomSelfAttention(), _Mixer())
    probe = AttentionProbe(model)
    assert probe.targets == ("1",) and not probe.fallback


def test_a_model_without_attention_modules_is_watched_whole_under_the_root_name() -> None:
    model = nn.Sequential(_Mixer(), nn.Linear(4, 4))
    probe = AttentionProbe(model)
    assert probe.fallback and probe.targets == ("",)
    x = torch.randn(2, 3, 8)
    sample = _measure(model, lambda: model(x))
    q = x.view(2, 2, 3, 4)
    assert sample.modules == ("",)
    assert _triple(sample) == pytest.approx(_brute(q, q), rel=1e-5)


# ------------------------------------------------------------------ lifetimes
def test_nothing_is_left_behind_and_nothing_is_measured_outside_a_sampled_step() -> None:
    torch.manual_seed(6)
    mha = nn.MultiheadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    probe = AttentionProbe(mha)
    mha(x, x, x)
    assert probe.collect() is None  # not armed
    probe.arm()
    probe.arm()  # idempotent
    assert len(mha._forward_pre_hooks) == 1 and len(mha._forward_hooks) == 1
    with pytest.raises(AssertionError):
        mha(x, x, x[:1])  # a forward that raises still leaves the module
    assert torch.overrides._get_current_function_mode() is None
    mha(x, x, x)
    assert torch.overrides._get_current_function_mode() is None  # only inside the forward
    sample = probe.collect()
    assert sample is not None and sample.modules == ("",)
    assert not mha._forward_pre_hooks and not mha._forward_hooks


def test_eval_and_no_grad_forwards_are_skipped_unless_asked() -> None:
    mha = nn.MultiheadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    probe = AttentionProbe(mha)
    probe.arm()
    with torch.no_grad():
        mha(x, x, x)
    mha.eval()
    mha(x, x, x)
    assert probe.collect() is None
    assert _measure(mha, lambda: mha(x, x, x), include_eval=True).modules == ("",)


def test_a_failing_statistic_never_breaks_the_forward(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(attention_module, "sdpa_stats", broken)
    torch.manual_seed(7)
    mha = nn.MultiheadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    expected = mha(x, x, x, need_weights=False)[0]
    probe = AttentionProbe(mha)
    for _ in range(2):
        probe.arm()
        assert torch.equal(mha(x, x, x, need_weights=False)[0], expected)
        assert probe.collect() is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "boom" in warnings[0].getMessage()


def test_the_probe_does_not_keep_the_model_alive() -> None:
    model = _CustomSelfAttention()
    probe = AttentionProbe(model)
    probe.arm()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert probe.collect() is None


def test_half_precision_is_measured_in_float32() -> None:
    torch.manual_seed(8)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    full = _measure(mha, lambda: mha(x, x, x, need_weights=True))
    mha.bfloat16()
    half = _measure(mha, lambda: mha(x.bfloat16(), x.bfloat16(), x.bfloat16()))
    assert half.max_logit.dtype == torch.float32
    assert half.max_logit[0].item() == pytest.approx(full.max_logit[0].item(), rel=0.05)
    assert half.entropy[0].item() == pytest.approx(full.entropy[0].item(), rel=0.05)


# ---------------------------------------------------------------- Hugging Face
def _hf(kind: str, implementation: str, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(9)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=4,
            vocab_size=50,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
            attn_pdrop=dropout,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
        )
        model = transformers.GPT2LMHeadModel(config)
    elif kind == "bert":
        config = transformers.BertConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=50,
            attention_probs_dropout_prob=dropout,
            hidden_dropout_prob=dropout,
        )
        model = transformers.BertModel(config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=50,
            attention_dropout=dropout,
        )
        model = transformers.LlamaForCausalLM(config)
    model.config._attn_implementation = implementation
    return model


_EXPECTED = {
    "gpt2": ("transformer.h.0.attn", "transformer.h.1.attn"),
    "bert": ("encoder.layer.0.attention.self", "encoder.layer.1.attention.self"),
    "llama": ("model.layers.0.self_attn", "model.layers.1.self_attn"),
}


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_hugging_face_sdpa_and_eager_attention_agree(kind: str) -> None:
    ids = torch.randint(0, 50, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    sdpa_model, eager_model = _hf(kind, "sdpa"), _hf(kind, "eager")
    eager_model.load_state_dict(sdpa_model.state_dict())
    sdpa = _measure(sdpa_model, lambda: sdpa_model(ids, attention_mask=mask))
    eager = _measure(eager_model, lambda: eager_model(ids, attention_mask=mask))
    assert sdpa.modules == eager.modules == _EXPECTED[kind]
    assert sdpa.bounded == eager.bounded == (False, False)
    for a, b in ((sdpa.max_logit, eager.max_logit), (sdpa.entropy, eager.entropy)):
        assert a.tolist() == pytest.approx(b.tolist(), rel=1e-4)
    # Padding and causality: fewer keys than the key length take part on average.
    assert sdpa.max_entropy.tolist() == pytest.approx(eager.max_entropy.tolist(), rel=1e-5)
    assert (sdpa.max_entropy < math.log(8)).all()


def _train(model: nn.Module, probe: AttentionProbe | None, steps: int = 3) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # the dropout stream
    losses = []
    for step in range(steps):
        ids = torch.randint(0, 50, (4, 8), generator=generator)
        if probe is not None and step % 2 == 0:
            probe.arm()
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        if probe is not None and probe.armed:
            sample = probe.collect()
            assert sample is not None and len(sample.modules) == 2
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_training_with_dropout_is_bit_identical_to_an_unwatched_run(implementation: str) -> None:
    plain = _hf("gpt2", implementation, dropout=0.1)
    watched = _hf("gpt2", implementation, dropout=0.1)
    assert _train(plain, None) == _train(watched, AttentionProbe(watched))
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


def test_multihead_attention_training_with_dropout_is_bit_identical() -> None:
    def run(probe_it: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(10)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.2, batch_first=True)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        probe = AttentionProbe(layer) if probe_it else None
        torch.manual_seed(11)
        for _ in range(3):
            if probe is not None:
                probe.arm()
            x = torch.randn(2, 6, 16)
            layer(x).pow(2).mean().backward()
            if probe is not None:
                assert probe.collect() is not None
            optimizer.step()
            optimizer.zero_grad()
        return layer.state_dict()

    plain, watched = run(False), run(True)
    for name in plain:
        assert torch.equal(plain[name], watched[name]), name


def test_statistics_in_slices_equal_statistics_in_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(12)
    scores = torch.randn(2, 3, 5, 6) * 4
    scores[0, 0, 1] = float("-inf")  # a row with every key masked
    scores[1, :, :, 4:] = torch.finfo(torch.float32).min  # padding, as Hugging Face masks
    whole = attention_module.softmax_stats(scores)
    monkeypatch.setattr(attention_module, "SLICE_ELEMENTS", 13)  # two rows per slice
    sliced = attention_module.softmax_stats(scores)
    for a, b in zip(
        (whole.max_logit, whole.entropy_sum, whole.log_keys_sum, whole.rows),
        (sliced.max_logit, sliced.entropy_sum, sliced.log_keys_sum, sliced.rows),
    ):
        assert a is not None and b is not None
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert whole.rows is not None and whole.rows.item() == 2 * 3 * 5 - 1
    assert whole.max_logit.item() == scores.max().item()


def test_evaluation_forwards_keep_the_fast_path_of_multihead_attention() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = mha(x, x, x)[0]
        probe = AttentionProbe(mha)
        probe.arm()
        seen = []
        mha.register_forward_pre_hook(
            lambda *_: seen.append(torch.overrides._get_current_function_mode())
        )
        assert torch.equal(mha(x, x, x)[0], expected)
        assert seen == [None]  # no mode: the fast path is still open
        assert probe.collect() is None


class _ForwardingMHA(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` subclass with its own ``forward`` (the same maths):
    measured through the torch-function mode, not from its inputs."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)


def _mha_pair(**options: Any) -> tuple[nn.MultiheadAttention, nn.MultiheadAttention]:
    torch.manual_seed(11)
    plain = nn.MultiheadAttention(16, 4, **options)
    subclass = _ForwardingMHA(16, 4, **options)
    subclass.load_state_dict(plain.state_dict())
    return plain, subclass


_PADDING = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
_CAUSAL = torch.ones(6, 6, dtype=torch.bool).triu(1)


@pytest.mark.parametrize(
    ("options", "call"),
    [
        ({"batch_first": True}, {"attn_mask": _CAUSAL, "key_padding_mask": _PADDING}),
        ({}, {"attn_mask": _CAUSAL.float() * -1e4}),  # (length, batch, embed), float mask
        ({"batch_first": True}, {"key_padding_mask": _PADDING.float() * -30.0}),
        ({"batch_first": True}, {"attn_mask": torch.randn(2 * 4, 6, 6)}),  # per head
        ({"batch_first": True, "kdim": 8, "vdim": 8}, {}),  # cross-attention, own k proj
        ({"batch_first": True, "bias": False}, {"need_weights": True}),
    ],
    ids=["bool-masks", "seq-first-float", "float-padding", "3d-mask", "kdim", "no-bias"],
)
@pytest.mark.parametrize("first_sequence", [False, True])
def test_multihead_attention_is_measured_from_its_inputs_as_the_mode_measures_it(
    options: dict[str, Any], call: dict[str, Any], first_sequence: bool
) -> None:
    """A plain ``nn.MultiheadAttention`` is measured from its query, key and masks in a
    forward pre-hook, with no torch-function mode over its forward (which slows every op
    of it); the statistics equal the mode's, which sees the SDPA/softmax call inside."""
    plain, subclass = _mha_pair(**options)
    generator = torch.Generator().manual_seed(3)
    shape = (2, 6, 16) if options.get("batch_first") else (6, 2, 16)
    x = torch.randn(*shape, generator=generator)
    memory = torch.randn(*shape[:2], options.get("kdim", 16), generator=generator)
    kv = memory if "kdim" in options else x

    def run(module: nn.MultiheadAttention) -> Callable[[], Any]:
        return lambda: module(x, kv, kv, **{"need_weights": False, **call})

    probe = AttentionProbe(plain, first_sequence=first_sequence)
    probe.arm()
    run(plain)()
    assert not list(probe._modes)  # no mode was ever pushed
    direct = probe.collect()
    if call.get("need_weights") and first_sequence:
        # The mode reads need_weights' softmax over the whole batch (first_sequence is for
        # SDPA calls); measured from the inputs it is the first sequence: compare with it.
        x, kv = x[:1], kv[:1]
    through_mode = _measure(subclass, run(subclass), first_sequence=first_sequence)
    assert direct is not None and direct.modules == through_mode.modules == ("",)
    assert _triple(direct) == pytest.approx(_triple(through_mode), rel=1e-5)


def test_multihead_attention_with_extra_key_rows_is_still_measured_through_the_mode() -> None:
    torch.manual_seed(12)
    mha = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True, add_zero_attn=True)
    x = torch.randn(2, 5, 16)
    sample = _measure(mha, lambda: mha(x, x, x, need_weights=False))
    assert sample.modules == ("",) and math.isfinite(sample.max_logit[0].item())
    assert sample.max_entropy[0].item() == pytest.approx(math.log(5 + 2), rel=1e-5)


# ------------------------------------------------------------- cheaper sampled steps
class _TwoLayers(nn.Module):
    """Two self-attention layers given the same mask tensors, as models pass them."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.MultiheadAttention(16, 4, batch_first=True)
        self.second = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        kwargs = {"attn_mask": mask, "key_padding_mask": padding, "need_weights": False}
        x = x + self.first(x, x, x, **kwargs)[0]
        return x + self.second(x, x, x, **kwargs)[0]


def test_a_mask_given_to_every_layer_is_converted_once_and_not_kept_after_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(13)
    model = _TwoLayers()
    x = torch.randn(2, 6, 16)
    builds: list[tuple[Any, ...]] = []
    probe = AttentionProbe(model, first_sequence=True)
    original = attention_module._mha_mask

    def counting(*args: Any) -> Any:
        builds.append(args)
        return original(*args)

    monkeypatch.setattr(attention_module, "_mha_mask", counting)
    probe.arm()
    model(x, _CAUSAL, _PADDING)
    monkeypatch.undo()
    assert len(builds) == 1  # the second layer reused the first layer's mask
    assert len(probe._masks) == 1
    sample = probe.collect()
    assert len(probe._masks) == 0  # nothing held between sampled steps
    assert sample is not None and sample.modules == ("first", "second")
    # Each layer's values are its own, as measured alone without a cache.
    call = {"attn_mask": _CAUSAL, "key_padding_mask": _PADDING, "need_weights": False}
    second_input = x + model.first(x, x, x, **call)[0]
    for index, (layer, inputs) in enumerate(((model.first, x), (model.second, second_input))):

        def run(layer: nn.Module = layer, inputs: torch.Tensor = inputs) -> Any:
            return layer(inputs, inputs, inputs, **call)

        alone = _measure(layer, run, first_sequence=True)
        assert _triple(sample, index) == pytest.approx(_triple(alone), rel=1e-5)


def test_the_mask_cache_rebuilds_after_an_in_place_change_and_stays_bounded() -> None:
    cache = attention_module.MaskCache()
    mask = torch.zeros(3, 3, dtype=torch.bool)
    built: list[torch.Tensor] = []

    def build() -> torch.Tensor:
        built.append(attention_module._additive(mask))
        return built[-1]

    first = cache.get((mask, None), "facts", build)
    assert cache.get((mask, None), "facts", build) is first and len(built) == 1
    assert cache.get((mask, None), "other facts", build) is not first  # another shape
    mask[0, 1] = True  # in place: the version counter moves, the old mask is stale
    rebuilt = cache.get((mask, None), "facts", build)
    assert len(built) == 3 and rebuilt[0, 1] == float("-inf") and first[0, 1] == 0
    for _ in range(2 * cache.SIZE):
        other = torch.zeros(3, 3, dtype=torch.bool)
        cache.get((other,), "facts", lambda other=other: attention_module._additive(other))
    assert len(cache) == cache.SIZE
    cache.clear()
    assert len(cache) == 0
    causal = cache.causal(3, 4, torch.device("cpu"))
    assert cache.causal(3, 4, torch.device("cpu")) is causal
    expected = torch.zeros(3, 4).masked_fill_(torch.ones(3, 4, dtype=torch.bool).triu(1), -math.inf)
    assert torch.equal(causal, expected)


def test_sdpa_masks_are_reused_across_calls_with_first_sequence() -> None:
    torch.manual_seed(14)
    q, k = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    allowed = torch.rand(3, 1, 5, 5) > 0.3  # SDPA's boolean mask: True takes part
    allowed[..., 0] = True
    cache = attention_module.MaskCache()
    one = sdpa_stats(q, k, allowed, first_sequence=True, masks=cache)
    two = sdpa_stats(q * 2, k, allowed, first_sequence=True, masks=cache)
    assert len(cache) == 1
    for call, scale in ((one, 1.0), (two, 2.0)):
        top, entropy, log_keys = _brute(q[:1] * scale, k[:1], allowed=allowed[:1])
        assert call.rows is not None and call.entropy_sum is not None
        assert call.log_keys_sum is not None
        rows = call.rows.item()
        assert call.max_logit.item() == pytest.approx(top, rel=1e-5)
        assert call.entropy_sum.item() / rows == pytest.approx(entropy, rel=1e-5)
        assert call.log_keys_sum.item() / rows == pytest.approx(log_keys, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_statistics_of_a_softmax_leave_its_input_and_output_unchanged(
    dtype: torch.dtype,
) -> None:
    torch.manual_seed(15)
    logits = (torch.randn(2, 3, 4, 5) * 3).to(dtype)
    logits[0, 0, :, 3:] = float("-inf")
    probs = torch.softmax(logits.float(), dim=-1).to(dtype)
    before = (logits.clone(), probs.clone())
    attention_module.softmax_stats(logits, probs)
    attention_module.softmax_stats(logits)
    assert torch.equal(logits, before[0]) and torch.equal(probs, before[1])
