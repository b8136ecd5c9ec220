"""The starting point of every trial, taken before the check trains the user's model:
a deep copy of the model, the optimizer's recipe (its class, defaults and each group's
settings, with the group's parameters by position), and the random state.

Nothing here touches the user's model or optimizer after :meth:`Snapshot.take`: each
trial builds its own model (a deep copy of the copy) and its own optimizer
(``type(optimizer)(groups, **defaults)``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any

import torch
from torch import nn

from gradwatch._measure.optimizer import OptimizerFacts


class FixSetupError(ValueError):
    """``try_fixes=True`` cannot start: the model cannot be copied or the optimizer not
    rebuilt. The message names the argument and the fix."""


@dataclasses.dataclass
class Snapshot:
    """The model and optimizer as they were before training, ready to be rebuilt.

    Attributes:
        model: a deep copy of the user's model at its starting weights (never trained).
        optimizer_type: the user's optimizer's class.
        defaults: its ``defaults``.
        groups: per parameter group, its settings (all but ``params``) and the positions
            of its parameters in ``model.parameters()``.
        rng: the CPU random state and each CUDA device's, to replay dropout and shuffles.
        optimizer_facts: the user's optimizer as the diagnosis sees it (its name, whether
            it is adaptive, its first group's learning rate before training).
    """

    model: nn.Module
    optimizer_type: type[torch.optim.Optimizer]
    defaults: dict[str, Any]
    groups: list[tuple[dict[str, Any], list[int]]]
    rng: tuple[torch.Tensor, list[torch.Tensor]]
    optimizer_facts: OptimizerFacts | None = None

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
        """Copy ``model`` and read ``optimizer``'s recipe; refuse what cannot be rebuilt."""
        positions = {id(p): i for i, p in enumerate(model.parameters())}
        groups: list[tuple[dict[str, Any], list[int]]] = []
        for number, group in enumerate(optimizer.param_groups):
            params = group.get("params", [])
            missing = [p for p in params if id(p) not in positions]
            if missing:
                raise FixSetupError(
                    f"try_fixes=True rebuilds the optimizer on a copy of the model, but "
                    f"parameter group {number} of optimizer holds {len(missing)} tensor(s) "
                    "that are not parameters of model. Pass an optimizer over "
                    "model.parameters() only, or try_fixes=False."
                )
            settings = {
                key: _copy_setting(key, value)
                for key, value in group.items()
                if key not in ("params", "initial_lr")
            }
            groups.append((settings, [positions[id(p)] for p in params]))
        try:
            pristine = copy.deepcopy(model)
        except Exception as error:
            raise FixSetupError(
                f"try_fixes=True re-runs the check from a copy of the model's starting "
                f"weights, but copy.deepcopy(model) failed ({type(error).__name__}: {error}). "
                "Make the model deep-copyable (no open files, locks or generators held as "
                "attributes), or pass try_fixes=False."
            ) from error
        snapshot = cls(
            model=pristine,
            optimizer_type=type(optimizer),
            defaults=dict(optimizer.defaults),
            groups=groups,
            rng=(torch.get_rng_state(), _cuda_states()),
            optimizer_facts=OptimizerFacts.of(optimizer),
        )
        # Refuse an optimizer that cannot be rebuilt now, before training. Building one
        # over the pristine copy changes none of its weights; it is dropped at once.
        snapshot.optimizer_for(pristine)
        return snapshot

    def build(
        self, *, lr_factor: float | None = None, lr_value: float | None = None
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A fresh copy of the starting model and an optimizer of the same class and
        settings over it, its learning rates scaled by ``lr_factor`` or set to
        ``lr_value``."""
        model = copy.deepcopy(self.model)
        return model, self.optimizer_for(model, lr_factor=lr_factor, lr_value=lr_value)

    def optimizer_for(
        self,
        model: nn.Module,
        *,
        lr_factor: float | None = None,
        lr_value: float | None = None,
    ) -> torch.optim.Optimizer:
        """The user's optimizer rebuilt over ``model`` (a copy of the starting model)."""
        params = list(model.parameters())
        groups = []
        for settings, positions in self.groups:
            group = dict(settings)
            if "lr" in group and isinstance(group["lr"], (int, float)):
                if lr_value is not None:
                    group["lr"] = lr_value
                elif lr_factor is not None:
                    group["lr"] = group["lr"] * lr_factor
            group["params"] = [params[i] for i in positions]
            groups.append(group)
        try:
            optimizer = self.optimizer_type(groups, **_accepted(self.optimizer_type, self.defaults))
        except Exception as error:
            raise FixSetupError(
                f"try_fixes=True rebuilds the optimizer as "
                f"{self.optimizer_type.__name__}(param_groups, **optimizer.defaults), which "
                f"failed ({type(error).__name__}: {error}). Pass an optimizer whose class "
                "can be built from its parameter groups and defaults (every torch.optim "
                "optimizer can), or try_fixes=False."
            ) from error
        return optimizer

    def restore_rng(self) -> None:
        """Put the random state back to what it was before the original run."""
        cpu, cuda = self.rng
        torch.set_rng_state(cpu)
        for device, state in enumerate(cuda):
            torch.cuda.set_rng_state(state, device)

    def rng_devices(self) -> list[int]:
        return list(range(len(self.rng[1])))


def _accepted(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings ``cls.__init__`` takes as keywords: ``defaults`` may hold more (AdamW
    keeps ``decoupled_weight_decay`` there, which its constructor does not accept); each
    group keeps all of them anyway."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return settings
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return settings
    return {key: value for key, value in settings.items() if key in parameters}


def _copy_setting(key: str, value: Any) -> Any:
    """A group's setting, copied so later changes to the user's optimizer do not leak in."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _cuda_states() -> list[torch.Tensor]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return [torch.cuda.get_rng_state(device) for device in range(torch.cuda.device_count())]
