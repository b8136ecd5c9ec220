"""Sampled activation statistics: the numbers, when hooks exist, what counts, lifetimes."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run

from .helpers import make_mlp, regression_batches, train_steps


def _bounded_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid()
    )


def _hooked_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda m, a, out, name=name: outputs.__setitem__(name, out.detach().clone())
        )
        for name, module in model.named_modules()
        if name
    ]
    model(x)
    for handle in handles:
        handle.remove()
    return outputs


def test_statistics_in_tensorboard_equal_statistics_computed_by_hand(tmp_path) -> None:
    model = _bounded_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: compare at will
    batches = regression_batches(3, batch=16)
    with gradwatch.watch(model, optimizer, logdir=tmp_path, activation_every=2):
        train_steps(model, optimizer, batches)
    expected = _hooked_outputs(model, batches[2][0])
    run = read_run(tmp_path)
    for name, out in expected.items():
        logged = {step for step, _ in run.scalars[f"act_mean/{name}"]}
        assert logged == {0, 2}  # sampled steps only
        value = dict(run.scalars[f"act_mean/{name}"])[2]
        assert value == pytest.approx(out.mean().item(), abs=1e-5)
        std = dict(run.scalars[f"act_std/{name}"])[2]
        assert std == pytest.approx(out.std(unbiased=False).item(), rel=1e-4)
        batch_std = dict(run.scalars[f"act_batch_std/{name}"])[2]
        assert batch_std == pytest.approx(
            out.var(dim=0, unbiased=False).mean().sqrt().item(), rel=1e-4
        )
        assert dict(run.scalars[f"act_nonfinite/{name}"])[2] == 0.0
    tanh = expected["1"]
    saturated = ((tanh.abs() >= 0.98).float().mean()).item()
    assert dict(run.scalars["act_saturated/1"])[2] == pytest.approx(saturated, abs=1e-6)
    relu = expected["3"]
    dead = 1.0 - (relu > 0).any(dim=0).float().mean().item()
    assert dict(run.scalars["act_dead/3"])[2] == pytest.approx(dead, abs=1e-6)
    # Statistics that do not apply are not logged: no saturation for ReLU or Linear,
    # no dead units for tanh.
    assert "act_saturated/3" not in run.scalars and "act_saturated/0" not in run.scalars
    assert "act_dead/1" not in run.scalars
    assert "act_saturated/5" in run.scalars


def test_hooks_exist_only_on_sampled_steps() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    armed = []
    with gradwatch.watch(model, optimizer, activation_every=3) as gw:
        for x, y in regression_batches(7):
            armed.append(bool(model[1]._forward_hooks))
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert armed == [True, False, False, True, False, False, True]
    assert [r.step for r in gw.history if r.activations] == [0, 3, 6]
    assert all(not m._forward_hooks for m in model.modules())


def test_validation_forwards_are_not_counted_unless_asked() -> None:
    batches = regression_batches(2)
    wild = torch.randn(32, 8) * 100.0

    def run(activation_eval: bool, validate: str | None) -> np.ndarray:
        model = make_mlp(seed=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

        def validation() -> None:
            if validate == "no_grad":
                with torch.no_grad():
                    model(wild)
            elif validate == "eval":
                model.eval()
                model(wild)
                model.train()

        # Validate *before* the step is measured: between backward and optimizer.step.
        with gradwatch.watch(
            model, optimizer, activation_every=1, activation_eval=activation_eval
        ) as gw:
            train_steps(model, optimizer, batches, before_step=lambda _: validation())
        return gw.history.latest.activations["std"]

    clean = run(False, None)
    np.testing.assert_array_equal(run(False, "no_grad"), clean)
    np.testing.assert_array_equal(run(False, "eval"), clean)
    assert (run(True, "no_grad") > clean * 5).all()  # averaged with the wild batch


@pytest.mark.parametrize("locate", [False, True])
def test_watched_run_is_bit_identical_with_activation_hooks(locate: bool) -> None:
    batches = regression_batches(6)
    plain, watched = _bounded_net(seed=2), _bounded_net(seed=2)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    watched_opt = torch.optim.AdamW(watched.parameters(), lr=1e-2)
    plain_losses = train_steps(plain, plain_opt, batches)
    with gradwatch.watch(watched, watched_opt, activation_every=1, locate_nonfinite=locate) as gw:
        watched_losses = train_steps(watched, watched_opt, batches, gw)
    for a, b in zip(plain_losses, watched_losses):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


def test_watcher_with_armed_hooks_does_not_keep_the_model_alive() -> None:
    model = _bounded_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gw = gradwatch.watch(model, optimizer, activation_every=1, locate_nonfinite=True)
    x, y = regression_batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()  # the next step's hooks are armed now
    model_ref = weakref.ref(model)
    del model, x, y
    gc.collect()
    assert model_ref() is None
    gw.close()


def test_close_removes_armed_and_localisation_hooks() -> None:
    model = _bounded_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gw = gradwatch.watch(model, optimizer, activation_every=1, locate_nonfinite=True)
    assert model[1]._forward_hooks and model[1]._forward_pre_hooks
    gw.close()
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_activation_every_zero_switches_statistics_off(tmp_path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, logdir=tmp_path, activation_every=0) as gw:
        assert not any(m._forward_hooks for m in model.modules())
        train_steps(model, optimizer, regression_batches(2))
    assert all(r.activations is None for r in gw.history)
    assert not [tag for tag in read_run(tmp_path).scalars if tag.startswith("act_")]


def test_manual_steps_without_optimizer_are_sampled() -> None:
    model = make_mlp()
    with gradwatch.watch(model, activation_every=2, update_ratio_every=1) as gw:
        for x, y in regression_batches(5):
            nn.functional.mse_loss(model(x), y).backward()
            gw.step()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
    assert [r.step for r in gw.history if r.activations] == [0, 2, 4]
    assert gw.history[0].activation_layers == ("0", "1", "2", "3", "4", "5", "6")


def test_nonfinite_outputs_are_counted() -> None:
    class Log(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Log(), nn.Linear(16, 1))
    probe_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    probe_model.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradwatch.watch(model, optimizer, activation_every=1) as gw:
        x, y = regression_batches(1)[0]
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    record = gw.history.latest
    # Log is not an activation module, so it is not hooked; the Linear after it is.
    assert record.activation_layers == ("0", "2")
    expected = 1.0 - torch.isfinite(model[2](torch.log(model[0](x)))).float().mean().item()
    assert expected > 0
    assert record.activations["nonfinite"][1] == pytest.approx(expected)
    assert np.isfinite(record.activations["mean"][1])  # over the finite values only


@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan-and-inf"])
@pytest.mark.parametrize("kind", ["tanh", "relu"])
def test_output_stats_equal_the_definitions_over_finite_values(poison: bool, kind: str) -> None:
    from gradwatch._measure.activations import (
        MIN_DEAD_SAMPLES,
        ROLE_ACTIVATION,
        ROLE_RECTIFIER,
        SATURATION_EPS,
        STATS,
        _Target,
        output_stats,
    )

    torch.manual_seed(1)
    raw = torch.randn(16, 40) * 2.0 + 0.3
    y = torch.tanh(raw) if kind == "tanh" else torch.relu(raw - 1.5)
    if poison:
        y[0, 0], y[3, 5], y[7, 9] = float("nan"), float("inf"), float("-inf")
    if kind == "tanh":
        target = _Target("t", ROLE_ACTIVATION, (-1.0, 1.0))
    else:
        target = _Target("r", ROLE_RECTIFIER)
    stats, layout = output_stats(y, target)
    got = dict(zip((STATS[i] for i in layout), stats.tolist()))
    finite = torch.isfinite(y)
    values = y[finite].double()
    assert got["mean"] == pytest.approx(values.mean().item(), rel=1e-5, abs=1e-6)
    assert got["std"] == pytest.approx(values.std(unbiased=False).item(), rel=1e-4)
    assert got["nonfinite"] == pytest.approx(1.0 - finite.double().mean().item())
    safe = torch.where(finite, y, 0.0)
    assert got["batch_std"] == pytest.approx(safe.var(0, unbiased=False).mean().sqrt().item())
    if kind == "tanh":  # non-finite values count as not saturated
        margin = 2.0 * SATURATION_EPS
        saturated = ((safe <= -1.0 + margin) | (safe >= 1.0 - margin)).double().mean().item()
        assert got["saturated"] == pytest.approx(saturated) and saturated > 0
    else:
        assert MIN_DEAD_SAMPLES <= 16
        dead = 1.0 - (safe > 0).any(dim=0).double().mean().item()
        assert got["dead"] == pytest.approx(dead)


@pytest.mark.parametrize("poison", [False, True], ids=["finite", "one-nan"])
@pytest.mark.parametrize("samples", [1, 32])
def test_spread_of_a_bias_dominated_output_survives_float32(poison: bool, samples: int) -> None:
    """A deep badly initialised layer outputs a large constant plus a tiny signal:
    E[x²] - E[x]² would cancel to noise in float32; both the all-finite path and the
    path that zeroes non-finite values must keep the spread."""
    from gradwatch._measure.activations import ROLE_MIXING, STATS, _Target, output_stats

    torch.manual_seed(2)
    bias = torch.full((64,), 1000.0) + torch.linspace(0.0, 1.0, 64)  # units differ a bit
    y = bias + 0.01 * torch.randn(samples, 64)
    reference = y.double()
    if poison:
        y[0, 3] = float("nan")
    target = _Target("l", ROLE_MIXING)
    stats, layout = output_stats(y, target)
    got = dict(zip((STATS[i] for i in layout), stats.tolist()))
    finite = torch.isfinite(y)
    values = reference[finite]
    assert got["mean"] == pytest.approx(values.mean().item(), rel=1e-6)
    assert got["std"] == pytest.approx(values.std(unbiased=False).item(), rel=1e-3)
    if samples > 1 and not poison:
        spread = reference.var(0, unbiased=False).mean().sqrt().item()
        assert got["batch_std"] == pytest.approx(spread, rel=1e-3)
        assert 0.005 < got["batch_std"] < 0.02


@pytest.mark.parametrize("samples", [1, 16])
@pytest.mark.parametrize("kind", ["linear", "tanh", "relu"])
def test_the_accelerator_path_agrees_with_the_cpu_shortcut_on_finite_outputs(
    monkeypatch: pytest.MonkeyPatch, kind: str, samples: int
) -> None:
    """On the CPU an all-finite output skips the passes that set non-finite values
    aside; an accelerator always runs them. Both must give the same statistics."""
    from gradwatch._measure import activations as _activations
    from gradwatch._measure.activations import ROLE_MIXING, ROLE_RECTIFIER, _Target, output_stats

    torch.manual_seed(3)
    raw = torch.randn(samples, 8, 5) * 1.5 + 0.2
    targets = {
        "linear": (_Target("l", ROLE_MIXING), raw),
        "tanh": (_Target("t", ROLE_MIXING, (-1.0, 1.0)), torch.tanh(raw)),
        "relu": (_Target("r", ROLE_RECTIFIER), torch.relu(raw - 1.0)),
    }
    target, y = targets[kind]
    shortcut, _ = output_stats(y, target)
    monkeypatch.setattr(_activations, "_reading_back_is_free", lambda device: False)
    careful, _ = output_stats(y, target)
    assert shortcut.shape == careful.shape
    torch.testing.assert_close(shortcut, careful, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("planted", [0, 1, 3])
def test_nonfinite_fraction_is_exact_past_float32_integer_range(
    monkeypatch: pytest.MonkeyPatch, planted: int
) -> None:
    """An output of more than 2**24 values (LLM logits): float32 cannot hold its size
    exactly, so the fraction must come from counting the non-finite values themselves,
    never from the size minus a count of the finite ones. Checked on the accelerator
    path (always taken there) and on the CPU path."""
    from gradwatch._measure import activations as _activations
    from gradwatch._measure.activations import ROLE_MIXING, STATS, _Target, output_stats

    # The whole output is measured here (a huge output is otherwise measured on a part of
    # at most MEASURED_VALUES values): the counting itself is what is checked.
    monkeypatch.setattr(_activations, "MEASURED_VALUES", 2**40)
    y = torch.rand(5, 2**23 // 5 * 2 + 3)  # 2**24 + a few values
    for index in range(planted):
        y[index, 7 * index] = float("nan")
    target = _Target("logits", ROLE_MIXING)
    for careful in (False, True):
        if careful:
            monkeypatch.setattr(_activations, "_reading_back_is_free", lambda device: False)
        stats, layout = output_stats(y, target)
        got = dict(zip((STATS[i] for i in layout), stats.tolist()))
        assert got["nonfinite"] == pytest.approx(planted / y.numel(), rel=1e-6, abs=0.0)


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"activation_every": -1}, ValueError, ["activation_every", "0 to switch"]),
        ({"activation_every": 2.0}, TypeError, ["activation_every", "int"]),
        ({"activation_eval": 1}, TypeError, ["activation_eval", "True or False"]),
        ({"locate_nonfinite": "yes"}, TypeError, ["locate_nonfinite", "True or False"]),
        ({"saturation_threshold": 0}, ValueError, ["saturation_threshold", "fraction"]),
        ({"saturation_threshold": 1.5}, ValueError, ["saturation_threshold", "<= 1"]),
        ({"dead_units_threshold": "high"}, TypeError, ["dead_units_threshold"]),
        ({"dead_units_threshold": float("nan")}, ValueError, ["dead_units_threshold"]),
        ({"poor_init_ratio": 1.0}, ValueError, ["poor_init_ratio", "> 1"]),
        ({"poor_init_gain": 1.5}, ValueError, ["poor_init_gain", "5/3"]),
        ({"poor_init_steps": 0}, ValueError, ["poor_init_steps", ">= 1"]),
    ],
)
def test_bad_activation_options_are_refused(options: dict, error: type, names: list[str]) -> None:
    model = make_mlp()
    with pytest.raises(error) as info:
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)
    for name in names:
        assert name in str(info.value)


def test_no_output_sized_buffer_outlives_a_sampled_step() -> None:
    model = make_mlp(depth=3, width=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, activation_every=1) as gw:
        for x, y in regression_batches(2):
            nn.functional.mse_loss(model(x), y).backward()
            probe = gw._probe
            assert probe is not None and probe._pending._slabs  # in use during the step
            optimizer.step()
            optimizer.zero_grad()
            assert probe._pending._slabs == {}  # dropped when the step was collected
    assert gw.history.latest.activations is not None


def test_nan_outputs_of_a_sigmoid_are_not_saturated() -> None:
    """0 is a bound of the sigmoid: a NaN must not pass for a saturated unit."""
    from gradwatch._measure.activations import (
        ROLE_ACTIVATION,
        STATS,
        _Target,
        output_stats,
    )

    y = torch.full((8, 4), 0.5)
    y[0] = float("nan")
    target = _Target("s", ROLE_ACTIVATION, (0.0, 1.0))
    stats, layout = output_stats(y, target)
    got = dict(zip((STATS[i] for i in layout), stats.tolist()))
    assert got["saturated"] == 0.0
    assert got["nonfinite"] == pytest.approx(1 / 8)
    assert got["mean"] == pytest.approx(0.5) and got["std"] == pytest.approx(0.0, abs=1e-6)


def test_inference_forward_then_training_forward_in_one_sampled_step() -> None:
    """A work buffer made under inference_mode cannot be written in a training forward:
    the two are kept apart, and the training forward's statistics are recorded."""
    model = make_mlp(depth=2, width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, activation_every=1, activation_eval=True) as gw:
        x, y = regression_batches(1)[0]
        with torch.inference_mode():
            model(x)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    record = gw.history.latest
    assert record.activation_layers and np.isfinite(record.activations["std"]).all()
    assert record.activation_layers == ("0", "1", "2", "3", "4")


