"""Vanishing and exploding gradients *through time* in recurrent layers, sampled.

A recurrent layer applies the same weights at every time step, so the gradient reaching
time step t from a loss at the end of the sequence is a product of T - t Jacobians: it
shrinks geometrically when their gain is below 1 (the network cannot learn long-range
dependencies) and grows geometrically above 1 (Bengio et al. 1994; Pascanu et al. 2013).
Per-layer weight-gradient norms cannot show this: the sum over time steps hides which
steps contributed. The gradient with respect to the layer's *input sequence* shows it
directly: its norm at the first time step against its norm at the last.

On a sampled step, a forward pre-hook on every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``
(any ``nn.RNNBase``) makes that gradient observable:

* an input that already requires grad gets a tensor hook;
* an input that does not (the layer reads data directly) is replaced by an alias of it
  that requires grad: the same values and storage, no copy, so the forward computes
  exactly what it did; the backward now also computes the input's gradient, which the
  weights' gradients do not depend on (they stay bit-identical).

The tensor hook fires during ``backward()``, before ``optimizer.step()``, and records
the norm over batch and features of the gradient at the first and at the last time step
(``batch_first`` respected; float32, on the device, no host sync). Packed sequences
(``PackedSequence``) have no time axis to index and are skipped. A layer called several
times in a step reports the mean over its calls whose backward ran.

Only training forwards count (gradients enabled, module in training mode) unless
``include_eval=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradwatch._measure.hooks import CopyInertHook, SafeHook, being_traced
from gradwatch._measure.model import ModelMap

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RecurrentSample:
    """One sampled step's gradients through time, per recurrent module.

    Attributes:
        modules: names of the recurrent modules that ran, in execution order.
        steps: sequence length T per module (its last call's), known at forward time.
        first: float32 device tensor, per module, the norm of the gradient with respect
            to the input at the first time step; NaN when no backward reached it.
        last: the same at the last time step.
    """

    modules: tuple[str, ...]
    steps: tuple[int, ...]
    first: Tensor
    last: Tensor


@dataclasses.dataclass
class _Seen:
    """One module's calls in this step."""

    steps: int
    calls: int = 0  # backward hooks that fired
    first: Tensor | None = None
    last: Tensor | None = None


class RecurrentProbe:
    """Forward pre-hooks on recurrent layers for one sampled step, and what they measured.

    ``model`` may be a module or an already built
    :class:`~gradwatch._measure.model.ModelMap`; the probe holds the modules weakly.
    """

    def __init__(self, model: nn.Module | ModelMap, *, include_eval: bool = False) -> None:
        self.include_eval = include_eval
        self._modules: list[tuple[str, weakref.ref[nn.Module]]] = [
            (info.name, info.ref)
            for info in ModelMap.of(model).modules
            if isinstance(info.module, nn.RNNBase)
        ]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._grad_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._seen: dict[str, _Seen] = {}
        self._warned = False

    @property
    def targets(self) -> tuple[str, ...]:
        """Names of the recurrent modules, in ``named_modules()`` order."""
        return tuple(name for name, _ in self._modules)

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Install the forward pre-hooks (idempotent)."""
        if self._handles:
            return
        self._seen = {}
        for name, ref in self._modules:
            module = ref()
            if module is not None:
                hook = _PreHook(weakref.ref(self), name)
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def disarm(self) -> None:
        """Remove every hook (idempotent); what they measured is kept until collected."""
        handles, self._handles = self._handles, []
        grad_handles, self._grad_handles = self._grad_handles, []
        for handle in (*handles, *grad_handles):
            handle.remove()

    def collect(self) -> RecurrentSample | None:
        """Remove the hooks and return what they measured (None if no recurrent layer ran).

        Call it after ``backward()``: a module whose backward has not run reports NaN.
        """
        self.disarm()
        seen, self._seen = self._seen, {}
        if not seen:
            return None
        device = next((s.first.device for s in seen.values() if s.first is not None), None)
        nan = torch.full((), float("nan"), device=device)
        firsts, lasts = [], []
        for entry in seen.values():
            if entry.first is None or entry.last is None:
                firsts.append(nan)
                lasts.append(nan)
                continue
            # non_blocking: layers may live on other devices than the first one.
            firsts.append((entry.first / entry.calls).to(nan.device, non_blocking=True))
            lasts.append((entry.last / entry.calls).to(nan.device, non_blocking=True))
        return RecurrentSample(
            modules=tuple(seen),
            steps=tuple(entry.steps for entry in seen.values()),
            first=torch.stack(firsts),
            last=torch.stack(lasts),
        )

    # ----------------------------------------------------------------- the hooks
    def _before(
        self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Hook the input sequence; returns new ``(args, kwargs)`` when it was replaced."""
        if not torch.is_grad_enabled():
            return None  # no backward will run
        if not self.include_eval and not module.training:
            return None
        positional = bool(args)
        sequence = args[0] if positional else kwargs.get("input")
        if isinstance(sequence, PackedSequence):
            logger.debug("gradwatch: %r got a PackedSequence: no gradient through time", name)
            return None
        if not isinstance(sequence, Tensor) or not sequence.is_floating_point():
            return None
        if sequence.dim() not in (2, 3) or sequence.numel() == 0:
            return None  # (T, features) unbatched, or (T, B, F) / (B, T, F)
        batch_first = bool(getattr(module, "batch_first", False))
        time_dim = 1 if batch_first and sequence.dim() == 3 else 0
        replaced = not sequence.requires_grad
        if replaced:
            # An alias that requires grad: same storage and values, so the forward is
            # unchanged; a leaf of its own, so nothing upstream gains a gradient.
            sequence = sequence.detach().requires_grad_()
        hook = SafeHook(self, "_on_grad", name, time_dim, on_error="_drop_grad")
        self._grad_handles.append(sequence.register_hook(hook))
        entry = self._seen.get(name)
        if entry is None:
            self._seen[name] = _Seen(steps=int(sequence.shape[time_dim]))
        else:
            entry.steps = int(sequence.shape[time_dim])
        if not replaced:
            return None
        if positional:
            return (sequence, *args[1:]), kwargs
        return args, {**kwargs, "input": sequence}

    def _on_grad(self, name: str, time_dim: int, grad: Tensor) -> None:
        """During backward: the input gradient's norm at the first and last time step."""
        entry = self._seen.get(name)
        if entry is None:
            return  # collected already: a backward after the step
        with torch.no_grad():
            g = grad.detach()
            first = torch.linalg.vector_norm(g.select(time_dim, 0), dtype=torch.float32)
            last = torch.linalg.vector_norm(g.select(time_dim, -1), dtype=torch.float32)
        if entry.first is None or entry.last is None or entry.first.device != first.device:
            entry.first, entry.last, entry.calls = first, last, 1
        else:
            entry.first, entry.last = entry.first + first, entry.last + last
            entry.calls += 1

    def _drop_grad(self, name: str, time_dim: int) -> None:
        """A gradient hook failed: forget the module's half-measured gradients."""
        entry = self._seen.get(name)
        if entry is not None:
            entry.first = entry.last = None
            entry.calls = 0

    def _failed(self, name: str, error: Exception) -> None:
        """A pre-hook failed: nothing was changed; say so once per probe."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(level, "gradwatch: gradient-through-time probe failed on %r: %r", name, error)


class _PreHook(CopyInertHook):
    """The forward pre-hook of one recurrent module; holds the probe weakly.

    Not a :class:`~gradwatch._measure.hooks.SafeHook`: it must be able to return the
    replaced input.
    """

    __slots__ = ("name", "probe")

    def __init__(self, probe: weakref.ref[RecurrentProbe], name: str) -> None:
        self.probe = probe
        self.name = name

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if being_traced():
            return None  # compiled code is not sampled (see gradwatch._measure.compile)
        probe = self.probe()
        if probe is None:
            return None
        try:
            return probe._before(self.name, module, args, kwargs)
        except Exception as error:  # the forward goes on with its own input, unchanged
            probe._failed(self.name, error)
            return None
