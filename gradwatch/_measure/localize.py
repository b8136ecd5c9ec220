"""NaN/inf localisation: which module *produced* the first non-finite value of a step.

With ``watch(..., locate_nonfinite=True)`` every module gets a forward pre-hook (its
inputs), a forward hook (its outputs) and, on those tensors, gradient hooks (the gradient
w.r.t. its outputs and w.r.t. its inputs). Each hook reduces each tensor to its min and
max with one ``torch.aminmax`` kernel (NaN propagates through both; an inf shows in one)
and appends the two device scalars to a list, with a host-side event naming the module.
A tensor is checked once per step while unchanged (same tensor object, same version
counter: an in-place change means checking again), whatever roles it plays: a module's
input is usually the previous module's output, and one gradient tensor often reaches
several checked tensors (an addition hands its gradient unchanged to both operands).
Nothing is read back: the list is stacked into one device vector when the step is
measured, and only read (one small copy) when that step's statistics show a non-finite
loss, gradient or weight.

The producer is then the first module, in execution order, that turned finite values
into non-finite ones:

* forward: the first module whose output is non-finite while its inputs were finite; if
  a module's *inputs* are the first non-finite values seen, they came from outside any
  submodule: the batch itself (at the root module) or functional code (``torch.log``,
  a division) in the enclosing module's ``forward``;
* masks: a call that made nothing non-finite itself (it absorbed what it took, as a
  softmax turns an additive ``-inf`` attention mask into zeros, or passed it along
  unchanged) is passed over. A value holding only ``-inf`` is a mask or log(0): riding
  along with the data (not a call's first input) or carried on by a module, it reads as
  a mask and counts as finite; made by a module from finite inputs, that module stays
  named (log(0) must never hide); as a call's first input, it is a fault. The alert
  gives the other reading too (see :func:`_forward_origin`);
* backward (only when the whole forward was finite): the first module whose gradient
  w.r.t. its inputs is non-finite although the gradient w.r.t. its outputs was finite;
  if the first non-finite gradient arrives at the model's output, the loss produced it.

This costs a few small kernels per module call instead of ``detect_anomaly``'s check of
every autograd node plus a Python traceback per forward op (see
``benchmarks/bench_localize.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from gradwatch._measure.devices import gather_device, host_values_on
from gradwatch._measure.hooks import CopyInertHook, _is_compiling, _is_tracing, log_failure
from gradwatch._measure.model import CONTAINER, ModelMap
from gradwatch._measure.record import NonfiniteOrigin, StepRecord
from gradwatch._names import sentence_name

logger = logging.getLogger(__name__)

#: At most this many tensors are checked per step (the first ones are the ones that
#: matter: a producer is the *first* module to go non-finite). Bounds memory if steps
#: are never taken.
MAX_CHECKS_PER_STEP = 200_000


class _Kind(enum.IntEnum):
    IN = 0  # inputs of a forward call
    OUT = 1  # outputs of a forward call
    GOUT = 2  # gradient w.r.t. the outputs of a call
    GIN = 3  # gradient w.r.t. the inputs of a call


# Plain tuples, not dataclasses: thousands are made per step on the hot path, and a
# frozen dataclass costs three times as much to build.
class _Event(NamedTuple):
    kind: _Kind
    call: int  # index of the forward call the event belongs to
    slots: tuple[int, ...]  # slots of the checked values (2 per tensor: min and max)


class _Call(NamedTuple):
    name: str  # qualified module name
    type_name: str
    parent: int | None  # the enclosing call (None for an outermost call)
    depth: int = 0  # how many calls enclose it
    # Whether its first tensor input is a float one: in ``model(ids, attn_mask=mask)``
    # the data are the integer ids, and the float mask only rides along with them.
    float_first: bool = True


@dataclasses.dataclass
class StepTrace:
    """One step's checks: host-side events and the device vector of min/max values."""

    calls: list[_Call]
    events: list[_Event]
    values: Tensor | None


