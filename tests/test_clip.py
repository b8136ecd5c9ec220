"""Clippers: equal to torch's clipping, to the papers' formulas, and useful on a spiking model."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._clip import ClipTarget

from .helpers import make_mlp, regression_batches, train_steps

# ------------------------------------------------------------------ helpers


def _steep_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Regression batches with large targets, so gradient norms are well above 1."""
    return [(x, 20 * y) for x, y in regression_batches(n)]


def _assert_models_close(a: nn.Module, b: nn.Module, rtol: float = 1e-5) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-6, msg=name)


def _target(norm: float, dim: int = 3) -> ClipTarget:
    """A one-parameter target whose gradient has exactly the given L2 norm."""
    param = torch.zeros(dim, requires_grad=True)
    grad = torch.full((dim,), norm / math.sqrt(dim)) if math.isfinite(norm) else None
    if grad is None:
        grad = torch.full((dim,), norm)
    param.grad = grad
    return ClipTarget([param], [param.grad], ["layer"])


def _coefs(clipper: gradwatch.Clipper, norms: list[float]) -> list[float]:
    out = []
    for norm in norms:
        target = _target(norm)
        coef = clipper.clip_(target, torch.tensor(norm, dtype=torch.float32))
        out.append(float(coef))
    return out


def _recorded_norms() -> list[float]:
    """Total gradient norms recorded from a real (unclipped) run, with injected spikes."""
    model = make_mlp(seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    with gradwatch.watch(model, optimizer, update_ratio_every=0) as gw:
        train_steps(model, optimizer, _steep_batches(60), gw)
    norms = [r.total_grad_norm for r in gw.history]
    for step, factor in ((30, 40.0), (31, 15.0), (45, 80.0), (52, 5.0)):
        norms[step] *= factor
    return norms


# ------------------------------------------------------- equal to torch's clipping


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-2),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_clip_number_equals_clip_grad_norm_before_each_step(make_optimizer) -> None:
    batches = _steep_batches(15)
    plain, watched = make_mlp(seed=3), make_mlp(seed=3)
    plain_opt = make_optimizer(plain.parameters())
    watched_opt = make_optimizer(watched.parameters())
    train_steps(
        plain,
        plain_opt,
        batches,
        before_step=lambda _: torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0),
    )
    with gradwatch.watch(watched, watched_opt, clip=1.0) as gw:
        train_steps(watched, watched_opt, batches, gw)
    _assert_models_close(plain, watched)
    assert gw.clipped_steps > 10  # the comparison exercised clipping, not a no-op
    for record in gw.history:
        assert record.clip_coef == pytest.approx(min(1.0, 1.0 / (record.total_grad_norm + 1e-6)))


@pytest.mark.parametrize("norm_type", [1.0, math.inf])
def test_clip_norm_other_norm_types_equal_torch(norm_type: float) -> None:
    batches = _steep_batches(8)
    plain, watched = make_mlp(seed=4), make_mlp(seed=4)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    watched_opt = torch.optim.SGD(watched.parameters(), lr=0.05)
    train_steps(
        plain,
        plain_opt,
        batches,
        before_step=lambda _: torch.nn.utils.clip_grad_norm_(plain.parameters(), 2.0, norm_type),
    )
    with gradwatch.watch(watched, watched_opt, clip=gradwatch.ClipNorm(2.0, norm_type)) as gw:
        train_steps(watched, watched_opt, batches, gw)
    _assert_models_close(plain, watched)
    assert gw.clipped_steps > 0


def test_clip_value_equals_clip_grad_value() -> None:
    batches = _steep_batches(8)
    plain, watched = make_mlp(seed=6), make_mlp(seed=6)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    watched_opt = torch.optim.SGD(watched.parameters(), lr=0.05)
    train_steps(
        plain,
        plain_opt,
        batches,
        before_step=lambda _: torch.nn.utils.clip_grad_value_(plain.parameters(), 0.05),
    )
    with gradwatch.watch(watched, watched_opt, clip=gradwatch.ClipValue(0.05)) as gw:
        train_steps(watched, watched_opt, batches, gw)
    for (_, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b)
    assert all(0 < r.clip_coef < 1 for r in gw.history)


