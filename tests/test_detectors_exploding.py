"""``exploding`` on models that really explode, and its trend rule on the history."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import gradwatch
from gradwatch._config import WatchConfig
from gradwatch._detectors import DetectorContext
from gradwatch._detectors.exploding import detect_exploding
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

from .unstable_models import (
    chain_batches,
    he_mlp,
    image_batches,
    linear_chain,
    mse,
    regression,
    scalar_batches,
    scalar_chain,
)


def kinds(report: gradwatch.Report) -> set[str]:
    return {alert.kind for alert in report.alerts}


def test_linear_chain_of_1_5_identity_explodes() -> None:
    report = gradwatch.check(linear_chain(1.5), chain_batches(2), mse, steps=6)
    assert not report.ok
    exploding = [a for a in report.alerts if a.kind == "exploding"]
    assert exploding, report.summary()
    first = exploding[0]
    assert first.step == 0 and first.severity == "error"
    assert first.layer == "0"
    assert first.threshold == WatchConfig().exploding_rel_grad
    assert "learning rate" in first.remedy and "clip" in first.remedy
    assert "exploding" in first.message
    # one episode for the layer, not one alert per step
    assert len([a for a in exploding if a.layer == "0"]) == 1


def test_scalar_chain_w_1_3_explodes_and_names_the_input_side() -> None:
    report = gradwatch.check(scalar_chain(1.3), scalar_batches(2), mse, steps=4)
    exploding = [a for a in report.alerts if a.kind == "exploding"]
    assert exploding and exploding[0].step == 0
    assert exploding[0].layer == "0"  # the input-most layer over the threshold
    assert exploding[0].value is not None and exploding[0].value > 1e8
    assert "nonfinite" not in kinds(report)  # it explodes without (yet) overflowing


def test_sgd_with_far_too_high_learning_rate_is_caught_before_nan() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    report = gradwatch.check(
        model, image_batches(4), nn.functional.cross_entropy, optimizer=optimizer, steps=20
    )
    assert not report.ok
    loud = [a for a in report.alerts if a.kind in ("exploding", "loss_spike")]
    nonfinite = [a for a in report.alerts if a.kind == "nonfinite"]
    assert loud, report.summary()
    if nonfinite:
        assert loud[0].step < nonfinite[0].step


def test_sgd_with_far_too_high_learning_rate_on_an_mlp() -> None:
    model = he_mlp(depth=4, width=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0)
    report = gradwatch.check(model, regression(4), mse, optimizer=optimizer, steps=6)
    loud = [a for a in report.alerts if a.kind in ("exploding", "loss_spike")]
    nonfinite = [a for a in report.alerts if a.kind == "nonfinite"]
    assert loud
    if nonfinite:
        assert loud[0].step <= nonfinite[0].step


def _record(step: int, total: float, loss: float) -> StepRecord:
    grad = np.array([total / 2, total / 2])
    return StepRecord(
        step=step,
        grad_norm=grad,
        weight_norm=np.array([1.0, 1.0]),
        has_grad=np.array([True, True]),
        total_grad_norm=total,
        loss=loss,
    )


def _context(**options: object) -> DetectorContext:
    return DetectorContext(("a", "b"), ("Linear", "Linear"), WatchConfig(**options), (4, 4))


def test_growth_rule_fires_on_steady_growth_with_a_rising_loss() -> None:
    history = History(64)
    alerts = []
    for step, total in enumerate([1.0, 1.1, 4.0, 30.0, 200.0, 1500.0]):
        history.append(_record(step, total, loss=1.0 + step))
        alerts += detect_exploding(history, _context(exploding_rel_grad=1e9))
    assert [a.step for a in alerts][:1] == [4]
    assert alerts[0].value is not None and alerts[0].value >= 100
    assert alerts[0].layer is None  # the whole model's norm: one episode, not one per layer


def test_growth_rule_stays_quiet_while_the_loss_falls() -> None:
    history = History(64)
    for step, total in enumerate([1.0, 1.1, 4.0, 30.0, 200.0, 1500.0]):
        history.append(_record(step, total, loss=10.0 - step))
        assert detect_exploding(history, _context(exploding_rel_grad=1e9)) == []


def test_healthy_mlp_never_raises_exploding() -> None:
    report = gradwatch.check(he_mlp(), regression(4), mse, steps=15)
    assert "exploding" not in kinds(report)
