"""Composition with ``torch.amp.GradScaler``: measure and clip *unscaled* gradients.

The PyTorch AMP recipe for working with unscaled gradients is::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)          # once per step, after all gradients accumulated
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)              # skips optimizer.step() if unscale_ found inf/NaN
    scaler.update()

gradwatch runs the middle of it for the user. Two facts of ``torch/amp/grad_scaler.py``
shape the design:

1. ``scaler.step(optimizer)`` reads the inf/NaN flags recorded by ``unscale_`` and, when
   one is set, never calls ``optimizer.step()`` - so the optimizer's step pre-hook never
   fires and a pre-hook alone cannot see (or count) a skipped step.
2. ``unscale_`` may run once per optimizer per step: a second call raises, and the
   scaler tracks it in ``_per_optimizer_states[id(optimizer)]["stage"]``
   (``OptState.READY`` / ``UNSCALED`` / ``STEPPED``). Optimizers that handle scaling
   themselves (``fused=True``: ``_step_supports_amp_scaling``) unscale inside their kernel
   unless ``unscale_`` ran first, so gradients seen from their pre-hook would still be
   scaled.

So, when ``watch(..., scaler=...)`` is given, :class:`ScalerBridge` shadows the scaler
instance's ``step`` (restored by ``close()``) with a wrapper that, for the watched
optimizer: calls ``unscale_`` if (and only if) the stage is still ``READY`` (the user may
already have called it), runs the watcher's pre-step path (statistics, then clipping,
on unscaled gradients, before the scaler's inf check reads the flags), calls the real
``scaler.step``, and finally closes the step even when the scaler skipped
``optimizer.step()``. The inf flag itself is kept as a device tensor and copied to the
host with the step's statistics: no extra sync (``scaler.step`` itself syncs on it).
A plain ``optimizer.step()`` under a scaler is handled by the pre-hook the same way.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler, OptState


def validate_scaler(scaler: object) -> None:
    """Refuse anything but a ``torch.amp.GradScaler`` (``torch.cuda.amp`` ones included)."""
    if scaler is None or isinstance(scaler, GradScaler):
        return
    raise TypeError(
        f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__} "
        f"{scaler!r}. Pass the GradScaler you call scaler.scale(loss) and "
        "scaler.step(optimizer) with, e.g. scaler=torch.amp.GradScaler('cuda')."
    )


def scaler_state(scaler: GradScaler, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The scaler's per-optimizer state for this step, or None when there is none."""
    if not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
        return None  # disabled, or scale() never called: nothing to unscale
    states = getattr(scaler, "_per_optimizer_states", None)
    if states is None:
        return None
    return states[id(optimizer)]  # a defaultdict, exactly as GradScaler.unscale_ reads it


def scaler_found_inf(
    scaler: GradScaler, optimizer: torch.optim.Optimizer, device: torch.device
) -> Tensor | None:
    """Device scalar: > 0 when ``scaler.unscale_(optimizer)`` found inf/NaN this step;
    None when the scaler has not unscaled this optimizer's gradients (or is off)."""
    state = scaler_state(scaler, optimizer)
    if state is None or state["stage"] is OptState.READY:
        return None
    flags = list(state["found_inf_per_device"].values())
    if not flags:
        return None
    # non_blocking: flags may live on other devices; never wait for them here.
    return torch.stack([f.to(device, torch.float32, non_blocking=True) for f in flags]).sum()


class ScalerBridge:
    """Makes a watcher see every step of ``scaler.step(optimizer)``, unscaled."""

    def __init__(
        self,
        scaler: GradScaler,
        optimizer: torch.optim.Optimizer,
        before_step: Callable[[], None],
        after_step: Callable[[], None],
    ) -> None:
        self.scaler = scaler
        self._optimizer_ref = weakref.ref(optimizer)
        self._before_step = before_step
        self._after_step = after_step
        self.in_scaler_step = False

    def _state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        return scaler_state(self.scaler, optimizer)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """``scaler.unscale_(optimizer)`` unless it already ran for this step (never twice)."""
        state = self._state(optimizer)
        if state is not None and state["stage"] is OptState.READY:
            self.scaler.unscale_(optimizer)

    def found_inf(self, optimizer: torch.optim.Optimizer, device: torch.device) -> Tensor | None:
        """Device scalar: > 0 when ``unscale_`` found inf/NaN this step (None without AMP)."""
        return scaler_found_inf(self.scaler, optimizer, device)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Shadow ``scaler.step`` on the instance for the duration; restore it after."""
        scaler = self.scaler
        had_own = "step" in vars(scaler)
        previous = vars(scaler).get("step")
        original = scaler.step  # another watcher's wrapper when one scaler serves several
        bridge_ref = weakref.ref(self)
        active = [True]

        def step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            bridge = bridge_ref()
            if not active[0] or bridge is None or optimizer is not bridge._optimizer_ref():
                return original(optimizer, *args, **kwargs)
            return bridge._step(original, optimizer, *args, **kwargs)

        step._gradwatch_unwind = (active, had_own, previous)  # type: ignore[attr-defined]
        scaler.step = step  # type: ignore[method-assign]
        try:
            yield
        finally:
            active[0] = False  # if still chained under a later watcher's wrapper: pass through
            if vars(scaler).get("step") is step:
                _unwind(scaler, had_own, previous)

    def _step(
        self,
        original: Callable[..., Any],
        optimizer: torch.optim.Optimizer,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        state = self._state(optimizer)
        if state is None or state["stage"] is OptState.STEPPED or "closure" in kwargs:
            return original(optimizer, *args, **kwargs)  # let the scaler say what is wrong
        self.unscale(optimizer)
        self._before_step()
        self.in_scaler_step = True
        try:
            return original(optimizer, *args, **kwargs)
        finally:
            self.in_scaler_step = False
            self._after_step()


def _unwind(scaler: GradScaler, had_own: bool, previous: Any) -> None:
    """Restore ``scaler.step``, skipping wrappers of watchers already closed."""
    while had_own:
        unwind = getattr(previous, "_gradwatch_unwind", None)
        if unwind is None or unwind[0][0]:  # not ours, or a watcher still open: keep it
            scaler.step = previous  # type: ignore[method-assign]
            return
        _, had_own, previous = unwind
    with contextlib.suppress(AttributeError):
        del scaler.step