def test_statistics_are_logged_before_clipping_and_coef_is_logged(tmp_path) -> None:
    model = make_mlp(seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected_norms = []

    def record_norm(step: int) -> None:
        grads = [p.grad for p in model.parameters()]
        expected_norms.append(torch.nn.utils.get_total_norm(grads).item())

    with gradwatch.watch(model, optimizer, logdir=tmp_path, clip=0.5) as gw:
        train_steps(model, optimizer, _steep_batches(6), gw, before_step=record_norm)
    run = read_run(tmp_path)
    logged = [v for _, v in run.scalars["total/grad_norm"]]
    np.testing.assert_allclose(logged, expected_norms, rtol=1e-5)
    coefs = [v for _, v in run.scalars["total/clip_coef"]]
    np.testing.assert_allclose(coefs, [min(1, 0.5 / (n + 1e-6)) for n in expected_norms], rtol=1e-5)
    assert max(expected_norms) > 0.5 and gw.clipped_steps == sum(n > 0.5 for n in expected_norms)


def test_without_clip_no_coefficient_is_logged(tmp_path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, optimizer, logdir=tmp_path) as gw:
        train_steps(model, optimizer, regression_batches(3), gw)
    assert "total/clip_coef" not in read_run(tmp_path).scalars
    assert gw.history.latest.clip_coef is None and gw.clipped_steps == 0


def test_gradient_accumulation_clips_the_accumulated_gradient_once() -> None:
    batches = _steep_batches(12)
    plain, watched = make_mlp(seed=8), make_mlp(seed=8)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
    watched_opt = torch.optim.SGD(watched.parameters(), lr=0.05, momentum=0.9)

    def accumulate(model, optimizer, clip_by_hand: bool) -> None:
        for i, (x, y) in enumerate(batches):
            (nn.functional.mse_loss(model(x), y) / 4).backward()
            if i % 4 == 3:
                if clip_by_hand:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()

    accumulate(plain, plain_opt, clip_by_hand=True)
    with gradwatch.watch(watched, watched_opt, clip=1.0) as gw:
        accumulate(watched, watched_opt, clip_by_hand=False)
    _assert_models_close(plain, watched)
    assert gw.step_count == 3 and gw.clipped_steps == 3


# ------------------------------------------- adaptive clippers vs published formulas


def test_agc_matches_the_papers_unitwise_rule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(2, 3, 8, 8)
    (model(x).square().sum() * 50).backward()
    params = list(model.parameters())
    grads_before = [p.grad.clone() for p in params]

    # The paper's rule, written plainly, one unit at a time (rows of W; a bias is one unit).
    expected = []
    for p, g in zip(params, grads_before):
        w, g = p.detach().double(), g.double()
        w2 = w.reshape(w.shape[0], -1) if w.ndim > 1 else w[None]
        g2 = g.reshape(g.shape[0], -1) if g.ndim > 1 else g[None]
        rows = []
        for w_row, g_row in zip(w2, g2):
            max_norm = 0.01 * max(w_row.norm().item(), 1e-3)
            g_norm = g_row.norm().item()
            rows.append(g_row if g_norm < max_norm else g_row * max_norm / max(g_norm, 1e-6))
        expected.append(torch.stack(rows).reshape(g.shape))

    total = torch.nn.utils.get_total_norm(grads_before)
    clipper = gradwatch.AGC(clip_factor=0.01, eps=1e-3)
    coef = clipper.clip_(ClipTarget(params, [p.grad for p in params], ["0"] * 4), total)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad.double(), want, rtol=1e-5, atol=1e-9)
    after = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert float(coef) == pytest.approx(float(after / total), rel=1e-5)
    assert float(coef) < 1


def test_agc_exclude_leaves_named_layers_unclipped() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    (model(torch.randn(3, 4)).sum() * 100).backward()
    head = [p.grad.clone() for p in model[1].parameters()]
    params = list(model.parameters())
    gradwatch.AGC(exclude=("1",)).clip_(
        ClipTarget(params, [p.grad for p in params], ["0", "0", "1", "1"]),
        torch.nn.utils.get_total_norm([p.grad for p in params]),
    )
    for p, before in zip(model[1].parameters(), head):
        assert torch.equal(p.grad, before)


