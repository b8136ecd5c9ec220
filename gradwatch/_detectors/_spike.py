"""The robust rolling z-score both spike detectors use."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from gradwatch._config import WatchConfig
from gradwatch._detectors._common import robust_center_scale


@dataclasses.dataclass(frozen=True)
class Spike:
    """How far the latest value sits above its rolling median."""

    value: float
    median: float
    z: float
    ratio: float
    samples: int


#: Relative slack of :func:`_below_any_spike`: far above the rounding of the median's
#: arithmetic (exp(log(x)) may fall an ulp below x), far below any meaningful ratio.
_SLACK = 1e-9


def _below_any_spike(value: float, previous: np.ndarray, ratio: float) -> bool:
    """True when ``value`` cannot be ``ratio`` times the median of the positive
    ``previous`` values: that median (plain, or geometric on the log scale) is at least
    their lowest value, so a value below ``ratio`` times the lowest (with a slack for
    rounding) is no spike. A cheap test that spares ordinary steps the sorting."""
    lowest = float(previous.min())
    return lowest > 0 and value * (1.0 + _SLACK) < ratio * lowest


def spike_of(series: np.ndarray, config: WatchConfig, *, log: bool) -> Spike | None:
    """The spike formed by the last value of ``series`` over the values before it, if any.

    The reference is the median and the MAD of the previous ``spike_window`` finite values
    (robust: earlier spikes do not inflate it), taken on a log scale when ``log`` (gradient
    norms fluctuate multiplicatively). A spike needs ``spike_warmup`` previous values, a
    robust z-score of at least ``spike_z`` and a value at least ``spike_ratio`` times the
    median, so that a tiny MAD (a very steady series) cannot turn a small bump into an alarm.
    """
    if series.size < 2 or not math.isfinite(series[-1]):
        return None
    value = float(series[-1])
    previous = series[:-1][np.isfinite(series[:-1])][-config.spike_window :]
    if previous.size < config.spike_warmup:
        return None
    if _below_any_spike(value, previous, config.spike_ratio):
        return None  # most steps end here, without the log and the sorting below
    if log:
        if value <= 0 or not (previous > 0).all():
            return None
        center, scale = robust_center_scale(np.log(previous))
        distance = math.log(value) - center
        median = math.exp(center)
    else:
        center, scale = robust_center_scale(previous)
        distance = value - center
        median = center
    if distance <= 0:
        return None
    # A floor on the scale: a perfectly steady series (MAD 0) judges by the ratio alone.
    z = distance / scale if scale > 0 else math.inf
    ratio = value / median if median > 0 else math.inf
    if z < config.spike_z or ratio < config.spike_ratio:
        return None
    return Spike(value, median, z, ratio, int(previous.size))
