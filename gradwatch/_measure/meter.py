"""The measuring stage of a step: its statistics as named device pieces, and back.

:class:`StepMeter` turns the model's gradients, weights and the recorded loss into the
pieces of a step's vector (see ``step``), on the device and without a host sync, and
after the update adds the update ratio and starts the vector's host copy;
:func:`read_record` turns that host copy into the :class:`StepRecord` every later stage
reads, reading each segment by name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.localize import locate
from gradwatch._measure.record import StepRecord
from gradwatch._measure.stats import NormReducer
from gradwatch._measure.step import PendingStep, StepVector
from gradwatch._measure.transfer import HostCopy, to_host


class StepMeter:
    """Measures each step of one watched model through its :class:`NormReducer`.

    Gradients are read every step. Weights change slowly (a healthy update moves them
    by ~1e-3 of their norm per step), so they are read once every ``weight_norm_every``
    steps, and on every update-ratio step, which needs them anyway; between those steps
    a record carries the latest measured weight norms (``StepRecord.weight_norm_measured``
    says which steps measured them). Reading every weight costs as much memory traffic
    as reading every gradient, so this halves the per-step cost of the norms.

    ``update_ratio_every``: every how many steps the update ratio ||dw|| / ||w|| is
    measured (0: never); it costs a copy of the weights from before the update.
    """

    def __init__(
        self,
        index: LayerIndex,
        device: torch.device,
        reducer: NormReducer,
        *,
        update_ratio_every: int,
        weight_norm_every: int = 1,
    ) -> None:
        self.index = index
        self.device = device
        self.reducer = reducer
        self.update_ratio_every = update_ratio_every
        self.weight_norm_every = weight_norm_every
        #: The latest measured weight norms (device), carried by steps that read none.
        self._weight_norm: Tensor | None = None

    def reads_weights(self, step: int) -> bool:
        """Whether ``step`` measures the weight norms (a host decision on the step number)."""
        ratio_every = self.update_ratio_every
        return (
            self._weight_norm is None
            or step % self.weight_norm_every == 0
            or bool(ratio_every and step % ratio_every == 0)
        )

    def measure(self, step: int, loss: Tensor | float | None) -> PendingStep:
        """Stage the step's norms and loss (before the update, before any clipping)."""
        params = self.index.params
        grads = [p.grad for p in params]
        has_grad = np.zeros(self.index.num_layers, dtype=bool)
        for grad, layer in zip(grads, self.index.param_layer):
            if grad is not None:  # a host-side attribute check, not a tensor read
                has_grad[layer] = True
        reads_weights = self.reads_weights(step)
        grad_sq, weight_sq, loss_value = self.reducer.reduce_step(
            grads, params if reads_weights else None, self._loss_on_device(loss), loss is not None
        )
        if weight_sq is not None:
            self._weight_norm = weight_sq.sqrt()
        assert self._weight_norm is not None, "the first measured step reads the weights"
        total = grad_sq.sum().sqrt()
        vector = StepVector(self.device)
        vector.add(
            {
                "grad_norm": grad_sq.sqrt(),
                "weight_norm": self._weight_norm,
                "total_grad_norm": total.reshape(1),
                "loss": loss_value,
            }
        )
        pending = PendingStep(step, vector, has_grad, loss is not None, total)
        pending.weights_measured = weight_sq is not None
        return pending

    def _loss_on_device(self, loss: Tensor | float | None) -> Tensor:
        """The loss as a float32 ``(1,)`` tensor on the device; NaN when none was recorded."""
        if loss is None or isinstance(loss, float):
            # A fill kernel with a host scalar argument: no host→device copy, no sync.
            value = float("nan") if loss is None else loss
            return torch.full((1,), value, device=self.device)
        # non_blocking: the loss may live on another device; never wait for it here.
        return loss.reshape(1).to(self.device, torch.float32, non_blocking=True)

    def before_update(self, pending: PendingStep) -> None:
        """Copy the weights when this step measures an update ratio (and is not skipped)."""
        every = self.update_ratio_every
        if every and pending.step % every == 0 and not pending.skipped:
            pending.weights_before = self.reducer.snapshot(self.index.params)

    def seal(self, pending: PendingStep) -> HostCopy:
        """After the update: add the update ratio and activations, then start the host copy."""
        vector = pending.vector
        if pending.weights_before is not None:
            update_sq = self.reducer.update_squared(pending.weights_before)
            pending.weights_before = None
            weight_norm = vector.get("weight_norm")
            assert weight_norm is not None
            tiny = torch.finfo(torch.float32).tiny
            vector.add({"update_ratio": update_sq.sqrt() / weight_norm.clamp_min(tiny)})
        if pending.activations is not None:
            vector.add({"activations": pending.activations.values})
        if pending.structure is not None:
            vector.add(pending.structure.pieces())
        vector.pack()  # one cat for what was measured after the update, if anything
        if vector.host is not None:  # read before the update, and nothing added since
            return HostCopy.ready(pending, vector.host)
        assert vector.values is not None
        return to_host(pending, vector.values)


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
        weight_norm_measured=pending.weights_measured,
        update_ratio=None if ratio is None else ratio.astype(np.float64),
        clip_coef=None if clip_coef is None else float(clip_coef[0]),
        skipped=pending.skipped,
        amp_skipped=found_inf is not None and bool(found_inf[0] > 0),
        lr=pending.lr,
        chance_loss=pending.chance_loss,
    )
    sample = pending.activations
    activations = vector.read(host, "activations") if sample is not None else None
    if sample is not None and activations is not None:
        record.activations = sample.to_host(activations)
        record.activation_layers = sample.layers
        record.activation_roles = sample.roles
    if pending.structure is not None:
        pending.structure.fill(record, vector, host)
    if pending.trace is not None:
        record.nonfinite_origin = locate(pending.trace, record)
    return record


def _required(values: np.ndarray | None) -> np.ndarray:
    assert values is not None, "every step vector holds the norms and the loss"
    return values
