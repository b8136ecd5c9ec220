"""``loss_spike`` and ``grad_spike``: a real run hit by one bad batch."""

from __future__ import annotations

import numpy as np
import torch

import gradwatch
from gradwatch._config import WatchConfig
from gradwatch._detectors import DetectorContext
from gradwatch._detectors.loss_spike import detect_loss_spike
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

from .unstable_models import he_mlp, mse, regression


def test_one_bad_batch_raises_a_loss_and_a_grad_spike_at_that_step() -> None:
    batches = regression(12)
    x, y = batches[0]
    bad = (x, y + 40.0)  # corrupted targets: a huge loss and gradient on one step
    data = [*batches[:12], bad, *batches[:5]]
    report = gradwatch.check(he_mlp(depth=3), data, mse, steps=len(data))
    by_kind = {a.kind: a for a in report.alerts if a.kind in ("loss_spike", "grad_spike")}
    assert set(by_kind) == {"loss_spike", "grad_spike"}, report.summary()
    assert by_kind["loss_spike"].step == 12 and by_kind["grad_spike"].step == 12
    assert by_kind["loss_spike"].layer is None
    assert by_kind["grad_spike"].layer is not None
    spike = by_kind["loss_spike"]
    assert spike.value is not None and spike.threshold is not None
    assert spike.value > spike.threshold
    assert "clip" in spike.remedy


def _loss_record(step: int, loss: float) -> StepRecord:
    return StepRecord(
        step=step,
        grad_norm=np.array([1.0]),
        weight_norm=np.array([1.0]),
        has_grad=np.array([True]),
        total_grad_norm=1.0,
        loss=loss,
    )


def test_no_spike_during_warm_up_and_none_for_a_falling_loss() -> None:
    context = DetectorContext(("a",), ("Linear",), WatchConfig(), (1,))
    history = History(64)
    alerts = []
    for step, loss in enumerate([5.0, 1.0, 20.0] + [3.0 / (1 + s) for s in range(30)]):
        history.append(_loss_record(step, loss))
        alerts += detect_loss_spike(history, context)
    assert alerts == []  # step 2's jump came before spike_warmup values were seen


def test_spike_detection_respects_the_options() -> None:
    losses = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98, 1.01, 2.5]
    for ratio, expected in ((2.0, 1), (3.0, 0)):
        context = DetectorContext(("a",), ("Linear",), WatchConfig(spike_ratio=ratio), (1,))
        history = History(64)
        found = []
        for step, loss in enumerate(losses):
            history.append(_loss_record(step, loss))
            found += detect_loss_spike(history, context)
        assert len(found) == expected


def test_healthy_training_has_no_spikes() -> None:
    torch.manual_seed(0)
    report = gradwatch.check(he_mlp(depth=4), regression(6), mse, steps=30)
    assert not [a for a in report.alerts if a.kind.endswith("_spike")]


def test_the_cheap_no_spike_test_never_changes_a_verdict(monkeypatch) -> None:
    """``spike_of`` skips its sorting when the value is below spike_ratio times the
    lowest previous value: over series that sit at that boundary (an ulp below and above
    3x a constant, where exp(log(c)) rounds below c), with zeros, negatives, NaN and
    spikes, it gives exactly what the full computation gives."""
    import math

    from gradwatch._detectors import _spike

    config = WatchConfig()
    generator = np.random.default_rng(7)
    cases = []
    for c in generator.uniform(1e-3, 1e3, 200):
        boundary = config.spike_ratio * c
        for value in (np.nextafter(boundary, 0), boundary, np.nextafter(boundary, math.inf)):
            cases.append(np.array([c] * 10 + [value]))
    for _ in range(300):
        series = np.exp(generator.normal(0, 1, 40))
        series[-1] *= generator.choice([0.5, 1.0, 2.9, 3.0, 3.1, 10.0, 1e3])
        if generator.random() < 0.2:
            series[generator.integers(0, 39)] = generator.choice([0.0, -1.0, np.nan, np.inf])
        cases.append(series)
    fast = [
        (_spike.spike_of(s, config, log=True), _spike.spike_of(s, config, log=False)) for s in cases
    ]
    monkeypatch.setattr(_spike, "_below_any_spike", lambda *args: False)
    full = [
        (_spike.spike_of(s, config, log=True), _spike.spike_of(s, config, log=False)) for s in cases
    ]
    assert fast == full
    assert sum(spike is not None for pair in full for spike in pair) > 100  # spikes were there
