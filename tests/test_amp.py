"""Mixed precision: gradwatch composed with ``torch.amp.GradScaler``, on the CPU.

``torch.amp.GradScaler("cpu")`` and CPU autocast (float16 and bfloat16) are real in the
torch these tests pin, so the scaler's unscale/inf-check/skip machinery runs for real.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run

from .helpers import make_mlp, regression_batches, sync_is_an_error

OPTIMIZERS = [
    pytest.param(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), id="sgd-momentum"),
    # fused=True sets _step_supports_amp_scaling: the scaler hands scaling to the kernel.
    pytest.param(lambda p: torch.optim.Adam(p, lr=1e-2, fused=True), id="adam-fused"),
]


def _amp_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype=torch.float16):
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    return nn.functional.mse_loss(out.float(), y)


def _recipe(model, optimizer, scaler, batches, *, clip=None, gw=None, user_unscales=False):
    """The PyTorch AMP recipe; with ``clip`` it unscales and clips by hand before stepping."""
    losses = []
    for x, y in batches:
        loss = _amp_loss(model, x, y)
        scaler.scale(loss).backward()
        if gw is not None:
            gw.record_loss(loss)
        if clip is not None or user_unscales:
            scaler.unscale_(optimizer)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        losses.append(loss.detach().clone())
    return losses


def _assert_same_models(a: nn.Module, b: nn.Module, exact: bool) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        if exact:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_watched_amp_run_without_clipping_is_bit_identical_to_the_recipe(make_optimizer) -> None:
    batches = regression_batches(10)
    plain, watched = make_mlp(seed=1), make_mlp(seed=1)
    plain_opt = make_optimizer(plain.parameters())
    watched_opt = make_optimizer(watched.parameters())
    plain_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    watched_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plain_losses = _recipe(plain, plain_opt, plain_scaler, batches)
    with gradwatch.watch(watched, watched_opt, scaler=watched_scaler) as gw:
        watched_losses = _recipe(watched, watched_opt, watched_scaler, batches, gw=gw)
    for a, b in zip(plain_losses, watched_losses):
        assert torch.equal(a, b)
    _assert_same_models(plain, watched, exact=True)
    assert plain_scaler.get_scale() == watched_scaler.get_scale()
    assert gw.step_count == 10


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
@pytest.mark.parametrize(
    "user_unscales", [False, True], ids=["gradwatch-unscales", "user-unscales"]
)
def test_clipping_under_a_scaler_equals_the_amp_clipping_recipe(
    make_optimizer, user_unscales: bool
) -> None:
    batches = [(x, 20 * y) for x, y in regression_batches(10)]
    plain, watched = make_mlp(seed=2), make_mlp(seed=2)
    plain_opt = make_optimizer(plain.parameters())
    watched_opt = make_optimizer(watched.parameters())
    plain_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    watched_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    _recipe(plain, plain_opt, plain_scaler, batches, clip=1.0)
    with gradwatch.watch(watched, watched_opt, scaler=watched_scaler, clip=1.0) as gw:
        # When the user already called unscale_, gradwatch must not unscale again (that
        # would raise in GradScaler.unscale_, or silently divide twice).
        _recipe(watched, watched_opt, watched_scaler, batches, gw=gw, user_unscales=user_unscales)
    _assert_same_models(plain, watched, exact=False)
    assert gw.clipped_steps > 5
    assert all(r.clip_coef is not None for r in gw.history)


def test_logged_grad_norm_under_a_scaler_is_the_unscaled_norm(tmp_path) -> None:
    batches = regression_batches(6)
    scaled, twin = make_mlp(seed=3), make_mlp(seed=3)
    scaled_opt = torch.optim.SGD(scaled.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with gradwatch.watch(scaled, scaled_opt, logdir=tmp_path / "amp", scaler=scaler):
        _recipe(scaled, scaled_opt, scaler, batches)
    with gradwatch.watch(twin, twin_opt, logdir=tmp_path / "plain"):
        for x, y in batches:  # the same autocast, no loss scaling at all
            _amp_loss(twin, x, y).backward()
            twin_opt.step()
            twin_opt.zero_grad()
    amp_norms = [v for _, v in read_run(tmp_path / "amp").scalars["total/grad_norm"]]
    plain_norms = [v for _, v in read_run(tmp_path / "plain").scalars["total/grad_norm"]]
    assert len(amp_norms) == 6 and scaler.get_scale() == 2.0**12  # no step was skipped
    np.testing.assert_allclose(amp_norms, plain_norms, rtol=1e-3)
    layer_amp = read_run(tmp_path / "amp").scalars["grad_norm/0"]
    layer_plain = read_run(tmp_path / "plain").scalars["grad_norm/0"]
    np.testing.assert_allclose([v for _, v in layer_amp], [v for _, v in layer_plain], rtol=1e-3)


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
@pytest.mark.parametrize("policy", ["warn", "raise", "skip"])
def test_a_step_the_scaler_skips_is_an_info_alert_and_counts_as_a_step(
    make_optimizer, policy: str, tmp_path
) -> None:
    # A huge initial scale overflows float16 at once: the scaler skips steps and backs off.
    batches = regression_batches(24)
    model = make_mlp(seed=4)
    optimizer = make_optimizer(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**28, growth_interval=1000)
    expected_skips: list[int] = []
    with gradwatch.watch(
        model, optimizer, scaler=scaler, on_nonfinite=policy, logdir=tmp_path
    ) as gw:
        for step, (x, y) in enumerate(batches):
            loss = _amp_loss(model, x, y)
            scaler.scale(loss).backward()
            gw.record_loss(loss)
            before = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale:  # the scaler skipped this step
                expected_skips.append(step)
                for key, value in before[0].items():
                    assert torch.equal(value, model.state_dict()[key])
                # (A fused optimizer creates its zero state even on a skipped step.)
                after = optimizer.state_dict()["state"]
                for index, entry in before[1]["state"].items():
                    for key, value in entry.items():
                        assert torch.equal(value, after[index][key])
            optimizer.zero_grad()
    assert 0 < len(expected_skips) < 20
    assert gw.step_count == 24 and [r.step for r in gw.history] == list(range(24))
    assert gw.amp_skipped_steps == len(expected_skips)
    assert [r.step for r in gw.history if r.amp_skipped] == expected_skips
    assert not any(r.skipped for r in gw.history)  # the scaler's skips are not gradwatch's
    kinds = {(a.kind, a.severity) for a in gw.alerts}
    assert kinds == {("amp_skip", "info")}  # no nonfinite error, no raise
    assert gw.alerts[0].step == 0
    assert any("amp_skip" in text for _, text in read_run(tmp_path).alerts)


def test_a_scaler_that_never_stops_skipping_escalates_to_a_warning(caplog) -> None:
    model = make_mlp(seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    with (
        caplog.at_level(logging.CRITICAL, logger="gradwatch"),
        gradwatch.watch(model, optimizer, scaler=scaler) as gw,
    ):
        for x, y in regression_batches(22):
            x = x.clone()
            x[0, 0] = float("inf")  # every step overflows, whatever the scale
            scaler.scale(_amp_loss(model, x, y)).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    amp = [(a.severity, a.step) for a in gw.alerts if a.kind == "amp_skip"]
    assert amp == [("info", 0), ("warning", 19)]
    assert gw.amp_skipped_steps == 22


def test_gradient_accumulation_under_a_scaler_measures_once_per_optimizer_step() -> None:
    model, twin = make_mlp(seed=6), make_mlp(seed=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    twin_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    expected = []
    batches = regression_batches(12)
    with gradwatch.watch(model, optimizer, scaler=scaler, clip=0.5) as gw:
        for i, (x, y) in enumerate(batches):
            scaler.scale(_amp_loss(model, x, y) / 3).backward()
            twin_scaler.scale(_amp_loss(twin, x, y) / 3).backward()
            if i % 3 == 2:
                twin_scaler.unscale_(twin_opt)
                expected.append(torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5).item())
                twin_scaler.step(twin_opt)
                twin_scaler.update()
                twin_opt.zero_grad()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
    assert gw.step_count == 4
    np.testing.assert_allclose([r.total_grad_norm for r in gw.history], expected, rtol=1e-5)
    _assert_same_models(model, twin, exact=False)


def test_plain_optimizer_step_under_a_scaler_is_measured_unscaled() -> None:
    model = make_mlp(seed=7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with gradwatch.watch(model, optimizer, scaler=scaler) as gw:
        x, y = regression_batches(1)[0]
        loss = _amp_loss(model, x, y)
        scaler.scale(loss).backward()
        scaled = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        optimizer.step()  # not scaler.step: gradwatch still unscales first, once
        scaler.update()  # works: unscale_ recorded its inf check
    assert gw.history.latest.total_grad_norm == pytest.approx(scaled / 2.0**10, rel=1e-5)


def test_close_restores_the_scaler() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    gw = gradwatch.watch(model, optimizer, scaler=scaler)
    assert "step" in vars(scaler)
    gw.close()
    assert "step" not in vars(scaler)
    assert scaler.step.__func__ is torch.amp.GradScaler.step


def test_one_scaler_shared_by_two_watched_optimizers() -> None:
    # The AMP docs allow one scaler for several optimizers; watchers close in any order.
    models = [make_mlp(seed=9), make_mlp(seed=10)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    first = gradwatch.watch(models[0], optimizers[0], scaler=scaler)
    second = gradwatch.watch(models[1], optimizers[1], scaler=scaler)
    for round_ in range(4):
        if round_ == 2:
            first.close()  # closed first: the second watcher keeps seeing its steps
        for x, y in regression_batches(1, seed=round_):
            loss = _amp_loss(models[0], x, y) + _amp_loss(models[1], x, y)
            scaler.scale(loss).backward()
            for optimizer in optimizers:
                scaler.step(optimizer)
            scaler.update()
            for optimizer in optimizers:
                optimizer.zero_grad()
    assert first.step_count == 2 and second.step_count == 4
    second.close()
    assert "step" not in vars(scaler)


def test_disabled_scaler_is_a_plain_run() -> None:
    model = make_mlp(seed=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with gradwatch.watch(model, optimizer, scaler=scaler) as gw:
        _recipe(model, optimizer, scaler, regression_batches(3), gw=gw)
    assert gw.step_count == 3 and gw.amp_skipped_steps == 0


def test_scaler_without_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="scaler needs the optimizer"):
        gradwatch.watch(make_mlp(), scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "clip",
    [
        gradwatch.ClipNorm(1.0),
        gradwatch.ClipValue(0.1),
        gradwatch.AGC(),
        gradwatch.AutoClip(),
        gradwatch.ZClip(warmup_steps=2),
    ],
    ids=["norm", "value", "agc", "autoclip", "zclip"],
)
def test_unscaling_and_clipping_never_sync_the_host(clip) -> None:
    from gradwatch._clip import ClipTarget
    from gradwatch._measure.amp import ScalerBridge

    model = make_mlp().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda")
    bridge = ScalerBridge(scaler, optimizer, before_step=lambda: None, after_step=lambda: None)
    for x, y in regression_batches(4):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x.cuda()).float(), y.cuda())
        scaler.scale(loss).backward()
        params = list(model.parameters())
        target = ClipTarget(params, [p.grad for p in params], ["0"] * len(params))
        with sync_is_an_error():
            bridge.unscale(optimizer)
            found_inf = bridge.found_inf(optimizer, torch.device("cuda"))
            total = torch.nn.utils.get_total_norm(target.grads)
            coef = clip.clip_(target, total)
        assert found_inf is not None and coef.device.type == "cuda"
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
