"""What the diagnosis needs to know about the optimizer: its kind and its learning rate.

Read on the host from the optimizer object and its ``param_groups`` (plain Python
numbers), never from a tensor, so it costs no device sync. A learning rate stored as a
tensor (``capturable``/``fused`` optimizers, ``torch.compile``'d schedules) is reported
as unknown rather than read back.
"""

from __future__ import annotations

import dataclasses

import torch

#: Optimizers that divide each parameter's step by a running estimate of its gradient's
#: scale: the update size then follows the learning rate, not the gradient's size.
_ADAPTIVE = (
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "SparseAdam",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adafactor",
    "LAMB",
    "Lion",
    "Lamb",
)


@dataclasses.dataclass(frozen=True)
class OptimizerFacts:
    """The optimizer as the diagnosis sees it.

    Attributes:
        name: its class name (``"AdamW"``, ``"SGD"``).
        adaptive: it normalises each step by the gradient's scale (Adam family, RMSprop,
            Adagrad, Adadelta): a small gradient is not a small update.
        lr: the first parameter group's learning rate when watching started.
    """

    name: str
    adaptive: bool
    lr: float | None

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer | None) -> OptimizerFacts | None:
        if optimizer is None:
            return None
        name = type(optimizer).__name__
        adaptive = any(name == known or name.startswith(known) for known in _ADAPTIVE)
        return cls(name=name, adaptive=adaptive, lr=current_lr(optimizer))


def current_lr(optimizer: torch.optim.Optimizer | None) -> float | None:
    """The first parameter group's learning rate as a Python float, or None.

    None when there is no optimizer, no ``lr`` entry, or the rate is a tensor (reading
    it would be a host sync on an accelerator).
    """
    if optimizer is None or not optimizer.param_groups:
        return None
    lr = optimizer.param_groups[0].get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return float(lr)
    return None