@pytest.mark.slow
def test_importing_gradwatch_does_not_import_dynamo() -> None:
    import subprocess
    import sys

    code = "import sys, gradwatch; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_large_sequence_output_is_measured_on_every_kth_position() -> None:
    """Above MEASURED_VALUES values, statistics come from every k-th position (all samples,
    all features): within sampling error of the full output's, and 'dead' still means off
    for every sample of the batch."""
    from gradwatch._measure.activations import MEASURED_VALUES, measured_part

    generator = torch.Generator().manual_seed(0)
    output = torch.randn(8, 512, 256, generator=generator).relu_()
    output[:, :, :64] = 0.0  # a quarter of the features dead at every position
    part = measured_part(output)
    assert part.numel() <= MEASURED_VALUES < output.numel()
    assert part.shape[0] == 8 and part.shape[2] == 256 and part.shape[1] < 512
    assert torch.equal(part[:, 1], output[:, 512 // part.shape[1]])  # whole kept positions
    small = torch.randn(8, 16, 32)
    assert measured_part(small) is small
    wide = torch.randn(256, 1024, generator=generator)  # (samples, features): every k-th unit
    columns = measured_part(wide)
    assert columns.numel() <= MEASURED_VALUES < wide.numel() and columns.shape[0] == 256
    assert torch.equal(columns[:, 1], wide[:, 1024 // columns.shape[1]])
    from gradwatch._measure.activations import ROLE_RECTIFIER, _Target, output_stats

    target = _Target(name="relu", role=ROLE_RECTIFIER, bounds=None)
    sampled, layout = output_stats(output, target)
    full_mean = output.mean()
    assert layout[-2] == 4  # the dead-unit statistic is measured
    assert sampled[0].item() == pytest.approx(full_mean.item(), rel=0.02)
    assert sampled[layout.index(4)].item() == pytest.approx(0.25, abs=0.01)


def _pending_bytes(pending) -> int:
    return sum(group.slab.nbytes for group in pending._slabs.values())


def test_a_module_called_many_times_averages_its_calls_within_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An RNN cell called hundreds of times in one step: its copies are computed in
    batches whenever the budget is reached (never more than PENDING_BYTES held), and its
    statistics are the average of its calls' statistics."""
    from gradwatch._measure import activations as _activations
    from gradwatch._measure.activations import ROLE_MIXING, PendingStats, _Target, output_stats

    monkeypatch.setattr(_activations, "PENDING_BYTES", 16 * 4 * 32 * 5)  # 5 rows of (16, 32)
    generator = torch.Generator().manual_seed(5)
    calls = [torch.randn(16, 32, generator=generator) * (1 + i % 7) + i for i in range(300)]
    cell, other = _Target("cell", ROLE_MIXING), _Target("other", ROLE_MIXING)
    pending = PendingStats()
    held = []
    for index, output in enumerate(calls):
        pending.add(cell, output)
        if index == 3:
            pending.add(other, torch.randn(16, 32, generator=generator))
        held.append(_pending_bytes(pending))
    assert max(held) <= _activations.PENDING_BYTES
    assert len(pending._done) >= 300 // 5  # computed in batches along the way
    sample = pending.take()
    assert sample is not None and sample.layers == ("cell", "other")
    expected = torch.stack([output_stats(output, cell)[0] for output in calls]).mean(dim=0)
    got = sample.values[: len(sample.layouts[0])]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_copies_wait_for_one_batch_on_an_accelerator_and_for_several_on_the_cpu() -> None:
    """One position of a large batch can hold more than MEASURED_VALUES values (1 MiB
    here): the CPU's cache-sized budget computes twelve such copies in batches along the
    way, an accelerator's (the meta device stands for one) in one batch at the end, since
    there each batch is kernel launches paid by the host."""
    from gradwatch._measure.activations import (
        PENDING_BYTES,
        PENDING_BYTES_ACCELERATOR,
        ROLE_MIXING,
        PendingStats,
        _Target,
        pending_bytes,
    )

    assert pending_bytes(torch.device("cpu")) == PENDING_BYTES == 4 * 2**20
    assert pending_bytes(torch.device("cuda")) == PENDING_BYTES_ACCELERATOR == 64 * 2**20
    batches = {}
    for device in ("cpu", "meta"):
        pending = PendingStats()
        targets = [_Target(f"conv{i}", ROLE_MIXING) for i in range(12)]
        for _ in range(2):  # the second sampled step's slabs are sized by the first's
            for target in targets:  # (256, 32, 32, 32): one kept image row of 2^18 values
                pending.add(target, torch.ones(256, 32, 32, 32, device=device))
            batches[device] = len(pending._done) + len(pending._slabs)
            sample = pending.take()
            assert sample is not None and len(sample.layers) == 12
    assert batches == {"cpu": 3, "meta": 1}


def test_a_nan_in_one_output_of_a_batch_leaves_the_others_statistics_exact() -> None:
    from gradwatch._measure.activations import (
        ROLE_ACTIVATION,
        ROLE_RECTIFIER,
        STATS,
        PendingStats,
        _Target,
        output_stats,
    )

    generator = torch.Generator().manual_seed(6)
    targets = [
        _Target("tanh", ROLE_ACTIVATION, (-1.0, 1.0)),
        _Target("poisoned", ROLE_ACTIVATION, (-1.0, 1.0)),
        _Target("tanh2", ROLE_ACTIVATION, (-1.0, 1.0)),
    ]
    outputs = [torch.tanh(torch.randn(8, 64, generator=generator) * 2) for _ in targets]
    outputs[1][2, 5] = float("nan")
    pending = PendingStats()
    for target, output in zip(targets, outputs):
        pending.add(target, output)
    sample = pending.take()
    assert sample is not None
    position = 0
    for target, output, layout in zip(targets, outputs, sample.layouts):
        got = sample.values[position : position + len(layout)]
        position += len(layout)
        alone, alone_layout = output_stats(output, target)
        assert layout == alone_layout
        torch.testing.assert_close(got, alone, rtol=1e-6, atol=0.0)
        values = dict(zip((STATS[i] for i in layout), got.tolist()))
        finite = output[torch.isfinite(output)].double()
        assert values["mean"] == pytest.approx(finite.mean().item(), rel=1e-5)
        assert values["nonfinite"] == (1 / output.numel() if target.name == "poisoned" else 0)
    rectifier = _Target("relu", ROLE_RECTIFIER)
    assert output_stats(torch.full((8, 4), float("nan")), rectifier)[0][-2].item() == 1.0


def test_statistics_are_of_the_output_as_it_was_before_a_later_in_place_change() -> None:
    """The hook copies the measured part: a ReLU(inplace=True) after a Linear, or any
    in-place op later in the forward, must not change the Linear's statistics."""

    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(100.0)  # in place, after the previous module's hook ran

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(inplace=True), Scale(), nn.Linear(64, 1))
    x = torch.randn(32, 8)
    with torch.no_grad():
        before = model[0](x)
    from gradwatch._measure.activations import ActivationProbe

    probe = ActivationProbe(model)
    probe.arm()
    model(x)  # a training forward (the in-place Scale would break its backward)
    sample = probe.collect()
    assert sample is not None and sample.layers[:2] == ("0", "1")
    linear = sample.values[: len(sample.layouts[0])].tolist()
    assert linear[0] == pytest.approx(before.mean().item(), abs=1e-6)
    assert linear[1] == pytest.approx(before.std(unbiased=False).item(), rel=1e-5)
    relu = before.relu()
    start = len(sample.layouts[0])
    relu_stats = sample.values[start : start + len(sample.layouts[1])].tolist()
    assert relu_stats[0] == pytest.approx(relu.mean().item(), abs=1e-6)  # not x100


def test_pending_copies_of_many_shapes_stay_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gradwatch._measure import activations as _activations
    from gradwatch._measure.activations import ROLE_MIXING, PendingStats, _Target, output_stats

    monkeypatch.setattr(_activations, "PENDING_BYTES", 64 * 1024)
    pending = PendingStats()
    outputs = {f"m{width}": torch.randn(16, width) for width in range(40, 400, 9)}
    for name, output in outputs.items():
        pending.add(_Target(name, ROLE_MIXING), output)
        assert _pending_bytes(pending) <= _activations.PENDING_BYTES
    sample = pending.take()
    assert sample is not None and sample.layers == tuple(outputs)
    position = 0
    for (name, output), layout in zip(outputs.items(), sample.layouts):
        got = sample.values[position : position + len(layout)]
        position += len(layout)
        torch.testing.assert_close(got, output_stats(output, _Target(name, ROLE_MIXING))[0])


def test_half_precision_outputs_are_measured_in_float32() -> None:
    from gradwatch._measure.activations import ROLE_MIXING, _Target, output_stats

    output = (torch.randn(16, 48) * 3 + 1).to(torch.bfloat16)
    target = _Target("l", ROLE_MIXING)
    half, layout = output_stats(output, target)
    full, full_layout = output_stats(output.float(), target)
    assert layout == full_layout and half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.0, atol=0.0)


def test_a_forgotten_module_is_left_out_and_the_others_kept() -> None:
    from gradwatch._measure.activations import ROLE_MIXING, PendingStats, _Target, output_stats

    pending = PendingStats()
    outputs = {name: torch.randn(8, 16) for name in ("a", "b", "c")}
    for name, output in outputs.items():
        pending.add(_Target(name, ROLE_MIXING), output)
    pending.forget("b")
    sample = pending.take()
    assert sample is not None and sample.layers == ("a", "c")
    size = len(sample.layouts[0])
    for index, name in enumerate(("a", "c")):
        got = sample.values[index * size : (index + 1) * size]
        torch.testing.assert_close(got, output_stats(outputs[name], _Target(name, ROLE_MIXING))[0])


class _SharedBlock(nn.Module):
    """An MLP whose middle layer runs twice (rows averaged), and causal self-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.mid = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.mid(self.act(self.mid(self.inp(x)))))
        causal = nn.Transformer.generate_square_subsequent_mask(h.shape[1], dtype=h.dtype)
        h = h + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return self.out(h).mean(dim=1)


def test_sampled_statistics_do_not_assume_float32_is_the_default_dtype(caplog) -> None:
    """With float64 as torch's default dtype, a float32 model's sampled statistics (a
    module called twice, a causal mask) are all measured, and nothing fails quietly."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = _SharedBlock().float()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = torch.randn(4, 6, 8, dtype=torch.float32), torch.randn(4, 1, dtype=torch.float32)
        with (
            caplog.at_level("WARNING", logger="gradwatch"),
            gradwatch.watch(model, optimizer, activation_every=1) as watcher,
        ):
            for _ in range(2):
                loss = (model(x) - y).square().mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        record = watcher.history.latest
    finally:
        torch.set_default_dtype(previous)
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
    assert record is not None and record.activations is not None
    assert "mid" in (record.activation_layers or ())
    assert np.isfinite(record.activations["std"]).all()
    assert record.attention_logit_max is not None
    assert np.isfinite(record.attention_logit_max).all()


def test_a_failure_computing_the_statistics_is_logged_never_raised(monkeypatch, caplog) -> None:
    """The statistics are computed when the sampled step ends, outside the forward hooks:
    a failure there drops that step's statistics and training goes on."""
    from gradwatch._measure import activations

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(activations, "group_stats", broken)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with (
        caplog.at_level("WARNING", logger="gradwatch"),
        gradwatch.watch(model, optimizer, activation_every=1) as watcher,
    ):
        train_steps(model, optimizer, regression_batches(3), watcher)
    assert len(watcher.history) == 3
    assert all(record.activations is None for record in watcher.history)
    assert any("failed" in r.getMessage() for r in caplog.records)