# ----------------------------------------------------------------------- hooks
# Three small hook classes instead of SafeHook: they run per module call and per
# checked tensor, so each is one guarded call into the locator with nothing else to
# build (no argument tuples, no weak reference to the locator per hook). They keep
# SafeHook's guarantees: copies and pickles become inert (CopyInertHook), the locator
# is held weakly, they do nothing while traced, and a failure is logged (as SafeHook
# logs it) and swallowed, never breaking the user's forward or backward.
class _BeforeCall(CopyInertHook):
    """Forward pre-hook of one module: records the call and checks its inputs."""

    __slots__ = ("after_id", "name", "owner", "type_name")

    def __init__(
        self, owner: weakref.ref[NonfiniteLocator], name: str, type_name: str, after_id: int
    ) -> None:
        self.owner = owner
        self.name = name
        self.type_name = type_name
        self.after_id = after_id  # the handle id of the module's _AfterCall

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if _is_compiling() or _is_tracing():  # inert while traced (see SafeHook)
            return
        owner = self.owner()
        if owner is not None:
            try:
                owner._before(self, module, args, kwargs)
            except Exception:
                log_failure(owner, "_before")


class _AfterCall(CopyInertHook):
    """Forward hook (the same object on every module): checks the call's outputs."""

    __slots__ = ("owner",)

    def __init__(self, owner: weakref.ref[NonfiniteLocator]) -> None:
        self.owner = owner

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if _is_compiling() or _is_tracing():
            return
        owner = self.owner()
        if owner is not None:
            try:
                owner._after(output)
            except Exception:
                log_failure(owner, "_after")


class _Checked(CopyInertHook):
    """A tensor checked this step (weakly held) and its slots; once it requires a
    gradient, also the hook on it that checks that gradient for every (kind, call) role
    the tensor played, in the step (``generation``) the hook was added in."""

    __slots__ = ("generation", "owner", "ref", "roles", "slots", "version")

    def __init__(
        self,
        owner: weakref.ref[NonfiniteLocator],
        tensor: Tensor,
        version: int,
        slots: tuple[int, int],
        generation: int,
    ) -> None:
        self.owner = owner
        self.ref = weakref.ref(tensor)
        self.version = version  # an in-place change after the check means checking again
        self.slots = slots
        self.generation = generation
        self.roles: list[tuple[_Kind, int]] | None = None  # set once the hook is on

    def __call__(self, grad: Tensor | None) -> None:
        if _is_compiling() or _is_tracing():
            return
        owner = self.owner()
        if owner is not None:
            try:
                owner._grad(self, grad)
            except Exception:
                log_failure(owner, "_grad")


