"""numpy scalars where a number goes (issue 20 item 9): accepted alike, stored as Python values.

Numbers often come from numpy (a config loaded with np.load, a sweep over np.linspace,
an array element). np.float64 is a float subclass and was accepted; np.float32 and
np.int64 are not, and were refused with "must be a number". They are all accepted now,
and stored as the Python number they hold, so no later code meets a numpy scalar.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradwatch

from .helpers import make_mlp, regression_batches, train_steps

NUMPY_INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64]
NUMPY_FLOATS = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("kind", NUMPY_INTS, ids=lambda k: k.__name__)
def test_numpy_integers_are_accepted_where_an_int_goes(kind) -> None:
    config = gradwatch.WatchConfig(history=kind(64), log_every=kind(2), trend_window=kind(6))
    assert (config.history, config.log_every, config.trend_window) == (64, 2, 6)
    assert type(config.history) is int and type(config.log_every) is int
    clipper = gradwatch.AutoClip(history=kind(20))
    assert clipper.history == 20 and type(clipper.history) is int


@pytest.mark.parametrize("kind", NUMPY_FLOATS, ids=lambda k: k.__name__)
def test_numpy_floats_are_accepted_alike(kind) -> None:
    config = gradwatch.WatchConfig(flush_secs=kind(2.5), skip_spikes=kind(6.0))
    assert (config.flush_secs, config.skip_spikes) == (2.5, 6.0)
    assert type(config.flush_secs) is float and type(config.skip_spikes) is float
    assert gradwatch.ClipNorm(kind(0.5)).max_norm == 0.5
    assert gradwatch.ZClip(z_thresh=kind(2.5), max_grad_norm=kind(1.0)).z_thresh == 2.5


def test_a_watched_run_with_numpy_options_trains() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    options = {"log_every": np.int64(1), "history": np.int32(32), "clip": np.float32(0.5)}
    with gradwatch.watch(model, optimizer, **options) as gw:
        train_steps(model, optimizer, regression_batches(4), gw)
    assert len(gw.history) == 4
    assert all(record.clip_coef is not None for record in gw.history)


def test_numpy_bools_are_flags_and_numpy_values_still_obey_the_rules() -> None:
    assert gradwatch.WatchConfig(locate_nonfinite=np.bool_(True)).locate_nonfinite is True
    with pytest.raises(TypeError, match=r"history must be an int >= 2, got float64"):
        gradwatch.WatchConfig(history=np.float64(64))
    with pytest.raises(TypeError, match=r"history must be an int >= 2, got bool"):
        gradwatch.WatchConfig(history=np.bool_(True))
    with pytest.raises(ValueError, match=r"history must be >= 2, got 1"):
        gradwatch.WatchConfig(history=np.int64(1))
    with pytest.raises(ValueError, match=r"flush_secs must be a finite number, got nan"):
        gradwatch.WatchConfig(flush_secs=np.float32("nan"))
    with pytest.raises(ValueError, match=r"clip must be a positive, finite"):
        gradwatch.WatchConfig(clip=np.float32(-1))
    with pytest.raises(TypeError, match=r"log_every must be an int >= 1, got float32"):
        gradwatch.WatchConfig(log_every=np.float32(2))