def _autoclip_reference(norms: list[float], percentile: float) -> list[float]:
    """Seetharaman et al. 2020: threshold = p-th percentile of all norms so far (incl. this)."""
    coefs = []
    for t, norm in enumerate(norms):
        threshold = np.percentile(norms[: t + 1], percentile)
        coefs.append(min(1.0, threshold / (norm + 1e-6)))
    return coefs


@pytest.mark.parametrize("percentile", [10.0, 50.0, 90.0])
def test_autoclip_matches_the_published_percentile_rule(percentile: float) -> None:
    norms = _recorded_norms()
    got = _coefs(gradwatch.AutoClip(percentile=percentile), norms)
    np.testing.assert_allclose(got, _autoclip_reference(norms, percentile), rtol=1e-5)
    assert min(got) < 0.2  # the injected spikes were clipped hard


def test_autoclip_history_is_a_window_of_the_last_norms() -> None:
    norms = [float(n) for n in np.linspace(1.0, 3.0, 12)]
    got = _coefs(gradwatch.AutoClip(percentile=50, history=4), norms)
    want = [
        min(1.0, np.percentile(norms[max(0, t - 3) : t + 1], 50) / (n + 1e-6))
        for t, n in enumerate(norms)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_autoclip_ignores_non_finite_norms() -> None:
    clipper = gradwatch.AutoClip(percentile=50)
    _coefs(clipper, [1.0, 2.0, math.inf, math.nan, 3.0])
    assert clipper.norms.isnan().sum() == 2
    assert _coefs(clipper, [2.0])[0] == pytest.approx(1.0, rel=1e-6)  # median of 1,2,3,2


def _zclip_reference(
    norms: list[float],
    *,
    alpha: float = 0.97,
    z_thresh: float = 2.5,
    warmup: int = 25,
    max_grad_norm: float | None = 1.0,
    mode: str = "zscore",
    option: str = "adaptive_scaling",
    clip_factor: float = 1.0,
    skip_update_on_spike: bool = False,
) -> list[float]:
    """ZClip (Kumar et al. 2025), written from the paper's algorithm with plain floats."""
    coefs, buffer = [], []
    mean = var = None
    for g in norms:
        if mean is None:
            buffer.append(g)
            if len(buffer) == warmup:
                mean = sum(buffer) / len(buffer)
                var = sum((b - mean) ** 2 for b in buffer) / len(buffer)
            limit = math.inf if max_grad_norm is None else max_grad_norm
            coefs.append(min(1.0, limit / (g + 1e-6)))
            continue
        std = math.sqrt(var)
        clip_value = None
        if mode == "percentile":
            if g > mean + z_thresh * std:
                clip_value = mean + z_thresh * std
        else:
            z = (g - mean) / (std + 1e-6)
            if z > z_thresh:
                if option == "mean":
                    clip_value = mean
                else:
                    clip_value = (mean + z_thresh * std / (z / z_thresh)) * clip_factor
        effective = g if clip_value is None else clip_value
        if max_grad_norm is not None:
            effective = min(effective, max_grad_norm)
        coefs.append(effective / (g + 1e-6) if g > effective else 1.0)
        if clip_value is not None and skip_update_on_spike:
            continue
        value = g if clip_value is None else clip_value
        mean = alpha * mean + (1 - alpha) * value
        var = alpha * var + (1 - alpha) * (value - mean) ** 2
    return coefs


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_grad_norm": None},
        {"max_grad_norm": None, "clip_option": "mean"},
        {"max_grad_norm": None, "mode": "percentile"},
        {"max_grad_norm": None, "skip_update_on_spike": True, "z_thresh": 2.0},
        {"max_grad_norm": 5.0, "alpha": 0.9, "warmup_steps": 10, "clip_factor": 0.7},
    ],
    ids=["defaults", "no-cap", "mean", "percentile", "skip-update", "custom"],
)
def test_zclip_matches_the_published_algorithm(options: dict) -> None:
    norms = _recorded_norms()
    reference_options = dict(options)
    if "warmup_steps" in reference_options:
        reference_options["warmup"] = reference_options.pop("warmup_steps")
    if "clip_option" in reference_options:
        reference_options["option"] = reference_options.pop("clip_option")
    got = _coefs(gradwatch.ZClip(**options), norms)
    want = _zclip_reference(norms, **reference_options)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    if options.get("max_grad_norm", 1.0) is None:
        assert min(got[25:]) < 0.2  # the adaptive rule itself clipped the injected spikes


