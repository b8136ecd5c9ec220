"""Step policies: skip and raise on non-finite steps, skip loss/gradient spikes, bad values."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._policies import RollingStats

from .helpers import make_mlp, regression_batches, train_steps

OPTIMIZERS = [
    pytest.param(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(lambda p: torch.optim.Adam(p, lr=1e-2), id="adam"),
    pytest.param(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), id="adamw"),
]


def _state_snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def _assert_same(a, b) -> None:
    """Bit-identical nested structures of tensors and Python values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _poisoned(step: int, bad_step: int, x: torch.Tensor) -> torch.Tensor:
    if step == bad_step:
        x = x.clone()
        x[0, 0] = float("nan")
    return x


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_skip_leaves_parameters_and_optimizer_state_bit_identical(make_optimizer, caplog) -> None:
    bad_step = 4
    batches = regression_batches(9)
    model = make_mlp(seed=2)
    optimizer = make_optimizer(model.parameters())
    with (
        caplog.at_level(logging.CRITICAL, logger="gradwatch"),
        gradwatch.watch(model, optimizer, on_nonfinite="skip", update_ratio_every=1) as gw,
    ):
        for step, (x, y) in enumerate(batches):
            loss = nn.functional.mse_loss(model(_poisoned(step, bad_step, x)), y)
            loss.backward()
            gw.record_loss(loss)
            before = _state_snapshot(model, optimizer)
            optimizer.step()
            after = _state_snapshot(model, optimizer)
            if step == bad_step:
                _assert_same(before, after)  # parameters, moments and step counters
            else:
                assert not torch.equal(before[0]["0.weight"], after[0]["0.weight"])
            optimizer.zero_grad()
    assert gw.skipped_steps == 1
    skipped = [r.step for r in gw.history if r.skipped]
    assert skipped == [bad_step]
    alerts = [a for a in gw.alerts if a.kind == "nonfinite"]
    assert [a.step for a in alerts] == [bad_step]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_skipped_run_equals_a_run_that_never_saw_the_bad_batch(make_optimizer, caplog) -> None:
    bad_step = 3
    batches = regression_batches(8)
    skipping, twin = make_mlp(seed=4), make_mlp(seed=4)
    skip_opt, twin_opt = make_optimizer(skipping.parameters()), make_optimizer(twin.parameters())
    with (
        caplog.at_level(logging.CRITICAL, logger="gradwatch"),
        gradwatch.watch(skipping, skip_opt, on_nonfinite="skip"),
    ):
        train_steps(skipping, skip_opt, batches, nan_at=bad_step)
    train_steps(twin, twin_opt, [batch for step, batch in enumerate(batches) if step != bad_step])
    _assert_same(skipping.state_dict(), twin.state_dict())
    _assert_same(skip_opt.state_dict()["state"], twin_opt.state_dict()["state"])


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
@pytest.mark.parametrize(("bad_step", "layer"), [(0, "2"), (5, "4")])
def test_raise_stops_at_the_bad_step_naming_the_first_affected_layer(
    make_optimizer, bad_step: int, layer: str, caplog
) -> None:
    model = make_mlp(depth=3, seed=1)
    optimizer = make_optimizer(model.parameters())
    steps = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        # Only this layer's gradient turns NaN (layers before it in depth stay finite).
        return grad * float("nan") if steps["n"] == bad_step else grad

    handle = model[int(layer)].weight.register_hook(poison)
    with (
        caplog.at_level(logging.CRITICAL, logger="gradwatch"),
        gradwatch.watch(model, optimizer, on_nonfinite="raise") as gw,
        pytest.raises(gradwatch.NonFiniteError) as info,
    ):
        for x, y in regression_batches(10):
            nn.functional.mse_loss(model(x), y).backward()
            before = _state_snapshot(model, optimizer)
            optimizer.step()
            optimizer.zero_grad()
            steps["n"] += 1
    handle.remove()
    error = info.value
    assert error.step == bad_step and error.layer == layer
    assert f"at step {bad_step} in {layer}" in str(error) and repr(layer) in str(error)
    _assert_same(before, _state_snapshot(model, optimizer))  # the bad update never happened
    assert gw.alerts[-1].kind == "nonfinite" and gw.alerts[-1].step == bad_step


def test_skip_spikes_is_off_by_default() -> None:
    assert gradwatch.WatchConfig().skip_spikes is None


def _spike_run(skip_spikes, spike_at: int = 40, factor: float = 30.0):
    model = make_mlp(seed=7)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = regression_batches(50, seed=3)
    x, y = batches[spike_at]
    batches[spike_at] = (x, y * factor)  # a corrupted batch: its loss and gradient norm spike
    snapshots = {}

    def before(step: int) -> None:
        snapshots[step] = _state_snapshot(model, optimizer)

    def after(step: int) -> None:
        snapshots[step] = (snapshots[step], _state_snapshot(model, optimizer))

    with gradwatch.watch(model, optimizer, skip_spikes=skip_spikes, spike_window=32) as gw:
        train_steps(model, optimizer, batches, gw, before_step=before, after_step=after)
    return gw, snapshots


def test_skip_spikes_skips_a_loss_spike_leaving_weights_and_state_untouched() -> None:
    gw, snapshots = _spike_run(6.0)
    assert [r.step for r in gw.history if r.skipped] == [40]
    _assert_same(*snapshots[40])
    spikes = [a for a in gw.alerts if a.kind in ("loss_spike", "grad_spike")]
    assert [(a.kind, a.step, a.severity) for a in spikes] == [("loss_spike", 40, "warning")]
    assert spikes[0].value > 6 and spikes[0].threshold == 6.0
    assert gw.skipped_steps == 1


def test_without_skip_spikes_the_spike_is_applied() -> None:
    gw, snapshots = _spike_run(None)
    assert not any(r.skipped for r in gw.history)
    before, after = snapshots[40]
    assert not torch.equal(before[0]["0.weight"], after[0]["0.weight"])


def test_skip_spikes_leaves_ordinary_noise_alone() -> None:
    gw, _ = _spike_run(6.0, factor=1.0)
    assert gw.skipped_steps == 0


def test_rolling_stats_zscore_is_mean_and_sample_std_of_the_window() -> None:
    stats = RollingStats(window=5)
    values = [1.0, 2.0, 4.0, 3.0, 5.0, 2.5, 7.0]
    for v in values:
        stats.add(v)
    stats.add(float("nan"))  # non-finite values never enter the window
    window = np.array(values[-5:])
    want = (10.0 - window.mean()) / window.std(ddof=1)
    assert stats.zscore(10.0, min_count=5) == pytest.approx(want)
    assert stats.zscore(10.0, min_count=6) is None


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"skip_spikes": 0}, ValueError, r"skip_spikes must be > 0"),
        ({"skip_spikes": "6"}, TypeError, r"skip_spikes must be a number"),
        ({"spike_window": 1}, ValueError, r"spike_window must be >= 4"),
        ({"on_nonfinite": "ignore"}, ValueError, r"on_nonfinite must be one of"),
        ({"scaler": "amp"}, TypeError, r"scaler must be a torch\.amp\.GradScaler.*got str"),
        ({"scaler": torch.optim.SGD}, TypeError, r"scaler must be a torch\.amp\.GradScaler"),
    ],
)
def test_watch_refuses_bad_policy_options(options, error, match) -> None:
    model = make_mlp()
    with pytest.raises(error, match=match):
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)
