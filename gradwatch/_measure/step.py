"""One step's statistics while they are still on the device: the step vector and its layout.

Everything a step measured on the device reaches the host as ONE float32 vector, in one
host copy (``transfer``), so the training thread never waits for the device. This module
owns that vector's layout: producers hand over *named* pieces, :class:`StepVector` packs
them with one ``torch.cat`` and remembers where each landed, and readers ask for a piece
by name. Nothing else computes an offset.

A step packs its vector at most twice: once when it is measured (the statistics before
the update, and the policies' values), and once when it is sealed after the update (the
update ratio, activation statistics), then it is copied to the host once.

To add a segment: declare its name in :data:`SEGMENTS`, ``add`` a piece under that name
where it is measured, and read it by name where the host record is built (``meter``). A
segment a step did not measure is simply absent on that step; its reader gets None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from gradwatch._measure.activations import ActivationSample
from gradwatch._measure.localize import StepTrace
from gradwatch._measure.record import StepRecord

#: The named segments a step vector may hold, in packing order. Each is a 1-d float32
#: piece; "layers" means one value per layer of the :class:`~gradwatch._measure.layers.
#: LayerIndex`. A segment is present on a step only when its producer added it.
SEGMENTS: tuple[str, ...] = (
    "grad_norm",  # (layers,) L2 norm of each layer's gradient, before any clipping
    "weight_norm",  # (layers,) L2 norm of each layer's weights, before the update
    "total_grad_norm",  # (1,) global L2 norm of the gradient, before any clipping
    "loss",  # (1,) the recorded loss; NaN when none was recorded
    "clip_coef",  # (1,) the clipper's coefficient (policy; only with clipping on)
    "amp_found_inf",  # (1,) > 0 when the GradScaler found inf/NaN (policy; under AMP)
    "update_ratio",  # (layers,) ||dw|| / ||w||, after the update (update_ratio_every)
    "activations",  # (n,) sampled steps: ActivationSample.values, see its layouts
    "attention_logit_max",  # (attention modules,) sampled steps: largest q·k/√d
    "attention_entropy",  # (attention modules,) sampled steps: entropy / ln(keys)
    "output_logits",  # (3,) sampled steps: log-sum-exp mean and max, largest |logit|
    "recurrent_first",  # (recurrent modules,) sampled: input gradient at the first step
    "recurrent_last",  # (recurrent modules,) sampled: input gradient at the last step
)
_DECLARED = frozenset(SEGMENTS)


class StepVector:
    """A step's device vector, packed from named pieces, and where each piece lies in it.

    :meth:`add` stages pieces (no kernel); :meth:`pack` concatenates every staged piece
    onto what is already packed, in :data:`SEGMENTS` order, with one ``torch.cat``. Spans
    are known from the pieces' shapes, i.e. on the host: nothing here reads the device.
    """

    __slots__ = ("_device", "_host", "_spans", "_staged", "values")

    def __init__(self, device: torch.device) -> None:
        self._device = device
        #: The packed vector (None until the first :meth:`pack`).
        self.values: Tensor | None = None
        self._spans: dict[str, slice] = {}
        self._staged: dict[str, Tensor] = {}
        self._host: np.ndarray | None = None

    def add(self, pieces: Mapping[str, Tensor]) -> None:
        """Stage named 1-d pieces for the next :meth:`pack` (nothing runs on the device)."""
        for name, piece in pieces.items():
            if name not in _DECLARED:
                raise KeyError(f"{name!r} is not a step vector segment; declare it in SEGMENTS")
            if name in self._spans or name in self._staged:
                raise ValueError(f"step vector segment {name!r} was already added")
            self._staged[name] = piece

    def pack(self) -> None:
        """Append the staged pieces to the device vector: one ``torch.cat``, if any."""
        staged = self._staged
        if not staged:
            return
        self._staged = {}
        parts = [] if self.values is None else [self.values]
        start = 0 if self.values is None else int(self.values.shape[0])  # a shape: no sync
        for name in SEGMENTS:  # the declared order, whatever order the pieces came in
            piece = staged.get(name)
            if piece is None:
                continue
            if piece.device != self._device or piece.dtype != torch.float32:
                # non_blocking: a piece may come from another device; never wait here.
                piece = piece.to(self._device, torch.float32, non_blocking=True)
            parts.append(piece)
            stop = start + int(piece.shape[0])
            self._spans[name] = slice(start, stop)
            start = stop
        self.values = torch.cat(parts)
        self._host = None  # a host copy made before no longer holds the whole vector

    def get(self, name: str) -> Tensor | None:
        """The device values of segment ``name`` (packed or staged), or None if absent."""
        span = self._spans.get(name)
        if span is not None:
            assert self.values is not None
            return self.values[span]
        return self._staged.get(name)

    def read(self, host: np.ndarray, name: str) -> np.ndarray | None:
        """Segment ``name`` of ``host``, a host copy of this vector; None when the step
        has no such segment, or ``host`` was copied before it was packed."""
        span = self._spans.get(name)
        if span is None or span.stop > host.shape[0]:
            return None
        return host[span]

    @property
    def host(self) -> np.ndarray | None:
        """The host copy made by :meth:`copy_to_host_now`, while it is still whole."""
        return self._host

    def copy_to_host_now(self) -> np.ndarray:
        """The packed vector on the host, now: a deliberate host sync (host policies)."""
        self.pack()
        assert self.values is not None
        self._host = self.values.cpu().numpy()
        return self._host


class SampledStatistics(Protocol):
    """Statistics a probe took on a sampled step: named pieces for the step vector, and
    how to write them, once on the host, into the record (see ``structure``)."""

    def pieces(self) -> dict[str, Tensor]: ...

    def fill(self, record: StepRecord, vector: StepVector, host: np.ndarray) -> None: ...


@dataclasses.dataclass
class PendingStep:
    """One step between its measurement and its host copy.

    ``total_norm`` is the total gradient norm as a device scalar (before any clipping),
    for the policies; ``weights_before`` the snapshot an update ratio is measured against
    (update-ratio steps only); ``skipped`` marks a step a policy dropped; ``activations``
    and ``trace`` are the step's activation sample and non-finite checks, when taken.
    """

    step: int
    vector: StepVector
    has_grad: np.ndarray
    has_loss: bool
    total_norm: Tensor
    weights_before: list[Tensor] | None = None
    skipped: bool = False
    activations: ActivationSample | None = None
    trace: StepTrace | None = None
    #: The structure probes' sample (attention, output logits, recurrence), when taken.
    structure: SampledStatistics | None = None
    #: Host facts of the step: the optimizer's learning rate, the loss's chance level.
    lr: float | None = None
    chance_loss: float | None = None
    #: Whether this step read the weights (else its weight norms are the latest measured).
    weights_measured: bool = True
