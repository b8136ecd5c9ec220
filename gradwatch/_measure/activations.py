"""Sampled activation statistics from forward hooks that exist only on sampled steps.

Which modules are hooked (decided once, at attach time):

* every *layer* (a module owning parameters directly, as in :mod:`gradwatch._measure.layers`):
  its output is the pre-activation of what follows (``Linear``, ``Conv*``) or a
  normalised signal (``LayerNorm``, ``BatchNorm``);
* every parameter-free module that is one of torch's activation classes (``ReLU``,
  ``Sigmoid``, ``Tanh``, ``GELU``, ...). Activations called as functions
  (``F.relu(x)``) are invisible to hooks and are not measured.

Per hooked module and sampled step, on the module's device and without a host sync:
``mean`` and ``std`` of the finite outputs; ``batch_std``, the standard deviation across
the batch per unit (RMS over units), i.e. how much the output still depends on the input
(a bias-only signal has batch_std 0 however large its std); ``saturated``, the fraction
of outputs within ``SATURATION_EPS`` of the range of a bounded activation
(``Sigmoid``, ``Tanh``, ``Hardtanh``, ``Softsign``, ``Hardsigmoid``); ``dead``, the
fraction of units of a rectifier (``ReLU``, ``ReLU6``, ``LeakyReLU`` with slope 0)
that output <= 0 for every sample of the batch; ``nonfinite``, the fraction of NaN/inf
outputs. A statistic that does not apply to a module is NaN on the host (and not
logged). A module called several times in one step (weight sharing, an RNN cell, micro
batches) reports the average over its calls.

Large outputs are measured on a subset of their units: above :data:`MEASURED_VALUES`
values, a sequence or image output (3-D and more: batch, positions or channels, ...,
features) keeps every k-th index of its second-to-last axis (token positions, image
rows), all samples and all features of each kept index; a (batch, features) output keeps
every k-th feature, for all samples. Every statistic is an average over units (or a
fraction of units), so this estimates it without bias from tens of thousands of values,
and a unit is still "dead" only if it is off for every sample of the batch. It bounds a
sampled step's memory traffic whatever the model's size: reading a (32, 2048, 4096)
output five times would cost more than the step's own matmul; and the measured part is
small enough for the passes after the first read to stay in a core's cache.

A hook does not compute: it copies the measured part (one op; a copy, since the model may
change its output in place later in the forward) into a row of a slab shared with the
outputs of the same shape and kind, and the statistics of every slab are computed in a
batch of reductions over dimensions when the step is collected (:class:`PendingStats`):
about twenty ops per kind of output instead of some forty per module, in hooks where an
op costs several times what it costs in a loop. The copies waiting take at most
:data:`PENDING_BYTES` on the CPU and :data:`PENDING_BYTES_ACCELERATOR` on any other device
(:func:`pending_bytes`); beyond, they are computed in batches along the way.

Only training forwards count: forwards with gradients disabled (``torch.no_grad()``,
inference mode: validation loops) and forwards of modules in eval mode are skipped
unless ``activation_eval=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import weakref
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from gradwatch._measure.devices import gather_device, host_values_on, on_device
from gradwatch._measure.hooks import SafeHook, log_failure
from gradwatch._measure.model import ACTIVATION, NORM, TORCH_LINEAR_LIKE, ModelMap, ModuleInfo

#: The statistics each hooked module reports, in the order of the device vector.
STATS: tuple[str, ...] = ("mean", "std", "batch_std", "saturated", "dead", "nonfinite")
#: An output within this fraction of a bounded activation's range from either bound
#: counts as saturated: sigmoid < 0.01 or > 0.99, |tanh| > 0.98. There the derivative is
#: below 4% of its peak (tanh is a rescaled sigmoid, so the two agree exactly).
SATURATION_EPS = 0.01
#: Dead units are only measured on batches of at least this many samples: with fewer,
#: a healthy unit is off for the whole batch by chance too often (2^-n).
MIN_DEAD_SAMPLES = 4

#: Outputs with more values than this are measured on every k-th position (see the
#: module doc): 2^15 values (128 KiB in float32, within a core's L2 cache) estimate a
#: fraction to within ~0.6% (binomial standard error at 32,768 values, p = 0.5).
MEASURED_VALUES = 2**15

#: The copies waiting for their statistics (see :class:`PendingStats`) take at most this
#: many bytes, all shapes together: 32 outputs of MEASURED_VALUES values. Batches that
#: large already cost little more than their memory passes; beyond, they only hold memory.
PENDING_BYTES = 4 * 2**20
#: The same bound on an accelerator. A measured part keeps every sample and every feature
#: of its kept positions, so with large batches one copy can exceed MEASURED_VALUES (a
#: (256, 32, 32, 32) feature map keeps one image row: 2^18 values, 1 MiB); 4 MiB then
#: holds a few copies and a CNN's sampled step is computed in a dozen small batches, each
#: some twenty kernel launches the host pays for. Device memory is not the scarce part
#: there (the model keeps every activation for its backward pass): 64 MiB is a few
#: hundred such copies, computed in one batch per kind.
PENDING_BYTES_ACCELERATOR = 64 * 2**20
#: Rows of a slab for a kind of output not seen at the previous sampled step.
FIRST_ROWS = 8

#: Roles of hooked modules, used by the detectors.
ROLE_MIXING = "mixing"  # Linear / Conv: weighted sums, where initialisation sets the gain
ROLE_NORM = "norm"
ROLE_BOUNDED = "bounded"
ROLE_RECTIFIER = "rectifier"
ROLE_ACTIVATION = "activation"
ROLE_LAYER = "layer"


@dataclasses.dataclass(frozen=True)
class _Target:
    """One hooked module: its name, role, and what applies to it (no module reference)."""

    name: str
    role: str
    bounds: tuple[float, float] | None = None


def bounds_of(module: nn.Module) -> tuple[float, float] | None:
    """The output range of a bounded activation, or None."""
    if isinstance(module, nn.ReLU6):
        return None  # a rectifier first: its failure mode is dying, not saturating
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    if isinstance(module, (nn.Tanh, nn.Softsign)):
        return -1.0, 1.0
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return 0.0, 1.0
    return None


def is_rectifier(module: nn.Module) -> bool:
    """A unit of this module is dead when it outputs <= 0 for every sample."""
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return True
    return isinstance(module, nn.LeakyReLU) and float(module.negative_slope) == 0.0


def role_of(info: ModuleInfo, module: nn.Module) -> str | None:
    """The role of a module, or None when it is not hooked.

    Mixing is torch's linear-like classes only: Hugging Face's ``Conv1D``, linear-like
    in the model map too, stays a plain ``layer`` here, as the activation detectors'
    thresholds were set without it.
    """
    if isinstance(module, TORCH_LINEAR_LIKE):
        return ROLE_MIXING
    if info.has(NORM):
        return ROLE_NORM
    if bounds_of(module) is not None:
        return ROLE_BOUNDED
    if is_rectifier(module):
        return ROLE_RECTIFIER
    if info.has(ACTIVATION):
        return ROLE_ACTIVATION
    if info.owns_any_param:
        return ROLE_LAYER
    return None


def _first_tensor(output: Any) -> Tensor | None:
    """The module's main output: the tensor itself, or the first tensor of a tuple/list."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    return None