class NonfiniteLocator:
    """Owns the localisation hooks of one model; hand its handles to the watcher's stack."""

    def __init__(self, model: nn.Module | ModelMap) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self._calls: list[_Call] = []
        self._events: list[_Event] = []
        self._values: list[Tensor] = []
        self._stack: list[int | None] = []  # open calls (None: not recorded)
        self._seen: dict[int, _Checked] = {}  # tensors checked this step, by id
        # Gradients checked this step, by id: (weakly held gradient, its version, slots).
        self._grads: dict[int, tuple[weakref.ref[Tensor], int, tuple[int, int]]] = {}
        self._generation = 0  # bumped by take(): gradient hooks of an older step are ignored
        # True from the first gradient of a backward pass to its end: forward calls then
        # are activation-checkpoint recomputations of calls already recorded.
        self._in_backward = False
        self._ref = weakref.ref(self)  # shared by every hook: they hold the locator weakly
        after = _AfterCall(self._ref)  # the same for every module
        for info in ModelMap.of(model).modules:
            module = info.module
            if module is None or info.has(CONTAINER):
                continue  # a container only chains its children: they see the same tensors
            # Hooks are inert while traced (torch.compile, jit.trace): not a real call.
            after_handle = module.register_forward_hook(after, always_call=True)
            before = _BeforeCall(self._ref, info.name, info.type_name, after_handle.id)
            self.handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            self.handles.append(after_handle)

    def remove(self) -> None:
        handles, self.handles = self.handles, []
        for handle in handles:
            handle.remove()

    # ----------------------------------------------------------------- recording
    def _slots(self, tensor: Tensor) -> tuple[int, int]:
        """Queue the min/max of ``tensor`` on its device; returns its two slots."""
        if tensor.requires_grad:
            tensor = tensor.detach()  # the check must not join the autograd graph
        if tensor.is_complex():
            tensor = torch.view_as_real(tensor.resolve_conj())  # it refuses a conj view
        # One reduction kernel, no host read: NaN propagates into min and max, an inf
        # shows in one. Not a sum: finite values can overflow it (a Hugging Face
        # attention mask is filled with finfo(dtype).min), and a mask passed to every
        # layer would then be blamed for the step's NaN. (Tried on the CPU: a sum read
        # back at once, with aminmax only where it is not finite. Twice as fast on a hot
        # tensor alone, it was no faster within a training step.)
        low, high = torch.aminmax(tensor)
        values = self._values
        first = len(values)
        values.append(low)
        values.append(high)
        return first, first + 1

    def _forward(self, kind: _Kind, call: int, tensors: list[Tensor]) -> None:
        """Check forward tensors once each (a module's input is usually the previous
        module's output: the same tensor, checked once) and hook their gradients."""
        if len(self._values) >= MAX_CHECKS_PER_STEP:
            return
        seen = self._seen
        grad_kind = _Kind.GIN if kind is _Kind.IN else _Kind.GOUT
        slots: tuple[int, ...] = ()
        for tensor in tensors:
            checked = seen.get(id(tensor))
            version = tensor._version
            if checked is None or checked.version != version or checked.ref() is not tensor:
                checked = _Checked(
                    self._ref, tensor, version, self._slots(tensor), self._generation
                )
                seen[id(tensor)] = checked
            slots += checked.slots
            if tensor.requires_grad:
                if checked.roles is None:
                    checked.roles = []
                    tensor.register_hook(checked)
                checked.roles.append((grad_kind, call))
        self._events.append(_Event(kind, call, slots))

    def _grad(self, checked: _Checked, grad: Tensor | None) -> None:
        if grad is None or checked.generation != self._generation or not grad.numel():
            return  # nothing to check, or a gradient of an older step
        if not self._in_backward:
            # Runs when this backward pass (or autograd.grad call) is over; the flag is
            # set only once that is certain, so a failure cannot leave it stuck.
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
            self._in_backward = True
        if len(self._values) >= MAX_CHECKS_PER_STEP or not checked.roles:
            return
        # One gradient often reaches several checked tensors as the same tensor object
        # (an addition hands its gradient unchanged to both operands: a residual block's
        # output and its branch); unchanged since (same version), it is checked once.
        known = self._grads.get(id(grad))
        if known is not None and known[0]() is grad and known[1] == grad._version:
            slots = known[2]
        else:
            slots = self._slots(grad)
            self._grads[id(grad)] = (weakref.ref(grad), grad._version, slots)
        events = self._events
        roles = checked.roles
        if len(roles) == 1:  # the common case: nothing to order
            events.append(_Event(roles[0][0], roles[0][1], slots))
            return
        # A tensor that a call returns as it was given (nn.Identity, a block passing its
        # mask along) is both that call's output and its input: the gradient reaches the
        # call's output before the call passes it on, so its GOUT roles come first.
        # A tensor given to a module and, unchanged, to its child (GPT-2's GPT2MLP hands
        # its input to mlp.c_fc) has one gradient for both input roles: the innermost
        # call's comes first, as the child's backward is where the gradient was made.
        calls = self._calls
        for kind, call in sorted(
            roles, key=lambda role: (role[0] != _Kind.GOUT, -calls[role[1]].depth)
        ):
            events.append(_Event(kind, call, slots))

    def _backward_done(self) -> None:
        self._in_backward = False

    def _before(self, hook: _BeforeCall, module: nn.Module, args: Any, kwargs: Any) -> None:
        hooks = module._forward_hooks  # an OrderedDict: the order hooks run in
        after_id = hook.after_id
        if (
            isinstance(hooks, collections.OrderedDict)
            and next(reversed(hooks), after_id) != after_id
            and after_id in hooks
        ):
            # A forward hook registered after watch() (the user's, another tool's) may
            # change the output: the output check runs after every other hook, so that
            # a NaN such a hook makes is named at its module, not at the next one.
            hooks.move_to_end(after_id)
        stack = self._stack
        if self._in_backward or not torch.is_grad_enabled():
            # Evaluation forwards, a submodule called under no_grad inside a training
            # forward, and activation-checkpoint recomputations during backward are not
            # new calls of the step; the marker keeps _after from popping (and recording
            # the output of) the enclosing call instead.
            stack.append(None)
            return
        calls = self._calls
        call = len(calls)
        parent = stack[-1] if stack else None
        depth = 0 if parent is None else calls[parent].depth + 1
        tensors, float_first = _inputs(args, kwargs)
        calls.append(_Call(hook.name, hook.type_name, parent, depth, float_first))
        stack.append(call)
        if tensors:
            self._forward(_Kind.IN, call, tensors)

    def _after(self, output: Any) -> None:
        stack = self._stack
        if not stack:
            return
        call = stack.pop()
        if call is None:
            return
        if type(output) is Tensor:  # the common case, without building a list of leaves
            if _is_float(output) and output.numel():
                self._forward(_Kind.OUT, call, [output])
            return
        tensors = _float_tensors(output)
        if tensors:
            self._forward(_Kind.OUT, call, tensors)

    # ----------------------------------------------------------------- per step
    def take(self) -> StepTrace | None:
        """Hand over this step's checks (stacked into one device vector) and start afresh."""
        calls, events, values = self._calls, self._events, self._values
        self._calls, self._events, self._values, self._stack = [], [], [], []
        self._in_backward = False
        self._seen, self._grads = {}, {}
        self._generation += 1
        if not events:
            return None
        return StepTrace(calls, events, _stack_float32(values))


