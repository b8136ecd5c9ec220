"""The core watcher on real models and optimizers: numbers, steps, hooks, lifetimes."""

from __future__ import annotations

import copy
import gc
import logging
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run

from .helpers import make_mlp, regression_batches, train_steps, watched_run


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
    ids=["sgd-momentum", "adamw"],
)
def test_watched_run_is_bit_identical_to_unwatched_twin(make_optimizer, tmp_path) -> None:
    batches = regression_batches(12)
    plain, watched = make_mlp(seed=3), make_mlp(seed=3)
    plain_opt, watched_opt = (
        make_optimizer(plain.parameters()),
        make_optimizer(watched.parameters()),
    )
    plain_losses = train_steps(plain, plain_opt, batches)
    with gradwatch.watch(watched, watched_opt, logdir=tmp_path, update_ratio_every=1) as gw:
        watched_losses = train_steps(watched, watched_opt, batches, gw)
    for a, b in zip(plain_losses, watched_losses):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    assert plain_opt.state_dict()["state"].keys() == watched_opt.state_dict()["state"].keys()


def test_logged_grad_norms_equal_norms_computed_by_hand(tmp_path) -> None:
    model = make_mlp(depth=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    layers = {name: m for name, m in model.named_modules() if list(m.parameters(recurse=False))}
    expected: dict[str, list[float]] = {name: [] for name in layers}
    expected_total: list[float] = []
    with gradwatch.watch(model, optimizer, logdir=tmp_path):
        for x, y in regression_batches(6):
            nn.functional.mse_loss(model(x), y).backward()
            for name, module in layers.items():
                grads = [p.grad.double().flatten() for p in module.parameters(recurse=False)]
                expected[name].append(torch.linalg.vector_norm(torch.cat(grads)).item())
            all_grads = [p.grad.double().flatten() for p in model.parameters()]
            expected_total.append(torch.linalg.vector_norm(torch.cat(all_grads)).item())
            optimizer.step()
            optimizer.zero_grad()
    run = read_run(tmp_path)
    assert sorted(run.layers("grad_norm")) == sorted(layers)
    for name, values in expected.items():
        logged = run.scalars[f"grad_norm/{name}"]
        assert [step for step, _ in logged] == list(range(6))
        np.testing.assert_allclose([v for _, v in logged], values, rtol=1e-5)
    np.testing.assert_allclose(
        [v for _, v in run.scalars["total/grad_norm"]], expected_total, rtol=1e-5
    )
    weights = run.scalars[f"weight_norm/{next(iter(layers))}"]
    # Weights are read every weight_norm_every (10) steps: only step 0 of these six.
    assert [step for step, _ in weights] == [0] and weights[0][1] > 0


@pytest.mark.parametrize(("every", "ratio_every"), [(1, 0), (4, 0), (4, 3), (10, 10)])
def test_weight_norms_are_read_on_their_cadence_and_carried_between(
    tmp_path, every: int, ratio_every: int
) -> None:
    """‖w‖ is measured every ``weight_norm_every`` steps and on every update-ratio step;
    the history carries the latest measurement on the others, and TensorBoard gets only
    measured values, each equal to the norm computed by hand before that step's update."""
    model = make_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first = next(name for name, m in model.named_modules() if isinstance(m, nn.Linear))
    layer = dict(model.named_modules())[first]
    by_hand: list[float] = []
    with gradwatch.watch(
        model,
        optimizer,
        logdir=tmp_path,
        weight_norm_every=every,
        update_ratio_every=ratio_every,
    ) as gw:
        for x, y in regression_batches(13):
            nn.functional.mse_loss(model(x), y).backward()
            weights = torch.cat([p.detach().double().flatten() for p in layer.parameters()])
            by_hand.append(torch.linalg.vector_norm(weights).item())
            optimizer.step()
            optimizer.zero_grad()
        records = list(gw.history)
    expected_steps = [
        s for s in range(13) if s % every == 0 or (ratio_every and s % ratio_every == 0)
    ]
    assert [r.step for r in records if r.weight_norm_measured] == expected_steps
    column = gw.index.names.index(first)
    latest = None
    for record in records:
        if record.weight_norm_measured:
            latest = by_hand[record.step]
        assert record.weight_norm[column] == pytest.approx(latest, rel=1e-5)
    logged = read_run(tmp_path).scalars[f"weight_norm/{first}"]
    assert [step for step, _ in logged] == expected_steps
    np.testing.assert_allclose(
        [v for _, v in logged], [by_hand[s] for s in expected_steps], rtol=1e-5
    )


@pytest.mark.parametrize("bad_step", [0, 3, 7])
def test_nan_in_input_at_step_k_raises_nonfinite_alert_at_k(bad_step: int) -> None:
    gw, _ = watched_run(make_mlp(), regression_batches(10), nan_at=bad_step)
    nonfinite = [a for a in gw.alerts if a.kind == "nonfinite"]
    assert nonfinite, gw.alerts
    assert nonfinite[0].step == bad_step
    assert nonfinite[0].severity == "error"
    assert nonfinite[0].layer == "0"  # the input-side layer is the first affected in depth order
    assert nonfinite[0].remedy


@pytest.mark.parametrize("weight_norm_every", [1, 10])
def test_once_weights_are_nan_only_the_nonfinite_alert_speaks(weight_norm_every: int) -> None:
    """After a NaN reaches the weights every statistic is garbage: no dead-unit, vanishing
    or not-learning noise may bury the one alert that names the cause, whether or not
    the step read the weights themselves."""
    bad_step = 2
    gw, _ = watched_run(
        make_mlp(depth=4),
        regression_batches(30),
        nan_at=bad_step,
        activation_every=1,
        not_learning_steps=5,
        weight_norm_every=weight_norm_every,
    )
    broken_from = min(r.step for r in gw.history if not r.weight_finite.all())
    # The NaN gradient's update poisoned the weights; read at once, or at the next reading.
    assert broken_from == (bad_step + 1 if weight_norm_every == 1 else weight_norm_every)
    after = [a for a in gw.alerts if a.step >= bad_step]
    assert all(a.kind == "nonfinite" for a in after), [(a.kind, a.step) for a in after]
    assert [a.kind for a in gw.alerts if a.step == bad_step] == ["nonfinite"]


@pytest.mark.parametrize("corrupt_at", [1, 4, 9])
def test_a_nonfinite_weight_between_weight_readings_is_caught_at_the_next_step(
    corrupt_at: int,
) -> None:
    """Weights are read every 10th step, but a NaN weight poisons the next forward's loss
    and every gradient behind it, so ``nonfinite`` names it at the next step anyway."""
    model = make_mlp(depth=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, optimizer, activation_every=0) as gw:
        for step, (x, y) in enumerate(regression_batches(12)):
            if step == corrupt_at:  # after step corrupt_at - 1's update, before this forward
                with torch.no_grad():
                    model[2].weight[0, 0] = float("nan")
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    nonfinite = [a for a in gw.alerts if a.kind == "nonfinite"]
    assert nonfinite and nonfinite[0].step == corrupt_at
    assert not any(r.weight_norm_measured for r in gw.history if 0 < r.step < 10)
    assert [a.kind for a in gw.alerts if a.step >= corrupt_at] == ["nonfinite"] * len(
        [a for a in gw.alerts if a.step >= corrupt_at]
    )


def test_alert_is_on_disk_as_soon_as_it_is_raised(tmp_path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gw = gradwatch.watch(model, optimizer, logdir=tmp_path)
    x, y = regression_batches(1)[0]
    x[0, 0] = float("inf")
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    # Not closed yet: the alert must already be readable from the event file.
    run = read_run(tmp_path)
    assert run.alerts and run.alerts[0][0] == 0 and "nonfinite" in run.alerts[0][1]
    assert run.has_layout
    gw.close()


def test_alerts_go_to_python_logging(caplog) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.WARNING, logger="gradwatch"), gradwatch.watch(model, optimizer):
        x, y = regression_batches(1)[0]
        x[0, 0] = float("nan")
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    records = [r for r in caplog.records if r.name == "gradwatch"]
    assert records and records[0].levelno == logging.ERROR and "nonfinite" in records[0].message


def test_gradient_accumulation_counts_optimizer_steps(tmp_path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = regression_batches(12)
    with gradwatch.watch(model, optimizer, logdir=tmp_path) as gw:
        for i, (x, y) in enumerate(batches):
            (nn.functional.mse_loss(model(x), y) / 4).backward()
            if i % 4 == 3:
                expected = torch.linalg.vector_norm(
                    torch.cat([p.grad.flatten() for p in model.parameters()])
                ).item()
                optimizer.step()
                assert gw.history.latest.total_grad_norm == pytest.approx(expected, rel=1e-5)
                optimizer.zero_grad()
    assert gw.step_count == 3
    assert [r.step for r in gw.history] == [0, 1, 2]


def test_frozen_and_unused_layers_are_reported_as_having_no_gradient(tmp_path) -> None:
    model = make_mlp(depth=3)
    for p in model[0].parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with gradwatch.watch(model, optimizer, logdir=tmp_path) as gw:
        train_steps(model, optimizer, regression_batches(3), gw)
    record = gw.history.latest
    assert not record.has_grad[0] and np.isnan(record.grad_norm[0])
    assert record.has_grad[1:].all() and np.isfinite(record.grad_norm[1:]).all()
    run = read_run(tmp_path)
    assert "grad_norm/0" not in run.scalars  # no fake zero-gradient line
    assert "weight_norm/0" in run.scalars
    assert not gw.alerts


def test_tied_parameters_are_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(tokens))

    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, optimizer) as gw:
        tokens = torch.randint(0, 10, (4, 5))
        nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        optimizer.step()
    assert gw.index.names == ("embed",)  # the shared weight belongs to its first owner
    assert gw.history.latest.total_grad_norm == pytest.approx(expected, rel=1e-6)


