"""Small numeric helpers the detectors share: robust statistics and layer selection."""

from __future__ import annotations

import math

import numpy as np

from gradwatch._detectors._base import DetectorContext
from gradwatch._history import History
from gradwatch._measure.record import StepRecord
from gradwatch._names import quoted_name

#: MAD x this = a standard deviation for normally distributed data.
MAD_TO_SD = 1.4826


def layer_label(context: DetectorContext, layer: int) -> str:
    return quoted_name(context.layer_names[layer])


def weight_floor(context: DetectorContext, weight_norm: np.ndarray) -> np.ndarray:
    """A per-layer lower bound for ‖w‖: the typical weight RMS times sqrt(numel).

    A zero-initialised layer (a residual branch's output projection, a LoRA ``B``
    matrix, a classifier head) has ‖w‖ ≈ 0 for its first steps; dividing or multiplying
    by that would make it look exploding or vanishing. Substituting the median weight
    RMS of the model's layers (one step's ``weight_norm``) gives such a layer an
    ordinary weight scale instead.
    """
    root = context.numel_root
    if root.shape != weight_norm.shape or not root.size:
        return np.zeros_like(weight_norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        rms = weight_norm / root
    usable = rms[(rms > 0) & np.isfinite(rms)]
    typical = median(usable) if usable.size else 0.0
    return 0.1 * typical * root


def record_weight_floor(context: DetectorContext, record: StepRecord) -> np.ndarray:
    """``weight_floor`` of one record's weight norms, computed once per record (the
    exploding and vanishing detectors both need it every step)."""
    floor = record.derived.get("weight_floor")
    if floor is None:
        floor = record.derived["weight_floor"] = weight_floor(context, record.weight_norm)
    return floor


def nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian(values, axis)`` (NaN where a slice has no finite value), silently.

    numpy's own goes through masked arrays for an ``axis`` and costs ~0.2 ms on the
    small arrays detectors use every step; sorting (NaN sorts last) and picking the
    middle of the non-NaN part costs a tenth of that.
    """
    ordered = np.sort(np.moveaxis(values, axis, -1), axis=-1)
    count = np.sum(~np.isnan(ordered), axis=-1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0), axis=-1)
    high = np.take_along_axis(ordered, np.maximum(count // 2, 0), axis=-1)
    middle = (low + high) / 2.0
    middle[count == 0] = np.nan
    return middle[..., 0]


def median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a 1-D array without NaN, ten times faster.

    ``np.median`` spends ~30 µs on argument handling and partitioning before it looks
    at a few hundred values; sorting them costs ~2 µs. NaN for an empty array.
    """
    count = values.size
    if not count:
        return math.nan
    ordered = np.sort(values, axis=None)
    return float(ordered[(count - 1) // 2] + ordered[count // 2]) / 2.0


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation of the finite ``values``."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return math.nan, math.nan
    center = median(finite)
    return center, MAD_TO_SD * median(np.abs(finite - center))


def step_noise(values: np.ndarray) -> float:
    """Robust standard deviation of the step-to-step noise of a series.

    From first differences, so a steady trend (a falling loss) is not mistaken for noise:
    for white noise of s.d. s the differences have s.d. s·√2.
    """
    finite = values[np.isfinite(values)]
    if finite.size < 3:
        return math.nan
    diffs = np.diff(finite)
    return MAD_TO_SD * median(np.abs(diffs - median(diffs))) / math.sqrt(2.0)


def finite_tail(history: History, field: str, n: int) -> np.ndarray:
    """The last ``n`` values of a scalar field, non-finite ones dropped."""
    values = history.series(field, n)
    return values[np.isfinite(values)]