def _stack_float32(values: list[Tensor]) -> Tensor:
    """The step's checked values as one float32 vector, without a host stall.

    It lives on an accelerator if any value does (in a model with some submodules on the
    CPU), so nothing is copied device→host per step. Finite float64 values beyond
    float32's range are clipped to it: only whether a value is finite (and whether a min
    is -inf) is read, and converting them would make them inf.
    """
    devices = {value.device for value in values}
    if len(devices) == 1:
        # The common case, one device: stack promotes mixed dtypes to one that holds
        # them all exactly (float64 if any is), which _to_float32 then clips.
        return _to_float32(torch.stack(values))
    device = gather_device(devices)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for slot, value in enumerate(values):
        groups.setdefault((value.device, value.dtype), []).append(slot)
    stacked = torch.empty(len(values), dtype=torch.float32, device=device)
    for (group_device, _), slots in groups.items():
        part = _to_float32(torch.stack([values[s] for s in slots]))
        if group_device != device:
            part = part.to(device, non_blocking=True)  # host→device: no host stall
        index = host_values_on(slots, torch.long, device)
        stacked.index_copy_(0, index, part)
    return stacked


def _to_float32(values: Tensor) -> Tensor:
    if values.dtype == torch.float64:
        limit = torch.finfo(torch.float32).max
        values = torch.where(values.isfinite(), values.clamp(-limit, limit), values)
    return values.float()


