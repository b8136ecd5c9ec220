"""Getting a step's statistics to the host without stalling the training thread.

On CUDA the statistics vector is copied into pinned host memory with
``non_blocking=True`` and a CUDA event marks its arrival; the host reads it once the
event has completed (normally by the next step), so the training thread never waits for
the GPU. On the CPU the tensor already lives in host memory and is read directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradwatch._measure.step import PendingStep


class HostCopy:
    """A statistics vector on its way to the host."""

    def __init__(self, pending: PendingStep, buffer: Tensor | np.ndarray, event: Any) -> None:
        self.pending = pending
        self._buffer = buffer
        self._event = event

    @classmethod
    def ready(cls, pending: PendingStep, host: np.ndarray) -> HostCopy:
        return cls(pending, host, None)

    def done(self) -> bool:
        """True once the copy has landed (``Event.query`` never blocks)."""
        return self._event is None or bool(self._event.query())

    def result(self) -> np.ndarray:
        """The host array; waits for the copy if it has not landed yet."""
        if self._event is not None:
            if not self._event.query():  # landed already (the usual case): no wait at all
                self._event.synchronize()  # only when a caller must block (alerts, close)
            self._event = None
        if isinstance(self._buffer, Tensor):
            self._buffer = self._buffer.numpy()
        return self._buffer


def to_host(pending: PendingStep, values: Tensor) -> HostCopy:
    """Start copying ``values`` to the host and return the handle to read it later."""
    values = values.detach()
    if values.device.type == "cpu":
        return HostCopy(pending, values, None)
    if values.device.type == "cuda":
        buffer = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        # non_blocking into pinned memory: the copy is queued on the stream, no sync.
        buffer.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return HostCopy(pending, buffer, event)
    # Other accelerators: a plain copy (may synchronise; no event API is assumed).
    return HostCopy(pending, values.to("cpu"), None)
