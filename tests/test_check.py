"""gradwatch.check(): a few real training steps under watch, turned into a Report."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import make_mlp, regression_batches


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def test_healthy_mlp_is_ok_and_trained_in_place() -> None:
    model = make_mlp(depth=3)
    before = copy.deepcopy(model.state_dict())
    report = gradwatch.check(model, regression_batches(4), mse, steps=12)
    assert report.ok, report.summary()
    assert report.steps == 12 and report.steps_requested == 12
    assert len(report.losses) == 12
    assert report.losses[-1] < report.losses[0]
    changed = [not torch.equal(before[k], v) for k, v in model.state_dict().items()]
    assert all(changed)
    assert [layer.name for layer in report.layers] == ["0", "2", "4", "6"]
    assert all(layer.final_grad_norm > 0 for layer in report.layers)
    assert all(layer.max_grad_norm >= layer.final_grad_norm for layer in report.layers)


def test_check_matches_a_hand_written_adam_loop() -> None:
    batches = regression_batches(3)
    checked, plain = make_mlp(seed=5), make_mlp(seed=5)
    report = gradwatch.check(checked, batches, mse, steps=7)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3)
    expected = []
    for step in range(7):
        x, y = batches[step % 3]
        optimizer.zero_grad()
        loss = mse(plain(x), y)
        loss.backward()
        optimizer.step()
        expected.append(loss.item())
    assert list(report.losses) == pytest.approx(expected, rel=0, abs=0)
    for a, b in zip(checked.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def test_summary_and_to_dict() -> None:
    report = gradwatch.check(make_mlp(), regression_batches(2), mse, steps=5)
    text = report.summary()
    assert text.startswith("gradwatch check: HEALTHY after 5 step(s)")
    assert "Per-layer norms" in text and "grad/weight" in text
    for layer in report.layers:
        assert layer.name in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["steps"] == 5
    assert len(data["losses"]) == 5
    assert {layer["name"] for layer in data["layers"]} == {"0", "2", "4", "6"}
    assert set(data["layers"][0]) >= {"final_grad_norm", "max_grad_norm", "final_weight_norm"}
    assert str(report) == text


def test_nonfinite_run_is_not_ok_and_report_stays_json_safe() -> None:
    model = make_mlp()
    x = torch.randn(16, 8)
    x[0, 0] = float("nan")
    report = gradwatch.check(model, [(x, torch.zeros(16, 1))], mse, steps=3)
    assert not report.ok
    assert any(a.kind == "nonfinite" and a.severity == "error" for a in report.alerts)
    assert "UNHEALTHY" in report.summary()
    assert "Try:" in report.summary()
    json.dumps(report.to_dict(), allow_nan=False)


def test_on_nonfinite_raise_stops_early_and_reports_it() -> None:
    model = make_mlp()
    x = torch.randn(16, 8)
    x[0, 0] = float("inf")
    report = gradwatch.check(model, [(x, torch.zeros(16, 1))], mse, steps=5, on_nonfinite="raise")
    assert not report.ok
    assert report.steps == 0 and report.stopped is not None
    assert "Stopped early" in report.summary()


def test_generator_data_is_cycled_and_given_optimizer_is_used() -> None:
    batches = regression_batches(2)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    report = gradwatch.check(model, (b for b in batches), mse, optimizer=optimizer, steps=5)
    assert report.steps == 5
    # batches 0,1,0,1,0: the same batch gives the same loss only once the weights moved
    assert report.losses[0] != report.losses[2]
    assert optimizer.state_dict()["param_groups"][0]["lr"] == 0.01


def test_dataloader_and_mode_restored() -> None:
    x = torch.randn(40, 8)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16
    )
    model = make_mlp().eval()
    report = gradwatch.check(model, loader, mse, steps=7)
    assert report.steps == 7
    assert not model.training


def test_baseline_measures_frozen_losses_without_changing_the_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    batches = regression_batches(3)
    frozen = copy.deepcopy(model)
    report = gradwatch.check(model, batches, mse, steps=6, baseline=True)
    assert report.baseline_losses is not None and len(report.baseline_losses) == 6
    # the first step's loss is measured before any update: it equals the baseline's
    assert report.losses[0] == pytest.approx(report.baseline_losses[0], rel=1e-6)
    # the baseline left BatchNorm's running statistics alone: a twin trained without the
    # baseline ends bit-identical
    gradwatch.check(frozen, batches, mse, steps=6)
    for a, b in zip(model.state_dict().values(), frozen.state_dict().values()):
        assert torch.equal(a, b)
    assert "baseline" in report.summary()
    assert len(report.to_dict()["baseline_losses"]) == 6


class _NotAModule:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": _NotAModule()}, TypeError, "model must be a torch.nn.Module"),
        ({"data": torch.randn(4, 8)}, TypeError, "data must be an iterable of"),
        ({"data": 3}, TypeError, "data must be an iterable of"),
        ({"data": []}, ValueError, "data yielded no batches"),
        ({"data": [torch.randn(4, 8)]}, TypeError, r"\(inputs, targets\) pairs"),
        ({"data": [(1, 2, 3)]}, TypeError, "length 3"),
        ({"loss_fn": "mse"}, TypeError, "loss_fn must be callable"),
        ({"loss_fn": lambda out, y: 1.0}, TypeError, "scalar torch.Tensor"),
        ({"loss_fn": lambda out, y: (out - y) ** 2}, ValueError, "reduction='mean'"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"baseline": "yes"}, TypeError, "baseline must be True or False"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
        ({"log_evry": 3}, TypeError, "Did you mean 'log_every'"),
        ({"history": 1}, ValueError, "history must be >= 2"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs, error, match) -> None:
    args = {"model": make_mlp(), "data": regression_batches(1), "loss_fn": mse, "steps": 2}
    args.update(kwargs)
    model, data, loss_fn = args.pop("model"), args.pop("data"), args.pop("loss_fn")
    with pytest.raises(error, match=match):
        gradwatch.check(model, data, loss_fn, **args)


def test_optimizer_of_another_model_is_refused() -> None:
    other = make_mlp()
    with pytest.raises(ValueError, match="does not update any parameter"):
        gradwatch.check(
            make_mlp(),
            regression_batches(1),
            mse,
            optimizer=torch.optim.SGD(other.parameters(), lr=0.1),
        )
