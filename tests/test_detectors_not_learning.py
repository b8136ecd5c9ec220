"""``not_learning``: frozen or lr≈0 runs against healthy ones, with and without baseline."""

from __future__ import annotations

import math

import torch
from torch import nn

import gradwatch

from .unstable_models import he_mlp, mse, regression


def not_learning(report: gradwatch.Report) -> list[gradwatch.Alert]:
    return [alert for alert in report.alerts if alert.kind == "not_learning"]


def test_learning_rate_zero_is_not_learning() -> None:
    model = he_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    report = gradwatch.check(model, regression(6), mse, optimizer=optimizer, steps=20)
    alerts = not_learning(report)
    assert alerts and alerts[0].severity == "warning", report.summary()
    assert alerts[0].step == 19 and alerts[0].layer is None
    assert "update ratio" in alerts[0].message
    assert "learning rate" in alerts[0].remedy
    assert not report.ok


def test_frozen_parameters_are_not_learning() -> None:
    model = he_mlp(depth=3)
    for p in model.parameters():
        p.requires_grad_(False)
    model[-1].bias.requires_grad_(True)  # only a bias trains, with a tiny step
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-9)
    report = gradwatch.check(model, regression(6), mse, optimizer=optimizer, steps=20)
    assert [a.severity for a in not_learning(report)] == ["warning"], report.summary()


def test_healthy_run_learns() -> None:
    report = gradwatch.check(he_mlp(depth=3), regression(6), mse, steps=20)
    assert not_learning(report) == []
    assert report.ok


def test_not_judged_before_enough_steps() -> None:
    model = he_mlp(depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    report = gradwatch.check(model, regression(6), mse, optimizer=optimizer, steps=10)
    assert not_learning(report) == []
    report = gradwatch.check(
        model, regression(6), mse, optimizer=optimizer, steps=10, not_learning_steps=8
    )
    assert not_learning(report)


def test_baseline_judges_lr_zero_against_the_frozen_losses() -> None:
    model = he_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    report = gradwatch.check(
        model, regression(6), mse, optimizer=optimizer, steps=20, baseline=True
    )
    alerts = not_learning(report)
    assert alerts and alerts[0].severity == "warning"
    assert "learning-rate-zero baseline" in alerts[0].message
    assert alerts[0].value == 0.0  # same batches, same weights: no improvement at all


def test_baseline_recognises_slow_but_real_learning() -> None:
    # Small SGD steps on small batches: the loss falls by less than its batch-to-batch
    # noise in 20 steps, so on its own noise floor the run is at most an "info"; compared
    # batch for batch with the frozen weights, the improvement is clear.
    def run(baseline: bool) -> gradwatch.Report:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=2e-3)
        data = regression(8, batch=8)
        return gradwatch.check(model, data, mse, optimizer=optimizer, steps=20, baseline=baseline)

    plain = run(baseline=False)
    assert [a.severity for a in not_learning(plain)] in ([], ["info"]), plain.summary()
    with_baseline = run(baseline=True)
    assert not_learning(with_baseline) == [], with_baseline.summary()
    assert with_baseline.ok


def test_judged_at_the_last_step_before_the_history_forgets_step_0() -> None:
    """not_learning judges only while the history holds step 0. With history=22 and
    not_learning_steps=21, the regular judging steps (every 5: 19, then 24) are too
    early or too late; the step before the history wraps (21) is judged too."""
    model = he_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    report = gradwatch.check(
        model,
        regression(6),
        mse,
        optimizer=optimizer,
        steps=30,
        history=22,
        not_learning_steps=21,
    )
    alerts = not_learning(report)
    assert alerts and alerts[0].step == 21, report.summary()


def test_a_loss_that_starts_above_chance_and_falls_did_not_rise() -> None:
    """Seed 2 of the zoo's logistic regression starts at 1.65 (chance 1.39) and falls to
    1.61: measured against chance it 'rose'; against its start it fell, so no warning."""
    from .zoo import SCENARIOS, train

    outcome = train(SCENARIOS["logistic_regression"], seed=2)
    assert outcome.losses[0] > math.log(4)
    assert [a for a in outcome.alerts if a.kind == "not_learning" and a.severity != "info"] == []


def test_median_update_matches_nanmedian_and_is_cached() -> None:
    import numpy as np

    from gradwatch._detectors.not_learning import _median_update
    from gradwatch._measure.record import StepRecord

    def record(update_ratio: np.ndarray | None) -> StepRecord:
        n = 4
        return StepRecord(
            step=0,
            grad_norm=np.ones(n),
            weight_norm=np.ones(n),
            has_grad=np.ones(n, dtype=bool),
            total_grad_norm=2.0,
            loss=1.0,
            update_ratio=update_ratio,
        )

    for ratios in (
        [1e-3, np.nan, 2e-3, 5e-3],
        [np.inf, np.inf, 1e-3, np.nan],
        [1.0, 2.0, 3.0, 4.0],
    ):
        values = np.array(ratios)
        assert _median_update(record(values)) == float(np.nanmedian(values))
    assert math.isnan(_median_update(record(None)))
    assert math.isnan(_median_update(record(np.array([np.nan, np.inf, -np.inf, np.nan]))))
    cached = record(np.array([1.0, 3.0, np.nan, np.nan]))
    assert _median_update(cached) == 2.0
    cached.update_ratio[:] = 9.0  # a record never changes: the first answer is kept
    assert _median_update(cached) == 2.0
