"""Which device a set of statistics is gathered on.

A model may span devices (an embedding kept on the CPU, the rest on a GPU). Statistics
from several devices are combined on one; that device must be an accelerator whenever
one takes part. A copy from the host to an accelerator with ``non_blocking=True`` is safe
to use at once (it is ordered on the accelerator's stream), but a copy from an
accelerator to the host with ``non_blocking=True`` lands in pinned memory later: a CPU
kernel reading it straight away reads memory the copy has not filled yet.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

#: The host, as a device (compared with ``==``: cheaper than reading ``device.type``).
CPU = torch.device("cpu")


def gather_device(devices: Iterable[torch.device]) -> torch.device:
    """The first non-CPU device of ``devices``, else the CPU (also when it is empty)."""
    for device in devices:
        if device.type != "cpu":
            return device
    return CPU


def on_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on the gathering ``device``, moved without the host waiting (safe, as
    that device is an accelerator whenever one takes part); itself when already there."""
    return tensor if tensor.device == device else tensor.to(device, non_blocking=True)


def host_values_on(
    values: list[int] | list[float], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A small host list as a tensor on ``device``, copied without stalling the host: on
    CUDA from pinned memory (a pageable host-to-device copy is staged through a bounce
    buffer and waits for it)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