def test_bf16_parameters_are_measured_in_float32() -> None:
    model = make_mlp().to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer) as gw:
        x, y = regression_batches(1)[0]
        nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
        expected = torch.linalg.vector_norm(
            torch.cat([p.grad.float().flatten() for p in model[0].parameters()])
        ).item()
        optimizer.step()
    assert gw.history.latest.grad_norm[0] == pytest.approx(expected, rel=1e-5)


def test_update_ratio_is_step_size_over_weight_norm() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, optimizer, update_ratio_every=2) as gw:
        for x, y in regression_batches(4):
            nn.functional.mse_loss(model(x), y).backward()
            before = [p.detach().clone() for p in model[0].parameters()]
            optimizer.step()
            after = list(model[0].parameters())
            delta = torch.cat([(a - b).flatten() for a, b in zip(after, before)]).norm()
            weight = torch.cat([b.flatten() for b in before]).norm()
            record = gw.history.latest
            if record.step % 2 == 0:
                assert record.update_ratio[0] == pytest.approx((delta / weight).item(), rel=1e-4)
            else:
                assert record.update_ratio is None
            optimizer.zero_grad()


def test_manual_step_without_optimizer() -> None:
    model = make_mlp()
    with gradwatch.watch(model, update_ratio_every=1) as gw:
        for x, y in regression_batches(3):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            gw.record_loss(loss)
            gw.step()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
    assert [r.step for r in gw.history] == [0, 1, 2]
    assert all(r.loss is not None and r.update_ratio is not None for r in gw.history)
    assert (gw.history.latest.update_ratio > 0).all()