def measured_part(output: Tensor) -> Tensor:
    """``output``, or for an output of more than :data:`MEASURED_VALUES` values, a view
    of every k-th index of one axis: with at least 3 dimensions its second-to-last
    (positions, image rows), keeping all samples and all features of the kept indices, so
    each kept unit is whole and memory is read in contiguous runs of features; a
    (samples, features) output keeps every k-th feature of every sample."""
    cut = _cut(output.shape)
    if cut.stride == 1:
        return output
    return output[(slice(None),) * cut.axis + (slice(None, None, cut.stride),)]


class _Cut(NamedTuple):
    """How an output of one shape is measured (:func:`measured_part`): the measured part's
    shape, its samples and units (values per sample), and which indices it keeps: every
    ``stride``-th of axis ``axis`` (a stride of 1 keeps the whole output)."""

    shape: torch.Size
    samples: int
    units: int
    axis: int
    stride: int


@functools.lru_cache(maxsize=256)
def _cut(shape: torch.Size) -> _Cut:
    """The :class:`_Cut` of an output of ``shape``: the one owner of the rule of
    :func:`measured_part` (cached: a model's outputs have a few shapes)."""
    values = math.prod(shape)
    samples = shape[0] if len(shape) >= 2 else 1
    if len(shape) < 2 or values <= MEASURED_VALUES:
        return _Cut(shape, samples, values // samples, 0, 1)
    axis = max(1, len(shape) - 2)
    length = shape[axis]
    keep = max(1, MEASURED_VALUES // (values // length))
    stride = -(-length // keep)  # ceil: at most `keep` indices remain
    kept = -(-length // stride)
    part = torch.Size((*shape[:axis], kept, *shape[axis + 1 :]))
    return _Cut(part, samples, math.prod(part) // samples, axis, stride)


def pending_bytes(device: torch.device) -> int:
    """How many bytes of copies may wait for their statistics on ``device``: a
    cache-sized :data:`PENDING_BYTES` on the CPU, :data:`PENDING_BYTES_ACCELERATOR` on a
    GPU (or another accelerator), where the kernel launches of many small batches cost
    more than the memory."""
    return PENDING_BYTES if device.type == "cpu" else PENDING_BYTES_ACCELERATOR


def _reading_back_is_free(device: torch.device) -> bool:
    """On the CPU a kernel has finished when it returns: a value can be read at once."""
    return device.type == "cpu"


@dataclasses.dataclass
class ActivationSample:
    """One sampled step's activation statistics while they are still on the device.

    ``values`` rides to the host in the step vector (segment ``"activations"``, see
    ``gradwatch._measure.step``); :meth:`to_host` unpacks that segment.
    """

    layers: tuple[str, ...]
    roles: tuple[str, ...]
    layouts: tuple[tuple[int, ...], ...]
    values: Tensor

    def to_host(self, host: np.ndarray) -> dict[str, np.ndarray]:
        """Per-statistic arrays aligned with ``layers``; NaN where a statistic does not apply."""
        out = {stat: np.full(len(self.layers), np.nan) for stat in STATS}
        position = 0
        for layer, layout in enumerate(self.layouts):
            for stat in layout:
                out[STATS[stat]][layer] = float(host[position])
                position += 1
        return out


class _Kind(NamedTuple):
    """What a group of pending copies shares: device, dtype and (samples, units) shape,
    which statistics apply, and whether they were made under ``torch.inference_mode`` (an
    inference tensor can only be changed in place there). A group's arithmetic then takes
    Python scalars only: no per-row tensors built on the host and copied to a device."""

    device: torch.device
    dtype: torch.dtype  # the outputs': copied as they are, made float32 for the arithmetic
    samples: int
    units: int
    bounds: tuple[float, float] | None  # saturation applies (the range)
    dead: bool  # dead units apply
    inference: bool


@dataclasses.dataclass(frozen=True, eq=False)
class _Route:
    """Where the outputs of one module, of one shape, dtype and device, are copied to: the
    decisions of a hook made once per module instead of at every call (a forward hook's
    Python costs several times its cost in a loop: the model's kernels between two hooks
    evict the interpreter's code and data from the caches)."""

    shape: torch.Size
    layout: tuple[int, ...]
    kind: _Kind  # its device, dtype and inference flag are the route's too
    cut: _Cut
    every: Tensor | None  # the kept indices of cut.axis (None: the whole output)


@dataclasses.dataclass(eq=False)
class _Entry:
    """One module measured at this step: the layout of its statistics and its device,
    both set by its first call (a later call that differs cannot be averaged with it)."""

    target: _Target
    layout: tuple[int, ...]
    device: torch.device


@dataclasses.dataclass(eq=False)
class _Group:
    """Pending copies of one :class:`_Kind`: ``slab[:len(owners)]``, row ``i`` a copy of
    an output of ``owners[i]``."""

    slab: Tensor  # (rows, samples, units)
    owners: list[_Entry]
    #: Per output shape, the slab's rows as views of that shape: made by one op (unbind)
    #: the first time, so that a hook's copy is one op and not three (select, view, copy).
    rows: dict[torch.Size, tuple[Tensor, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Device index tensors that put computed rows back into modules, in module order.

    ``picks`` flattens each module's layout out of the (rows, 6) statistics, when every
    module has one row (``owners`` None); else out of their per-module sums, ``owners[r]``
    being the module of row ``r`` (a forgotten module's rows go to one extra, discarded
    position), and ``calls`` divides each picked value by its module's calls."""

    picks: Tensor
    owners: Tensor | None
    calls: Tensor | None


def _applies(target: _Target, samples: int) -> tuple[bool, bool, bool]:
    """Which of ``batch_std``, ``saturated`` and ``dead`` apply to an output of
    ``samples`` samples of ``target``: the one owner of these conditions, which the
    layouts and the groups' arithmetic both follow."""
    return (
        samples >= 2,  # a spread across the batch needs a batch
        target.bounds is not None,
        target.role == ROLE_RECTIFIER and samples >= MIN_DEAD_SAMPLES,
    )


def _layout(applies: tuple[bool, bool, bool]) -> tuple[int, ...]:
    """Indices into :data:`STATS` of the statistics reported, given :func:`_applies`."""
    batch_std, saturated, dead = applies
    return (
        0,
        1,
        *((2,) if batch_std else ()),
        *((3,) if saturated else ()),
        *((4,) if dead else ()),
        5,
    )


class PendingStats:
    """Copies of measured outputs waiting for their statistics, computed a group at a time.

    A forward hook only copies the measured part of its output (:func:`measured_part`)
    into a row of a slab shared by the outputs of the same :class:`_Kind`: one op, which
    takes the part and copies it (``index_select`` into the row). A copy is needed, not
    a reference: the model may change the output in place later in the forward
    (``ReLU(inplace=True)``). The statistics of a whole group are then computed at once by
    :func:`group_stats`, with reductions over dimensions: about twenty ops per group
    instead of some forty per module (on a small tensor, an op's dispatch costs more than
    its arithmetic, and in a forward hook several times more than in a loop of ops).

    Memory stays bounded: a slab holds at most :func:`pending_bytes` (at least one row),
    and all open slabs together too; a full slab is computed before its rows are reused,
    and opening one beyond the budget computes and frees every open slab first. An RNN
    cell called 500 times in a step is measured in batches, never holding more copies
    than the budget. A slab has as many rows as its kind had at the previous sampled step
    (the steady state: every slab computed in :meth:`take`, in one batch per kind), or
    :data:`FIRST_ROWS` the first time.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._slabs: dict[_Kind, _Group] = {}  # open slabs (nothing output-sized elsewhere)
        self._slab_bytes = 0
        self._done: list[tuple[Tensor, list[_Entry]]] = []  # (rows, 6) statistics, owners
        self._rows: dict[_Kind, int] = {}  # copies per kind at this step
        self._rows_before: dict[_Kind, int] = {}  # ... and at the previous sampled step
        self._routes: dict[str, _Route] = {}  # per module: the last route its outputs took
        self._plans: dict[tuple[Any, ...], _Plan] = {}

    def add(self, target: _Target, output: Tensor) -> None:
        """Copy the measured part of a floating-point, non-empty ``output`` of ``target``."""
        inference = torch.is_inference_mode_enabled()
        route = self._routes.get(target.name)
        if (
            route is None
            or route.shape != output.shape
            or route.kind.dtype != output.dtype
            or route.kind.device != output.device
            or route.kind.inference != inference
        ):
            route = self._routes[target.name] = self._route(target, output, inference)
        entry = self._entries.get(target.name)
        if entry is None:
            # First call at this step: its position in the dict is its execution order.
            entry = self._entries[target.name] = _Entry(target, route.layout, route.kind.device)
        elif entry.layout != route.layout or entry.device != route.kind.device:
            return  # cannot be averaged with the first call's statistics
        group = self._slabs.get(route.kind)
        if group is None:
            group = self._open(route.kind)
        elif len(group.owners) == group.slab.shape[0]:
            # Full: computed now, and its rows reused. Not as soon as it fills: a slab
            # sized by the previous step fills at the step's last call of its kind, and
            # its arithmetic is cheaper in take(), with the others'.
            self._compute(route.kind, group)
        rows = group.rows.get(route.cut.shape)
        if rows is None:
            rows = group.slab.view(-1, *route.cut.shape).unbind(0)
            group.rows[route.cut.shape] = rows
        row = rows[len(group.owners)]
        # Without autograd: the copy records no graph, and index_select(out=) accepts an
        # input that requires grad. set_grad_enabled as a call, not the `no_grad()`
        # context: in a hook every Python call counts (see _Route).
        grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            if route.every is None:
                row.copy_(output)
            else:  # the measured part and its copy in one op
                torch.index_select(output, route.cut.axis, route.every, out=row)
        finally:
            torch.set_grad_enabled(grad)
        group.owners.append(entry)

    def forget(self, name: str) -> None:
        """Drop a module's statistics of this step (its rows are left out of :meth:`take`)."""
        self._entries.pop(name, None)

    def flush(self) -> None:
        """Compute every pending copy now and free the slabs."""
        slabs, self._slabs, self._slab_bytes = self._slabs, {}, 0
        for kind, group in slabs.items():
            self._compute(kind, group)

    def discard(self) -> None:
        """Forget this step's copies and statistics (a fresh step begins)."""
        self._entries, self._slabs, self._slab_bytes, self._done = {}, {}, 0, []
        self._rows = {}

    def take(self) -> ActivationSample | None:
        """This step's statistics, one entry per module in order of first call, each the
        average over its calls (None if nothing was measured); a fresh step begins."""
        self.flush()
        done, entries = self._done, self._entries
        if self._rows:  # collected at every step: only a sampled one sizes the next's
            self._rows_before = self._rows
        self.discard()
        if not done:
            return None
        measured = {entry for _, owners in done for entry in owners}
        live = [entry for entry in entries.values() if entry in measured]
        if not live:
            return None
        device = gather_device(stats.device for stats, _ in done)
        position = {entry: index for index, entry in enumerate(live)}
        forgotten = len(live)  # where the rows of a forgotten module go
        owners = tuple(position.get(entry, forgotten) for _, group in done for entry in group)
        layouts = tuple(entry.layout for entry in live)
        plan = self._plan(device, owners, layouts)
        parts = [on_device(stats, device) for stats, _ in done]  # a model across devices
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        if plan.owners is not None:
            sums = torch.zeros(forgotten + 1, len(STATS), dtype=torch.float32, device=device)
            rows = sums.index_add_(0, plan.owners, rows)
        values = rows.reshape(-1).take(plan.picks)
        if plan.calls is not None:
            values = values / plan.calls
        return ActivationSample(
            layers=tuple(entry.target.name for entry in live),
            roles=tuple(entry.target.role for entry in live),
            layouts=layouts,
            values=values,
        )

    def _route(self, target: _Target, output: Tensor, inference: bool) -> _Route:
        cut = _cut(output.shape)
        applies = _applies(target, cut.samples)
        device = output.device
        kind = _Kind(
            device, output.dtype, cut.samples, cut.units, target.bounds, applies[2], inference
        )
        every = None
        if cut.stride > 1:
            # Made on the device (no host copy); kept with the route, across steps.
            length = output.shape[cut.axis]
            every = torch.arange(0, length, cut.stride, device=device)
        return _Route(output.shape, _layout(applies), kind, cut, every)

    def _open(self, kind: _Kind) -> _Group:
        row_bytes = kind.dtype.itemsize * kind.samples * kind.units
        budget = pending_bytes(kind.device)
        rows = min(self._rows_before.get(kind, FIRST_ROWS), budget // row_bytes)
        rows = max(1, rows)
        if self._slabs and self._slab_bytes + rows * row_bytes > budget:
            self.flush()
        slab = torch.empty((rows, kind.samples, kind.units), dtype=kind.dtype, device=kind.device)
        group = self._slabs[kind] = _Group(slab, [])
        self._slab_bytes += rows * row_bytes
        return group

    def _compute(self, kind: _Kind, group: _Group) -> None:
        """The statistics of a group's pending copies; the slab's rows are free again."""
        owners, group.owners = group.owners, []  # taken first: a failure loses them, only
        if not owners:
            return
        self._rows[kind] = self._rows.get(kind, 0) + len(owners)
        # Under inference_mode when the copies were made there: an inference tensor can be
        # changed in place (the arithmetic reuses the copies as work space) only there.
        mode = torch.inference_mode() if kind.inference else contextlib.nullcontext()
        with torch.no_grad(), mode:
            copies = group.slab[: len(owners)].float()  # float32 already: the slab itself
            stats = group_stats(copies, kind.bounds, kind.dead)
        self._done.append((stats, owners))

    def _plan(
        self, device: torch.device, owners: tuple[int, ...], layouts: tuple[tuple[int, ...], ...]
    ) -> _Plan:
        """The index tensors of :meth:`take`, built once per arrangement of rows and
        modules (a static model has one) and kept on the device."""
        key = (device, owners, layouts)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._new_plan(device, owners, layouts)
            if len(self._plans) > 16:  # models whose calls vary: keep it bounded
                self._plans = {key: plan}
        return plan

    @staticmethod
    def _new_plan(
        device: torch.device, owners: tuple[int, ...], layouts: tuple[tuple[int, ...], ...]
    ) -> _Plan:
        width = len(STATS)
        if sorted(owners) == list(range(len(layouts))):  # one row per module
            row_of = {module: row for row, module in enumerate(owners)}
            picks = [
                row_of[m] * width + stat for m, layout in enumerate(layouts) for stat in layout
            ]
            return _Plan(host_values_on(picks, torch.long, device), None, None)
        calls = [0] * (len(layouts) + 1)
        for owner in owners:
            calls[owner] += 1
        picks = [m * width + stat for m, layout in enumerate(layouts) for stat in layout]
        divisors = [float(calls[m]) for m, layout in enumerate(layouts) for _ in layout]
        return _Plan(
            host_values_on(picks, torch.long, device),
            host_values_on(list(owners), torch.long, device),
            host_values_on(divisors, torch.float32, device),
        )


def output_stats(output: Tensor, target: _Target) -> tuple[Tensor, tuple[int, ...]]:
    """The statistics of one output that apply to ``target``, as one float32 vector on
    the output's device, and their layout (indices into :data:`STATS`): a group of one,
    through the same code as a probe's step."""
    pending = PendingStats()
    pending.add(target, output)
    sample = pending.take()
    assert sample is not None, "a non-empty floating-point output is always measured"
    return sample.values, sample.layouts[0]


def group_stats(copies: Tensor, bounds: tuple[float, float] | None, dead: bool) -> Tensor:
    """The statistics of ``n`` outputs, ``copies`` (n, samples, units) float32, as an
    (n, 6) tensor on their device, columns in :data:`STATS` order: 0 where one does not
    apply (saturation without ``bounds``, dead units without ``dead``, ``batch_std`` of
    a single sample). ``copies`` is used as work space: its values are lost.

    Mean and standard deviation are of the finite values only; the spread across the
    batch (``batch_std``) counts non-finite values as zeros; non-finite values count as
    neither saturated nor alive.

    Written for speed: only float reductions over dimensions and element-wise float ops,
    each about one memory pass (boolean masks and their counts, ``var(dim=...)`` and
    ``var_mean`` are 10-100x slower on CPU). Variances are two-pass, about a mean:
    E[x²] - E[x]² cancels catastrophically for a bias-dominated output of a deep layer,
    whose spread is tiny next to its mean.

    On the CPU every kernel has finished when it returns, so reading a value back is not
    a synchronisation: there one value per output tells whether it is all finite (the
    usual case), and the all-finite outputs skip the passes that set non-finite values
    aside (about 3x less memory traffic); only the others take the careful path, so a
    NaN in one output leaves the others' arithmetic as it was. On an accelerator nothing
    is read back, and every output takes the careful path.
    """
    if not _reading_back_is_free(copies.device):
        return _careful_stats(copies, bounds, dead)
    unit_means = copies.mean(dim=1, keepdim=True)  # (n, 1, units)
    centres = unit_means.mean(dim=2, keepdim=True)  # (n, 1, 1)
    # A NaN or inf anywhere makes its unit's mean, and so its centre, non-finite (finite
    # values whose sum overflows only send the output down the careful path).
    finite = [math.isfinite(centre[0][0]) for centre in centres.tolist()]
    if all(finite):
        return _finite_stats(copies, unit_means, centres, bounds, dead)
    if not any(finite):
        return _careful_stats(copies, bounds, dead)
    good = [row for row, ok in enumerate(finite) if ok]
    bad = [row for row, ok in enumerate(finite) if not ok]
    stats = torch.empty(copies.shape[0], len(STATS), dtype=torch.float32)
    stats[good] = _finite_stats(copies[good], unit_means[good], centres[good], bounds, dead)
    stats[bad] = _careful_stats(copies[bad], bounds, dead)
    return stats


def _finite_stats(
    copies: Tensor,
    unit_means: Tensor,
    centres: Tensor,
    bounds: tuple[float, float] | None,
    dead: bool,
) -> Tensor:
    """:func:`group_stats` of all-finite outputs, given each unit's mean (n, 1, units),
    which this changes, and each output's mean (n, 1, 1)."""
    n, samples, units = copies.shape
    zeros = copies.new_zeros(n)
    saturated = _saturated_fraction(copies, None, bounds) if bounds is not None else zeros
    dead_fraction = _dead_fraction(copies) if dead else zeros
    # The spread splits exactly into two non-negative parts, so no cancellation: each
    # unit's spread across the batch, plus the spread of the unit means (both centred).
    within = _within_unit_variance(copies, unit_means) if samples >= 2 else zeros
    between = _sum_of_squares(unit_means.sub_(centres)).div_(units)
    std = between.add_(within).sqrt_()
    mean = centres.reshape(n)
    return torch.stack([mean, std, within.sqrt(), saturated, dead_fraction, zeros], dim=1)


def _careful_stats(copies: Tensor, bounds: tuple[float, float] | None, dead: bool) -> Tensor:
    """:func:`group_stats` of outputs that may hold NaN or inf."""
    n, samples, units = copies.shape
    values = samples * units
    # Non-finite values become zeros in `safe`; `marks` is 1 where they were, else 0.
    safe = torch.nan_to_num(copies, nan=0.0, posinf=0.0, neginf=0.0)
    marks = copies.mul_(0.0).nan_to_num_(nan=1.0, posinf=1.0, neginf=1.0)
    nonfinite = marks.sum(dim=(1, 2))  # counted, never the size minus a count of finite
    count = (values - nonfinite).clamp_min_(1.0)
    mean = safe.sum(dim=(1, 2)).div_(count)
    zeros = mean.new_zeros(n)
    saturated = _saturated_fraction(safe, marks, bounds) if bounds is not None else zeros
    dead_fraction = _dead_fraction(safe) if dead else zeros
    # The finite values centred on their mean, and exactly 0 where a value was not
    # (mark·mean + 0 - mean), in place of the marks.
    centre = mean[:, None, None]
    centred = marks.mul_(centre).add_(safe).sub_(centre)
    std = _sum_of_squares(centred).div_(count).sqrt_()
    unit_means = safe.mean(dim=1, keepdim=True)
    within = _within_unit_variance(safe, unit_means) if samples >= 2 else zeros
    return torch.stack(
        [mean, std, within.sqrt(), saturated, dead_fraction, nonfinite.div_(values)], dim=1
    )


def _sum_of_squares(rows: Tensor) -> Tensor:
    """Each (n, a, b) row's sum of squares, (n,): one read of ``rows`` (squaring them in
    place and summing would read them twice and write them once)."""
    return torch.linalg.vector_norm(rows, dim=(1, 2)).square_()


def _within_unit_variance(values: Tensor, unit_means: Tensor) -> Tensor:
    """Per output, the mean over units of each unit's variance across the batch (n,);
    ``values`` (n, samples, units) is changed (centred in place) and ``unit_means`` is
    (n, 1, units).

    Centred on each unit's mean directly, not the total minus the variance between units,
    which cancels when a constant bias dominates the output (a deep badly initialised
    stack)."""
    return _sum_of_squares(values.sub_(unit_means)).div_(values[0].numel())


def _dead_fraction(safe: Tensor) -> Tensor:
    """Per output, the fraction of units that output <= 0 for every sample (n,): a unit
    is alive when its maximum over the batch is > 0."""
    alive = safe.amax(dim=1).clamp_(min=0.0).sign_()
    return alive.mean(dim=1).neg_().add_(1.0)


def _saturated_fraction(safe: Tensor, marks: Tensor | None, bounds: tuple[float, float]) -> Tensor:
    """Per output, the fraction of values within :data:`SATURATION_EPS` of the range of
    ``bounds`` (n,). ``safe`` is the outputs with non-finite values zeroed and ``marks``
    1 where they were (None when there are none); a non-finite value is put at the
    middle: never saturated."""
    low, high = bounds
    middle, half = (high + low) / 2.0, (high - low) / 2.0
    edge = half - (high - low) * SATURATION_EPS
    if marks is None:
        centred = torch.sub(safe, middle)
    else:  # mark·middle + 0 - middle: exactly 0 where a value was not finite
        centred = torch.mul(marks, middle).add_(safe).sub_(middle)
    # 1 where |x - middle| > edge (within SATURATION_EPS of a bound), else 0.
    flags = centred.abs_().sub_(edge).clamp_(min=0.0).sign_()
    return flags.sum(dim=(1, 2)).div_(flags[0].numel())


class ActivationProbe:
    """Installs forward hooks for one sampled step and gathers what they measured.

    The probe keeps weak references to the modules (to install hooks on the next sampled
    step) and the hook handles while armed; the hooks themselves receive the module as an
    argument and close over nothing but the probe and a name. A hook only copies the
    measured part of its output; the statistics are computed in batches
    (:class:`PendingStats`), at the latest in :meth:`collect`.
    """

    def __init__(self, model: nn.Module | ModelMap, *, include_eval: bool = False) -> None:
        self.include_eval = include_eval
        self._modules: list[tuple[weakref.ref[nn.Module], _Target]] = []
        for info in ModelMap.of(model).modules:
            module = info.module
            role = role_of(info, module) if module is not None else None
            if module is None or role is None:
                continue
            self._modules.append((info.ref, _Target(info.name, role, bounds_of(module))))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending = PendingStats()

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Install the forward hooks (idempotent)."""
        if self._handles:
            return
        self._pending.discard()
        for ref, target in self._modules:
            module = ref()
            if module is None:
                continue
            # Not traced into a torch.compile graph: its bookkeeping would cost graph
            # breaks and recompiles (see _measure/compile.py); compiled code is not sampled.
            hook = SafeHook(self, "_observe", target, on_error="_forget")
            self._handles.append(module.register_forward_hook(hook))

    def disarm(self) -> None:
        """Remove the hooks (idempotent); what they measured is kept until :meth:`collect`,
        as statistics: the pending copies are computed and freed (nothing output-sized
        outlives the hooks)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        try:
            self._pending.flush()
        except Exception:  # like a failing hook: this step's statistics are dropped
            log_failure(self, "disarm")
            self._pending.discard()

    def collect(self) -> ActivationSample | None:
        """Remove the hooks and return what they measured (None if nothing ran, or if
        computing it failed: logged, never raised into the training step)."""
        self.disarm()
        try:
            return self._pending.take()
        except Exception:
            log_failure(self, "collect")
            self._pending.discard()
            return None

    def _observe(self, target: _Target, module: nn.Module, args: Any, output: Any) -> None:
        if not self.include_eval and (not module.training or not torch.is_grad_enabled()):
            return  # validation / inference forwards are not the training signal
        tensor = _first_tensor(output)
        if tensor is None or not (tensor.is_floating_point() and tensor.numel()):
            return
        self._pending.add(target, tensor)

    def _forget(self, target: _Target) -> None:
        """A hook failed part-way: drop the module's statistics of this step."""
        self._pending.forget(target.name)