def test_zclip_state_survives_a_non_finite_norm() -> None:
    clipper = gradwatch.ZClip(warmup_steps=3, max_grad_norm=None)
    _coefs(clipper, [1.0, 1.1, 0.9, 1.0])
    mean = float(clipper.mean)
    _coefs(clipper, [math.nan, math.inf])
    assert float(clipper.mean) == mean and math.isfinite(float(clipper.var))


# ------------------------------------------------ a real model whose gradients spike


class _SpikyRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 16, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _spiky_run(clip) -> list[float]:
    """A ReLU RNN trained with SGD; two batches with corrupted targets make gradients spike."""
    torch.manual_seed(0)
    model = _SpikyRNN()
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with gradwatch.watch(model, optimizer, clip=clip, update_ratio_every=0):
        for step in range(45):
            x = torch.randn(16, 12, 4, generator=generator)
            y = x[:, :, 0].mean(1, keepdim=True)
            if step in (30, 31):
                y = y * 1e4
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "clip",
    [
        1.0,
        gradwatch.AGC(),
        gradwatch.AutoClip(),
        gradwatch.ZClip(),
        gradwatch.ZClip(max_grad_norm=None),
    ],
    ids=["norm", "agc", "autoclip", "zclip", "zclip-no-cap"],
)
def test_clipping_keeps_a_spiking_rnn_finite_where_plain_training_diverges(clip, caplog) -> None:
    with caplog.at_level(logging.CRITICAL, logger="gradwatch"):
        plain = _spiky_run(None)
    assert not all(math.isfinite(v) for v in plain[32:])  # diverged: NaN/inf after the spike
    clipped = _spiky_run(copy.deepcopy(clip))
    assert all(math.isfinite(v) for v in clipped)
    assert max(clipped[33:]) < 1.0  # recovered: back to a normal loss right after the spike


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: gradwatch.ClipNorm(0), ValueError, r"ClipNorm\(max_norm\)"),
        (lambda: gradwatch.ClipNorm(1.0, norm_type=-2), ValueError, r"norm_type"),
        (lambda: gradwatch.ClipValue(-1), ValueError, r"ClipValue\(value\)"),
        (lambda: gradwatch.AGC(clip_factor=-1), ValueError, r"AGC\(clip_factor\)"),
        (lambda: gradwatch.AGC(eps=0), ValueError, r"AGC\(eps\)"),
        (lambda: gradwatch.AGC(exclude="fc"), TypeError, r"AGC\(exclude\)"),
        (lambda: gradwatch.AutoClip(percentile=150), ValueError, r"AutoClip\(percentile\)"),
        (lambda: gradwatch.AutoClip(percentile=0), ValueError, r"AutoClip\(percentile\)"),
        (lambda: gradwatch.AutoClip(history=0), ValueError, r"AutoClip\(history\)"),
        (lambda: gradwatch.ZClip(z_thresh=0), ValueError, r"ZClip\(z_thresh\)"),
        (lambda: gradwatch.ZClip(alpha=1.0), ValueError, r"ZClip\(alpha\)"),
        (lambda: gradwatch.ZClip(warmup_steps=0), ValueError, r"ZClip\(warmup_steps\)"),
        (lambda: gradwatch.ZClip(mode="median"), ValueError, r"ZClip\(mode\)"),
        (lambda: gradwatch.ZClip(clip_option="max"), ValueError, r"ZClip\(clip_option\)"),
        (lambda: gradwatch.ZClip(max_grad_norm=-1), ValueError, r"ZClip\(max_grad_norm\)"),
    ],
)
def test_clippers_validate_their_arguments(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("clip", "error", "match"),
    [
        (-1, ValueError, r"clip must be a positive.*got -1.*clip=1\.0"),
        (0, ValueError, r"clip must be a positive.*got 0"),
        (float("inf"), ValueError, r"clip must be a positive, finite"),
        (True, TypeError, r"clip must be a number.*got bool"),
        ("1.0", TypeError, r"clip must be a number.*got str"),
        (gradwatch.ZClip, TypeError, r"pass an instance, e\.g\. clip=ZClip\(\)"),
        (torch.nn.utils.clip_grad_norm_, TypeError, r"clip must be a number.*got function"),
    ],
)
def test_watch_refuses_bad_clip_values(clip, error, match) -> None:
    model = make_mlp()
    with pytest.raises(error, match=match):
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), clip=clip)