def test_manual_step_with_optimizer_is_an_error() -> None:
    model = make_mlp()
    with (
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1)) as gw,
        pytest.raises(RuntimeError, match=r"optimizer\.step"),
    ):
        gw.step()


@pytest.mark.parametrize(
    ("loss", "error"),
    [(torch.ones(3), ValueError), ("0.5", TypeError), (True, TypeError)],
)
def test_record_loss_refuses_non_scalars(loss, error) -> None:
    with gradwatch.watch(make_mlp()) as gw, pytest.raises(error, match="record_loss"):
        gw.record_loss(loss)


def test_close_removes_every_hook_and_is_idempotent() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = copy.deepcopy(model.state_dict())
    gw = gradwatch.watch(model, optimizer)
    assert optimizer._optimizer_step_pre_hooks
    gw.close()
    gw.close()
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    assert gw.closed
    with pytest.raises(RuntimeError, match="after close"):
        gw.step()


def test_watcher_does_not_keep_the_model_alive() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gw = gradwatch.watch(model, optimizer)
    model_ref = weakref.ref(model)
    del model
    gc.collect()
    assert model_ref() is None
    gw.close()
    watcher_ref = weakref.ref(gw)
    del gw
    gc.collect()
    assert watcher_ref() is None  # the optimizer no longer holds it either
    assert optimizer is not None


def test_exception_inside_with_block_still_flushes(tmp_path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt), gradwatch.watch(model, optimizer, logdir=tmp_path):
        train_steps(model, optimizer, regression_batches(3))
        raise KeyboardInterrupt
    run = read_run(tmp_path)
    assert [s for s, _ in run.scalars["total/grad_norm"]] == [0, 1, 2]
