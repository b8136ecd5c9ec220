"""Watcher.state_dict()/load_state_dict() and History's checkpoint form: a run saved with
torch.save and read back with torch.load(weights_only=True) continues where it stopped."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._history import History
from gradwatch._measure.record import NonfiniteOrigin, OutputLogits, StepRecord

from .helpers import make_mlp, regression_batches, train_steps


def _through_disk(state: Any) -> Any:
    """``state`` saved and loaded as a checkpoint is: weights-only (torch's default)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _record(step: int, **fields: Any) -> StepRecord:
    return StepRecord(
        step=step,
        grad_norm=np.array([0.5 + step, np.nan], dtype=np.float32),
        weight_norm=np.array([1.0, 2.0], dtype=np.float32),
        has_grad=np.array([True, False]),
        total_grad_norm=float(step),
        loss=float(step) / 2 if step % 3 else None,
        **fields,
    )


def _same(a: StepRecord, b: StepRecord) -> None:
    for field in dataclasses.fields(StepRecord):
        if field.name == "derived":
            continue
        left, right = getattr(a, field.name), getattr(b, field.name)
        if isinstance(left, np.ndarray):
            assert isinstance(right, np.ndarray) and right.dtype == left.dtype, field.name
            np.testing.assert_array_equal(left, right, err_msg=field.name)
        elif isinstance(left, dict):
            assert left.keys() == right.keys(), field.name
            for key in left:
                np.testing.assert_array_equal(left[key], right[key], err_msg=field.name)
        else:
            assert left == right, field.name


def test_history_round_trips_every_kind_of_field_weights_only() -> None:
    history = History(8)
    history.append(_record(0))
    history.append(
        _record(
            1,
            update_ratio=np.array([1e-3, np.nan]),
            activations={"std": np.array([0.5, 1.5], dtype=np.float32)},
            activation_layers=("a", "b"),
            output_logits=OutputLogits(1.0, 2.0, 3.0),
            nonfinite_origin=NonfiniteOrigin("fc", "forward", "fc made a NaN."),
            recurrent_length=(7,),
        )
    )
    restored = History(8)
    restored.load_state_dict(_through_disk(history.state_dict()))
    assert len(restored) == 2 and restored.steps_seen == 2
    for a, b in zip(history, restored):
        _same(a, b)
    np.testing.assert_array_equal(restored.series("loss"), history.series("loss"))


@pytest.mark.parametrize("maxlen", [5, 3])
def test_history_keeps_the_newest_steps_and_reads_its_series_after_a_long_run(
    maxlen: int,
) -> None:
    saved = History(5)
    for step in range(12):  # wrapped around twice
        saved.append(_record(step))
    restored = History(maxlen)
    restored.load_state_dict(_through_disk(saved.state_dict()))
    assert [r.step for r in restored] == list(range(12 - maxlen, 12))
    assert restored.steps_seen == 12
    for field in History.COLUMNS:
        np.testing.assert_array_equal(restored.series(field), saved.series(field, maxlen))
    restored.append(_record(12))  # goes on appending where the run stopped
    saved.append(_record(12))
    np.testing.assert_array_equal(
        restored.series("total_grad_norm"), saved.series("total_grad_norm", maxlen)
    )


def _run(steps: int, state: Any = None, *, seed: int = 0, **options: Any) -> gradwatch.Watcher:
    model = make_mlp(seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    watcher = gradwatch.watch(model, optimizer, activation_every=4, update_ratio_every=3, **options)
    if state is not None:
        watcher.load_state_dict(state)
    with watcher:
        train_steps(model, optimizer, regression_batches(steps, seed=seed), watcher)
    return watcher


def test_a_restored_watcher_continues_the_step_count_history_and_alerts() -> None:
    first = _run(6, clip=1e-3)  # every step clipped: the counters have something to hold
    assert first.clipped_steps == 6
    state = _through_disk(first.state_dict())

    resumed = _run(4, state, clip=1e-3)
    assert resumed.step_count == 10
    assert [r.step for r in resumed.history] == list(range(10))
    for old, new in zip(first.history, list(resumed.history)[:6]):
        _same(old, new)
    assert resumed.clipped_steps == 10
    # Sampled steps keep the run's cadence: 8 (not 6 + 0) is the next activation step.
    sampled = [r.step for r in resumed.history if r.activations is not None]
    assert sampled == [0, 4, 8]


def test_a_restored_alert_is_not_raised_again() -> None:
    """A NaN in step 1's batch: nonfinite at 1. After the restore, a NaN at step 3 is the
    same episode (same kind and layer, soon after): no second alert."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # NaN gradients, weights kept
    with gradwatch.watch(model, optimizer) as first:
        train_steps(model, optimizer, regression_batches(2), first, nan_at=1)
    kinds = [(a.kind, a.step) for a in first.alerts]
    assert ("nonfinite", 1) in kinds
    state = _through_disk(first.state_dict())

    with gradwatch.watch(model, optimizer) as fresh:
        train_steps(model, optimizer, regression_batches(2), fresh, nan_at=1)
    assert any(a.kind == "nonfinite" for a in fresh.alerts)  # so it would be raised again

    resumed = gradwatch.watch(model, optimizer)
    resumed.load_state_dict(state)
    with resumed:
        train_steps(model, optimizer, regression_batches(2), resumed, nan_at=1)
    assert [(a.kind, a.step) for a in resumed.alerts] == kinds  # the restored ones only
    assert resumed.step_count == 4


def test_load_state_dict_after_a_step_is_refused() -> None:
    state = _run(2).state_dict()
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, optimizer) as watcher:
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        with pytest.raises(RuntimeError, match="before the first step"):
            watcher.load_state_dict(state)


def test_a_state_of_another_model_is_refused() -> None:
    state = _run(2).state_dict()  # make_mlp: four Linear layers
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 1))
    watcher = gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with watcher, pytest.raises(ValueError, match="saved from a model with 4 layer"):
        watcher.load_state_dict(state)