def resolve(trace: StepTrace) -> NonfiniteOrigin | None:
    """Name the producer of the step's first non-finite value (reads the flags: a copy).

    Called only for a step whose statistics already showed a non-finite value, so the
    values have been computed by then and the copy does not wait on new work.
    """
    if trace.values is None:
        return None
    search = _ForwardSearch(trace, trace.values.detach().cpu().numpy())
    forward = _forward_origin(search)
    if forward is not None:
        return forward

    def bad(event: _Event) -> bool:  # gradients are never masks: no as_mask here
        return bool(search.nonfinite[list(event.slots)].any())

    calls = trace.calls
    # Backward (the forward was finite): the first call whose gradient w.r.t. its inputs
    # is non-finite while the gradient w.r.t. its outputs was finite.
    output_grad_bad: set[int] = set()
    first_bad_gout: _Event | None = None
    for event in trace.events:
        if event.kind == _Kind.GOUT and bad(event):
            output_grad_bad.add(event.call)
            if first_bad_gout is None:
                first_bad_gout = event
        elif event.kind == _Kind.GIN and bad(event) and event.call not in output_grad_bad:
            call = calls[event.call]
            return NonfiniteOrigin(
                call.name,
                "backward",
                f"The first non-finite value was produced in the backward pass by "
                f"{sentence_name(call.name)} ({call.type_name}): the gradient reaching its output "
                "was finite, the gradient it passed to its inputs was not (e.g. sqrt or "
                "log at 0, a division by a value near 0).",
            )
    if first_bad_gout is not None:
        call = calls[first_bad_gout.call]
        outermost = [index for index, c in enumerate(calls) if c.parent is None]
        if any(index in output_grad_bad for index in outermost):
            return NonfiniteOrigin(
                None,
                "loss",
                "The model's forward pass was finite but the gradient arriving at its "
                "output was not: the loss (or code between the model and the loss) "
                "produced it; check the loss for log(0), division by 0 or NaN targets.",
            )
        where = calls[call.parent] if call.parent is not None else call
        return NonfiniteOrigin(
            where.name,
            "backward",
            f"The first non-finite gradient was produced in the backward pass of code "
            f"inside {sentence_name(where.name)} ({where.type_name}) that is not a submodule "
            f"(a functional op consuming the output of {sentence_name(call.name)}).",
        )
    return None


