"""``update_size``: steps that change the weights by a large part of their own size.

The update ratio ‖Δw‖/‖w‖ is what a step does to a layer, whatever the optimizer: for
SGD it is lr·‖g‖/‖w‖, for Adam-like optimizers about lr/RMS(w) (they divide out the
gradient's scale). Healthy training moves weights by about 1e-4 to 1e-2 of their norm
per step; a step that moves them by a third of their size or more throws away what was
learned, and the loss rises or stalls at chance a few steps later. Seen in the update
ratios gradwatch measures every ``update_ratio_every`` steps, so this fires at the
first measured step, usually long before the loss diverges.

Judged on the median over the model's weight layers (not normalisation layers, whose
scales sit near 1 and move little; not single layers, so one zero-initialised layer
whose ‖w‖ ≈ 0 cannot raise it: each layer's ‖w‖ is floored at the model's typical
weight scale, see ``weight_floor``).

* error: the median ratio is at least ``ERROR_RATIO`` (1: a step changes the weights by
  more than their own size);
* warning: at least ``WARNING_RATIO`` on the two latest measured steps.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext
from gradwatch._detectors._common import median, record_weight_floor
from gradwatch._format import fmt
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

#: Median update ratio per step from which a step is far too large (weights change by
#: more than their own size).
ERROR_RATIO = 1.0
#: Median update ratio per step that, seen on two measured steps in a row, is too large.
WARNING_RATIO = 0.3
#: The update ratio healthy training runs at (per step), to size the suggested rate.
HEALTHY_RATIO = 3e-3


def _median_ratio(record: StepRecord, context: DetectorContext) -> float:
    """Median over weight layers of ‖Δw‖ / max(‖w‖, the model's weight floor)."""
    ratio = record.update_ratio
    if ratio is None or ratio.shape != record.weight_norm.shape:
        return math.nan
    weights = record.weight_norm
    floor = record_weight_floor(context, record)
    with np.errstate(all="ignore"):
        adjusted = ratio * weights / np.maximum(weights, floor)
    usable = context.weight_mask & record.has_grad & np.isfinite(adjusted)
    if not usable.any():
        return math.nan
    return median(adjusted[usable])


def detect_update_size(history: History, context: DetectorContext) -> list[Alert]:
    latest = history.latest
    if latest is None or latest.update_ratio is None or latest.skipped or latest.amp_skipped:
        return []
    value = _median_ratio(latest, context)
    if not value >= WARNING_RATIO:  # also False for NaN
        return []
    severity: Severity
    if value >= ERROR_RATIO:
        severity, threshold = "error", ERROR_RATIO
    else:
        previous = next(
            (
                r
                for r in reversed(history)
                if r.step < latest.step and r.update_ratio is not None and not r.skipped
            ),
            None,
        )
        if previous is None or not _median_ratio(previous, context) >= WARNING_RATIO:
            return []
        severity, threshold = "warning", WARNING_RATIO
    return [
        Alert(
            kind="update_size",
            severity=severity,
            step=latest.step,
            layer=None,
            message=f"Each step changes the weights by {fmt(value)} of their own size (median "
            f"update ratio ‖Δw‖/‖w‖ over the weight layers; healthy training moves them by "
            f"about 1e-4 to 1e-2 per step). Steps this large undo what was learned: the loss "
            f"will rise or stall{_rate_clause(latest, context)}.",
            value=value,
            threshold=threshold,
            remedy=_remedy(latest, context, value),
        )
    ]


def _rate_clause(record: StepRecord, context: DetectorContext) -> str:
    optimizer = context.optimizer
    if record.lr is None or optimizer is None:
        return ""
    return f"; the learning rate is {fmt(record.lr)} ({optimizer.name})"


def _remedy(record: StepRecord, context: DetectorContext, value: float) -> str:
    """Lower the rate by the factor that brings the update ratio to a healthy size."""
    factor = value / HEALTHY_RATIO
    optimizer = context.optimizer
    if record.lr is not None and optimizer is not None:
        target = record.lr / factor
        text = (
            f"lower the learning rate of {optimizer.name} about {fmt(factor)}x, from "
            f"{fmt(record.lr)} to about {fmt(target)}"
        )
    else:
        text = f"lower the learning rate about {fmt(factor)}x"
    text += (
        ", and warm it up linearly over the first few hundred steps (e.g. "
        "torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500))"
    )
    if optimizer is not None and optimizer.adaptive:
        # Adam-like steps are about lr per weight whatever the gradient's size.
        text += f"; clipping gradients would not shrink {optimizer.name}'s steps"
    return text + "."
