"""Long runs: bounded memory, no leaked file handles across many watch/close cycles."""

from __future__ import annotations

import gc
import itertools
import os

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

from .helpers import train_steps


def _record(step: int) -> StepRecord:
    return StepRecord(step, np.ones(3), np.ones(3), np.ones(3, dtype=bool), 1.0, loss=0.5)


def test_history_is_a_bounded_ring_buffer() -> None:
    history = History(maxlen=5)
    for step in range(12):
        history.append(_record(step))
    assert len(history) == 5 and history.steps_seen == 12
    assert [r.step for r in history] == [7, 8, 9, 10, 11]
    assert history.series("loss", 3).tolist() == [0.5, 0.5, 0.5]
    assert history.matrix("grad_norm").shape == (5, 3)


def test_column_series_match_the_records_across_the_wrap() -> None:
    """The column-wise series (one slice) equal a walk over the records, at every fill
    level and across the ring's wrap-around, with missing losses as NaN."""
    history = History(maxlen=5)
    for step in range(13):
        loss = None if step == 11 else 0.5 * step
        record = StepRecord(
            step,
            np.ones(2),
            np.ones(2),
            np.ones(2, dtype=bool),
            float(step),
            loss=loss,
            skipped=step == 12,
        )
        history.append(record)
        for n in (0, 1, 3, 5, 9, None):
            records = history.last(n if n is not None else 99)
            expected_norm = [r.total_grad_norm for r in records]
            expected_loss = [np.nan if r.loss is None else r.loss for r in records]
            np.testing.assert_array_equal(history.series("total_grad_norm", n), expected_norm)
            np.testing.assert_array_equal(history.series("loss", n), expected_loss)
            np.testing.assert_array_equal(
                history.series("taken", n), [0.0 if r.skipped else 1.0 for r in records]
            )
    # other numeric fields still work (walk over the records)
    assert history.series("step", 3).tolist() == [10.0, 11.0, 12.0]
    # a copy: detectors may modify what they get
    history.series("loss", 2)[:] = 0.0
    assert np.isnan(history.series("loss", 2)[0])


@pytest.mark.slow
def test_watcher_host_memory_is_flat_over_10000_steps(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def train(gw: gradwatch.Watcher, steps: int) -> None:
        train_steps(model, optimizer, itertools.repeat((x, y), steps), gw)  # losses dropped

    with gradwatch.watch(model, optimizer, logdir=tmp_path, history=256) as gw:
        train(gw, 1000)  # fill the history window first
        gc.collect()
        objects_before = len(gc.get_objects())
        train(gw, 9000)
        gc.collect()
        objects_after = len(gc.get_objects())
    assert gw.history.steps_seen == 10000 and len(gw.history) == 256
    # Flat: a leak of even one tracked object per step would add about 9,000 objects.
    assert objects_after - objects_before < 500, (objects_before, objects_after)


def test_no_file_handles_leak_across_watch_close_cycles(tmp_path) -> None:
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def cycle(i: int) -> None:
        with gradwatch.watch(model, optimizer, logdir=tmp_path / str(i)):
            model(torch.randn(2, 4)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()

    cycle(-1)
    baseline = open_fds()
    for i in range(30):
        cycle(i)
    gc.collect()
    assert open_fds() <= baseline