class _ForwardSearch:
    """The forward events of a step, with which values (slots) were non-finite.

    ``as_mask`` holds slots taken for an intentional ``-inf`` mask: they count as finite.
    """

    def __init__(self, trace: StepTrace, host: np.ndarray) -> None:
        self.calls = trace.calls
        self.events = trace.events
        self.host = host
        self.nonfinite = ~np.isfinite(host)
        self.as_mask: set[int] = set()
        self.inputs: dict[int, set[int]] = {}  # call -> slots of its inputs
        self.outputs: dict[int, set[int]] = {}  # call -> slots of its outputs
        self.takers: dict[int, list[int]] = {}  # slot -> calls that took it, in order
        self.main_input: dict[int, int] = {}  # call -> min slot of its first input tensor
        for event in self.events:
            if event.kind == _Kind.IN:
                if self.calls[event.call].float_first:  # else no float input is the data
                    self.main_input.setdefault(event.call, event.slots[0])
                self.inputs.setdefault(event.call, set()).update(event.slots)
                for slot in event.slots:
                    self.takers.setdefault(slot, []).append(event.call)
            elif event.kind == _Kind.OUT:
                self.outputs.setdefault(event.call, set()).update(event.slots)

    def bad(self, slots: Iterable[int]) -> set[int]:
        return {s for s in slots if self.nonfinite[s] and s not in self.as_mask}

    def made_nothing(self, call: int) -> bool:
        """The call's outputs hold no non-finite value it was not given: it absorbed
        (a softmax over an additive -inf mask) or passed through what it took."""
        outputs = self.outputs.get(call)
        if outputs is None:
            return False  # no float output to judge by
        return self.bad(outputs) <= self.bad(self.inputs.get(call, ()))

    def mask_like(self, slots: set[int]) -> bool:
        """Every tensor among ``slots`` holds -inf but neither NaN nor +inf (its min is
        -inf, its max finite): what an additive attention mask holds, and log(0)."""
        lows = {slot - slot % 2 for slot in slots}  # a tensor's slots are (min, max)
        return all(np.isneginf(self.host[low]) and np.isfinite(self.host[low + 1]) for low in lows)

    def reads_as_mask(self, event: _Event, bad: set[int]) -> bool:
        """Whether ``bad`` values of ``event`` are read as an intentional -inf mask.

        Inputs: only -inf, and either not the call's first input (a mask rides along
        with the data, as ``attn_mask=`` or ``(x, mask)``; -inf *as* the data, as in
        ``fc(torch.log(h))``, is a fault) or carried on by the call, whose own new
        non-finite outputs hold only -inf too (a module that prepares a mask).
        Outputs: only -inf, made by a call that was given a mask (``scores + mask``,
        ``mask.expand(...)``): the mask, carried on.
        """
        if not self.mask_like(bad):
            return False
        call = event.call
        if event.kind == _Kind.OUT:
            return bool(self.inputs.get(call, set()) & self.as_mask)
        main = self.main_input.get(call)
        if all(slot - slot % 2 != main for slot in bad):
            return True
        made = self.bad(self.outputs.get(call, ())) - self.bad(self.inputs.get(call, ()))
        return bool(made) and self.mask_like(made)

    def first(self, start: int = 0) -> tuple[int, _Event, set[int]] | None:
        """The first forward event from ``start`` with non-finite values that its call
        did not absorb; for outputs, only the values the call made itself."""
        for index in range(start, len(self.events)):
            event = self.events[index]
            if event.kind not in (_Kind.IN, _Kind.OUT):
                continue
            bad = self.bad(event.slots)
            if not bad or self.made_nothing(event.call):
                continue
            if event.kind == _Kind.OUT:
                bad -= self.bad(self.inputs.get(event.call, ()))
            if bad:
                return index, event, bad
        return None

    def describe(self, event: _Event) -> NonfiniteOrigin:
        call = self.calls[event.call]
        if event.kind == _Kind.OUT:
            return NonfiniteOrigin(
                call.name,
                "forward",
                f"The first non-finite value was produced in the forward pass by "
                f"{sentence_name(call.name)} ({call.type_name}): its inputs were finite, its "
                "output was not; the layers after it only propagated it.",
            )
        if call.parent is None:
            return NonfiniteOrigin(
                None,
                "input",
                f"The model's input was already non-finite when it reached "
                f"{sentence_name(call.name)} ({call.type_name}): no module produced it, the "
                "data did; check the batch (and its preprocessing) for NaN/inf.",
            )
        parent = self.calls[call.parent]
        return NonfiniteOrigin(
            parent.name,
            "forward",
            f"The first non-finite value was produced inside the forward of "
            f"{sentence_name(parent.name)} ({parent.type_name}) by code that is not a "
            f"submodule (a functional op such as torch.log or a division, or a "
            f"non-finite buffer), before it called {sentence_name(call.name)}.",
        )


