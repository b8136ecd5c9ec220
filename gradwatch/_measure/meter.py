"""The measuring stage of a step: its statistics as named device pieces, and back.

:class:`StepMeter` turns the model's gradients, weights and the recorded loss into the
pieces of a step's vector (see ``step``), on the device and without a host sync;
:func:`read_record` turns the vector's host copy into the :class:`StepRecord` every later
stage reads, reading each segment by name.
"""

from __future__ import annotations

import numpy as np

from gradwatch._measure.localize import locate
from gradwatch._measure.record import StepRecord
from gradwatch._measure.step import PendingStep


def read_record(pending: PendingStep, host: np.ndarray) -> StepRecord:
    """The host record of ``pending`` from ``host``, a host copy of its step vector.

    Segments packed after ``host`` was copied (the update ratio and activations, when a
    host policy read the step before the update) read as absent.
    """
    vector = pending.vector
    grad_norm = _required(vector.read(host, "grad_norm")).astype(np.float64)
    grad_norm[~pending.has_grad] = np.nan  # "no gradient", never a zero gradient
    weight_norm = _required(vector.read(host, "weight_norm")).astype(np.float64)
    total = _required(vector.read(host, "total_grad_norm"))
    loss = _required(vector.read(host, "loss"))
    clip_coef = vector.read(host, "clip_coef")
    found_inf = vector.read(host, "amp_found_inf")
    ratio = vector.read(host, "update_ratio")
    if ratio is not None and pending.skipped:
        ratio = np.zeros_like(ratio)  # a skipped step changed nothing
    record = StepRecord(
        step=pending.step,
        grad_norm=grad_norm,
        weight_norm=weight_norm,
        has_grad=pending.has_grad,
        total_grad_norm=float(total[0]),
        loss=float(loss[0]) if pending.has_loss else None,
        update_ratio=None if ratio is None else ratio.astype(np.float64),
        clip_coef=None if clip_coef is None else float(clip_coef[0]),
        skipped=pending.skipped,
        amp_skipped=found_inf is not None and bool(found_inf[0] > 0),
    )
    sample = pending.activations
    activations = vector.read(host, "activations") if sample is not None else None
    if sample is not None and activations is not None:
        record.activations = sample.to_host(activations)
        record.activation_layers = sample.layers
        record.activation_roles = sample.roles
    if pending.trace is not None:
        record.nonfinite_origin = locate(pending.trace, record)
    return record


def _required(values: np.ndarray | None) -> np.ndarray:
    assert values is not None, "every step vector holds the norms and the loss"
    return values