# ------------------------------------------- AGC on a real tied GPT-2 (issue 20 item 11)


def _tied_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0
    )
    config.eos_token_id = 0
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as GPT-2 ships
    return model


def _agc_reference(model: nn.Module, grads: dict[str, torch.Tensor], exclude: set[str]) -> dict:
    """The NFNets rule written plainly, unit by unit, from the model's own modules.

    A unit is an output neuron: a row of a torch weight (out, in, ...), a *column* of a
    Hugging Face Conv1D weight (in, out); a vector is one unit. A parameter held by an
    excluded module (a tied head holds the embedding's weight) is left alone.
    """
    from transformers.pytorch_utils import Conv1D

    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            holders.setdefault(id(param), []).append((name, module, local))
    expected = {}
    for name, param in model.named_parameters():  # tied weights once, as torch lists them
        held = holders[id(param)]
        grad = grads[name].double()
        if any(holder in exclude for holder, _, _ in held):
            expected[name] = grad
            continue
        w = param.detach().double()
        columns = any(isinstance(m, Conv1D) and local == "weight" for _, m, local in held)
        if columns:
            w, grad = w.T, grad.T
        w2 = w.reshape(w.shape[0], -1) if w.ndim > 1 else w[None]
        g2 = grad.reshape(grad.shape[0], -1) if grad.ndim > 1 else grad[None]
        rows = []
        for w_row, g_row in zip(w2, g2):
            max_norm = 0.01 * max(w_row.norm().item(), 1e-3)
            g_norm = g_row.norm().item()
            rows.append(g_row if g_norm < max_norm else g_row * max_norm / max(g_norm, 1e-6))
        out = torch.stack(rows).reshape(grad.shape)
        expected[name] = out.T if columns else out
    return expected


def _agc_step(model: nn.Module, clipper: gradwatch.AGC) -> dict[str, torch.Tensor]:
    """One watched step of ``model`` under ``clipper``; the gradients before clipping."""
    ids = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(3))
    (model(ids, labels=ids).loss * 1e3).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    with gradwatch.watch(model, clip=clipper, activation_every=0) as gw:
        gw.step()  # no optimizer: the clipper acts here, leaving the clipped .grad
    return before


@pytest.mark.parametrize("exclude", [("lm_head",), ("transformer.wte",), ()])
def test_agc_on_a_tied_gpt2_equals_the_papers_rule_conv1d_columns_and_tied_head(exclude):
    model = _tied_gpt2()
    before = _agc_step(model, gradwatch.AGC(clip_factor=0.01, eps=1e-3, exclude=exclude))
    expected = _agc_reference(model, before, set(exclude))
    clipped = 0
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad.double(), expected[name], rtol=1e-5, atol=1e-9)
        clipped += not torch.equal(param.grad, before[name])
    assert clipped > 3  # the rule did act on this model
    if exclude:  # the tied weight is excluded whichever of its two holders is named
        wte = "transformer.wte.weight"
        assert torch.equal(dict(model.named_parameters())[wte].grad, before[wte])