def _forward_origin(search: _ForwardSearch) -> NonfiniteOrigin | None:
    """The producer of the first non-finite forward value, telling masks from faults.

    A value holding only -inf is ambiguous: an additive attention mask (intentional) or
    log(0) (a fault). Values that read as masks (:meth:`_ForwardSearch.reads_as_mask`)
    count as finite, and the search goes on past them; the alert names the first such
    reading and what it would mean otherwise. A module that made -inf from finite
    inputs is never passed over (that is what log(0) does); as it may also be a mask
    builder, the alert adds what the search finds next.
    """
    found, taken = _next_fault(search, 0)
    if found is None:
        return None  # finite but for masks: the NaN comes from the backward pass or loss
    index, event, bad = found
    origin = search.describe(event)
    if taken is not None:
        return dataclasses.replace(
            origin,
            sentence=f"{origin.sentence} (A value holding only -inf reached "
            f"{sentence_name(search.calls[taken.call].name)} earlier and was taken for an "
            f"intentional mask; if it is not one: {search.describe(taken).sentence})",
        )
    takers = [c for s in bad for c in search.takers.get(s, ()) if c != event.call]
    if event.kind != _Kind.OUT or not takers or not search.mask_like(bad):
        return origin
    search.as_mask |= bad  # the other reading: this module built a mask
    later, _ = _next_fault(search, index)
    other = (
        "nothing after it in the forward pass was non-finite."
        if later is None
        else f"then look at what came next: {search.describe(later[1]).sentence}"
    )
    return dataclasses.replace(
        origin,
        sentence=f"{origin.sentence} Its output held -inf but no NaN, which an "
        f"intentional additive mask also holds; if it is one, {other}",
    )


def _next_fault(
    search: _ForwardSearch, start: int
) -> tuple[tuple[int, _Event, set[int]] | None, _Event | None]:
    """The first event from ``start`` whose non-finite values do not read as a mask,
    taking those that do for masks on the way; and the first event read as one."""
    taken: _Event | None = None
    found = search.first(start)
    while found is not None and search.reads_as_mask(found[1], found[2]):
        taken = taken or found[1]
        search.as_mask |= found[2]
        found = search.first(found[0])
    return found, taken


def locate(trace: StepTrace, record: StepRecord) -> NonfiniteOrigin | None:
    """The producer of ``record``'s first non-finite value, if the record has one.

    Never raises: a failure to localise leaves the plain ``nonfinite`` alert.
    """
    if record.loss_finite and record.grad_finite.all() and record.weight_finite.all():
        return None  # the common case: the flags are never read
    try:
        return resolve(trace)
    except Exception:
        logger.warning("gradwatch could not localise a non-finite value", exc_info=True)
        return None


def _is_float(tensor: Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _inputs(args: Any, kwargs: Any) -> tuple[list[Tensor], bool]:
    """A call's non-empty float tensor inputs, and whether its first tensor input is a
    float one (see ``_Call.float_first``)."""
    if not kwargs and type(args) is tuple and len(args) == 1 and type(args[0]) is Tensor:
        (tensor,) = args  # the common case, ``module(x)``, without building lists
        if not _is_float(tensor):
            return [], False
        return ([tensor] if tensor.numel() else []), True
    leaves = _leaves((args, kwargs))
    first = next((leaf for leaf in leaves if isinstance(leaf, Tensor)), None)
    return _floats(leaves), first is None or _is_float(first)


def _float_tensors(tree: Any) -> list[Tensor]:
    """The non-empty floating-point (or complex) tensors in a module's inputs or output."""
    return _floats(_leaves(tree))


def _floats(leaves: list[Any]) -> list[Tensor]:
    return [
        leaf for leaf in leaves if isinstance(leaf, Tensor) and _is_float(leaf) and leaf.numel() > 0
    ]


def _leaves(tree: Any) -> list[Any]:
    """``tree_leaves(tree)``, with a fast path for what modules almost always pass: a
    tensor, or flat tuples/lists and dicts of non-containers (pytree costs ~30 µs per
    call, paid twice per module call)."""
    if isinstance(tree, Tensor):
        return [tree]
    if type(tree) is tuple and len(tree) == 2 and type(tree[1]) is dict:  # (args, kwargs)
        args, kwargs = tree
        flat_args = type(args) is tuple and all(isinstance(a, _FLAT) for a in args)
        if flat_args and all(isinstance(v, _FLAT) for v in kwargs.values()):
            return [*args, *kwargs.values()]
    if type(tree) in (tuple, list) and all(isinstance(a, _FLAT) for a in tree):
        return list(tree)
    return tree_leaves(tree)


#: Leaves that are certainly not pytree containers.
_FLAT = (Tensor, int, float, bool, str, type(None))
