"""``nonfinite``: a NaN or inf in the loss, a gradient or a weight."""

from __future__ import annotations

import numpy as np

from gradwatch._alerts import Alert
from gradwatch._detectors._base import DetectorContext
from gradwatch._history import History
from gradwatch._measure.record import StepRecord
from gradwatch._names import display_name

REMEDY = (
    "lower the learning rate, clip gradients (gradwatch.watch(..., clip=1.0)), check the "
    "inputs and the loss for NaN/inf (log of 0, division by 0), and under fp16 use a "
    "GradScaler; on_nonfinite='skip' drops such steps without touching the weights."
)


def first_nonfinite_layer(record: StepRecord) -> tuple[int | None, str]:
    """Index of the first layer (depth order) with a non-finite gradient or weight."""
    bad_grad = np.flatnonzero(~record.grad_finite)
    if bad_grad.size and not record.amp_skipped:
        return int(bad_grad[0]), "gradient"
    bad_weight = np.flatnonzero(~record.weight_finite)
    if bad_weight.size:
        return int(bad_weight[0]), "weight"
    return None, "loss"


def nonfinite_alert(record: StepRecord, context: DetectorContext) -> Alert | None:
    """The ``nonfinite`` alert for ``record``, or None when everything is finite.

    On a step the ``GradScaler`` skipped (``record.amp_skipped``), non-finite gradients
    are the scaler's routine overflow signal, reported as ``amp_skip``, not here.
    """
    bad_grads = 0 if record.amp_skipped else int((~record.grad_finite).sum())
    bad_weights = int((~record.weight_finite).sum())
    if record.loss_finite and not bad_grads and not bad_weights:
        return None
    layer, what = first_nonfinite_layer(record)
    parts = []
    if not record.loss_finite:
        parts.append(f"the loss is {record.loss}")
    if bad_grads:
        parts.append(f"{bad_grads} layer(s) have non-finite gradients")
    if bad_weights:
        parts.append(f"{bad_weights} layer(s) have non-finite weights")
    where = ""
    if layer is not None:
        value = record.grad_norm[layer] if what == "gradient" else record.weight_norm[layer]
        name = display_name(context.layer_names[layer])
        where = f" The first affected layer in depth order is {name!r} ({what} norm {value})."
    value_out = float(record.loss) if record.loss is not None and not record.loss_finite else None
    if value_out is None and layer is not None:
        value_out = float(
            record.grad_norm[layer] if what == "gradient" else record.weight_norm[layer]
        )
    layer_name = context.layer_names[layer] if layer is not None else None
    origin = record.nonfinite_origin
    if origin is not None:  # locate_nonfinite=True: name the producer, not the first layer
        layer_name, where = origin.layer, " " + origin.sentence
    return Alert(
        kind="nonfinite",
        severity="error",
        step=record.step,
        layer=layer_name,
        message="Non-finite values reached the optimizer step: " + "; ".join(parts) + "." + where,
        value=value_out,
        threshold=None,
        remedy=REMEDY,
    )


def detect_nonfinite(history: History, context: DetectorContext) -> list[Alert]:
    record = history.latest
    if record is None:
        return []
    alert = nonfinite_alert(record, context)
    return [alert] if alert is not None else []
