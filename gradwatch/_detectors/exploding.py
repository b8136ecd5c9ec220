"""``exploding``: gradients far larger than the weights they update, or growing fast.

Backpropagation multiplies the gradient by each layer's Jacobian on its way to the input;
gains above 1 compound exponentially with depth (a chain of W = 1.5·I layers scales it by
1.5^L) and, through training, with time: a too-large step makes the next gradient larger
still. Two signs are read from the history:

* magnitude: a layer whose gradient norm is ``exploding_rel_grad`` times its weight norm
  or more (‖g‖/‖w‖; 1e4 by default: even SGD with lr = 1e-4 would more than double the
  layer in one step), or whose gradient norm overflowed float32 while the loss is still
  finite;
* trend: the total gradient norm growing by ``exploding_growth`` or more within the last
  ``trend_window`` steps, rising at most steps, while the loss does not fall and some
  layer's ‖g‖/‖w‖ has reached 1. This is visible before the run reaches NaN.

The magnitude alert names the input-most layer that crosses the threshold; the trend
alert is about the whole model (``layer=None``, one episode) and its message names the
layer whose gradient grew most.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch._alerts import Alert
from gradwatch._detectors._base import DetectorContext
from gradwatch._detectors._common import layer_label, record_weight_floor
from gradwatch._format import fmt
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

#: The growth rule needs some layer's ‖g‖/‖w‖ to have reached this: one SGD step with
#: lr = 1 would then change the layer by its own size. Below it, fast relative growth is
#: a gradient coming back from negligible (leaving a dead or flat region), not a blow-up.
GROWTH_FLOOR = 1.0

REMEDY = (
    "lower the learning rate; clip gradients (gradwatch.watch(..., clip=1.0)); use Xavier/He "
    "initialisation so that each layer's gain stays near 1 (weights with norm above 1 multiply "
    "the gradient at every layer); add normalisation (BatchNorm/LayerNorm) or residual "
    "connections; for recurrent nets clip gradients and prefer LSTM/GRU."
)


def relative_gradient(record: StepRecord, context: DetectorContext) -> np.ndarray:
    """Per layer ‖g‖/‖w‖ (NaN where the layer has no gradient)."""
    denominator = np.maximum(record.weight_norm, record_weight_floor(context, record))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = record.grad_norm / denominator
    rel[~record.has_grad | ~(denominator > 0)] = np.nan
    return rel


def _magnitude(record: StepRecord, context: DetectorContext) -> Alert | None:
    threshold = context.config.exploding_rel_grad
    if record.amp_skipped:
        return None  # fp16 overflow under a GradScaler: skipped by design, not an explosion
    if not record.loss_finite or not bool(np.all(record.weight_finite)):
        return None  # NaN everywhere: the nonfinite detector speaks for this step
    overflow = record.has_grad & np.isposinf(record.grad_norm)
    rel = relative_gradient(record, context)
    flagged = overflow | (rel >= threshold)  # NaN (no gradient) compares False
    if not flagged.any():
        return None
    layers = np.flatnonzero(flagged)
    first = int(layers[0])
    worst = int(layers[np.argmax(np.where(overflow[layers], np.inf, rel[layers]))])
    value = math.inf if overflow[first] else float(rel[first])
    severe = bool(overflow.any()) or float(np.nanmax(rel[layers])) >= threshold**2
    if overflow.any():
        what = (
            f"The gradient norm of {int(overflow.sum())} layer(s) overflowed float32 "
            f"(above 3.4e38) while the loss ({fmt(record.loss or math.nan)}) is still finite"
        )
    else:
        what = (
            f"The gradient of layer {layer_label(context, first)} is {fmt(value)} times its "
            f"weights (‖g‖={fmt(record.grad_norm[first])}, ‖w‖={fmt(record.weight_norm[first])})"
        )
    more = ""
    if len(layers) > 1:
        more = (
            f"; {len(layers)} layers exceed ‖g‖/‖w‖ = {fmt(threshold)}, the worst is "
            f"{layer_label(context, worst)}"
        )
    return Alert(
        kind="exploding",
        severity="error" if severe else "warning",
        step=record.step,
        layer=context.layer_names[first],
        message=f"{what}{more}: gradients are exploding, and an update this large throws the "
        "weights far from where they were.",
        value=value,
        threshold=threshold,
        remedy=REMEDY,
    )


def _growth(history: History, context: DetectorContext) -> Alert | None:
    config = context.config
    # The history's column: the records themselves are read only for a growth.
    totals = history.series("total_grad_norm", config.trend_window)
    usable = np.isfinite(totals) & (totals > 0)
    if len(totals) < 4 or not usable[-1]:
        return None
    # the run of finite values ending at the latest step
    start = len(usable) - int(np.argmin(usable[::-1])) if not usable.all() else 0
    totals = totals[start:]
    if len(totals) < 4:
        return None
    low = int(np.argmin(totals[:-1]))
    growth = float(totals[-1] / totals[low])
    if growth < config.exploding_growth:
        return None
    window = history.last(len(totals))
    rising = float(np.mean(np.diff(totals[low:]) > 0))
    if rising < 0.7:
        return None
    losses = np.array(
        [np.nan if r.loss is None else r.loss for r in window[low:]], dtype=np.float64
    )
    finite_losses = losses[np.isfinite(losses)]
    if finite_losses.size >= 2 and finite_losses[-1] < finite_losses[0]:
        return None  # gradients grow while the loss falls: leaving a plateau, not diverging
    first, last = window[low], window[-1]
    if not np.nanmax(relative_gradient(last, context), initial=0.0) >= GROWTH_FLOOR:
        return None  # growing from negligible to small: not (yet) an explosion
    with np.errstate(divide="ignore", invalid="ignore"):
        layer_growth = last.grad_norm / first.grad_norm
    layer_growth[~np.isfinite(layer_growth)] = 0.0
    layer = int(np.argmax(layer_growth))
    steps = last.step - first.step
    return Alert(
        kind="exploding",
        severity="error" if growth >= config.exploding_growth**2 else "warning",
        step=last.step,
        # The whole model's norm grew: one episode for the run, not one per layer that
        # happens to grow most at each step (the message names that layer).
        layer=None,
        message=f"The total gradient norm grew {fmt(growth)}x in {steps} steps "
        f"({fmt(first.total_grad_norm)} -> {fmt(last.total_grad_norm)}) while the loss did "
        f"not fall; layer {layer_label(context, layer)} grew most "
        f"({fmt(float(layer_growth[layer]))}x). Gradients are exploding: the run is heading "
        "for inf/NaN.",
        value=growth,
        threshold=config.exploding_growth,
        remedy=REMEDY,
    )


def detect_exploding(history: History, context: DetectorContext) -> list[Alert]:
    record = history.latest
    if record is None:
        return []
    alert = _magnitude(record, context) or _growth(history, context)
    return [alert] if alert is not None else []