def test_agc_clips_conv1d_by_output_columns() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(6, 4)  # weight (in=4, out=6): y = x @ W + b
    conv.weight.grad = torch.randn(4, 6) * 100
    conv.bias.grad = torch.randn(6)
    before = {n: p.grad.clone() for n, p in conv.named_parameters()}
    with gradwatch.watch(conv, clip=gradwatch.AGC(), activation_every=0) as gw:
        gw.step()
    want = _agc_reference(conv, before, set())["weight"]
    torch.testing.assert_close(conv.weight.grad.double(), want, rtol=1e-5, atol=1e-9)
    # Each output column's gradient is exactly at its limit, 0.01 * that column's norm.
    limits = 0.01 * conv.weight.detach().norm(dim=0).clamp_min(1e-3)
    torch.testing.assert_close(conv.weight.grad.norm(dim=0), limits, rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    ("exclude", "match"),
    [
        (("head",), r"AGC\(exclude\) names 'head'.*matches no module.*Did you mean 'lm_head'"),
        (("transformer.h.0",), r"AGC\(exclude\) names 'transformer\.h\.0', which matches no"),
        (("lm_head", "fc"), r"AGC\(exclude\) names 'fc'"),
    ],
)
def test_agc_exclude_names_that_match_nothing_are_refused_at_attach(exclude, match) -> None:
    model = _tied_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        gradwatch.watch(model, optimizer, clip=gradwatch.AGC(exclude=exclude))
    gradwatch.watch(model, optimizer, clip=gradwatch.AGC(exclude=("lm_head",))).close()


# ------------------------------- adaptive clippers belong to one run (issue 20 item 9)


@pytest.mark.parametrize(
    "make", [lambda: gradwatch.AutoClip(), lambda: gradwatch.ZClip(warmup_steps=2)]
)
def test_a_reused_adaptive_clipper_warns_that_its_state_carries_over(make) -> None:
    clipper = make()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, clip=clipper) as gw:
        train_steps(model, optimizer, regression_batches(3), gw)
    name = type(clipper).__name__
    with pytest.warns(UserWarning, match=rf"this {name} instance already clipped 3 step.*reset"):
        gw = gradwatch.watch(model, optimizer, clip=clipper)
    with gw:  # it carries on from the first run, as the warning said
        train_steps(model, optimizer, regression_batches(2), gw)
    assert clipper.steps_seen == 5
    clipper.reset()  # the fix the warning gives: a fresh start, and no warning
    with gradwatch.watch(model, optimizer, clip=clipper) as gw:
        train_steps(model, optimizer, regression_batches(2), gw)
    assert clipper.steps_seen == 2


def test_stateless_clippers_may_be_reused() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for clipper in (gradwatch.ClipNorm(1.0), gradwatch.ClipValue(0.1), gradwatch.AGC()):
        for _ in range(2):
            with gradwatch.watch(model, optimizer, clip=clipper) as gw:
                train_steps(model, optimizer, regression_batches(2), gw)


def test_one_adaptive_clipper_shared_by_two_open_watchers_warns_once() -> None:
    clipper = gradwatch.ZClip(warmup_steps=2)
    models = [make_mlp(seed=0), make_mlp(seed=1)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]
    watchers = [gradwatch.watch(m, o, clip=clipper) for m, o in zip(models, optimizers)]
    train_steps(models[0], optimizers[0], regression_batches(1), watchers[0])
    with pytest.warns(
        UserWarning, match=r"this ZClip instance is also clipping another run"
    ) as got:
        for _ in range(3):
            for model, optimizer, gw in zip(models, optimizers, watchers):
                train_steps(model, optimizer, regression_batches(1), gw)
    assert len([w for w in got if "also clipping" in str(w.message)]) == 2  # once per watcher
    for gw in watchers:
        gw.close()


def test_check_fix_trials_replay_the_config_with_a_fresh_adaptive_clipper() -> None:
    """check(try_fixes=True) trains each trial with the original run's config: its
    AutoClip starts afresh in each (not refused, not carrying the first run's norms)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)  # diverges: fixes are tried
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(30)]
    clipper = gradwatch.AutoClip()
    report = gradwatch.check(
        model, data, loss_fn=nn.functional.mse_loss, optimizer=optimizer, steps=30,
        try_fixes=True, clip=clipper,
    )  # fmt: skip
    assert report.fix_trials
    assert all(trial.error is None for trial in report.fix_trials), report.fix_trials
    assert clipper.steps_seen == 30  # the last trial's run alone
