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

Only training forwards count: forwards with gradients disabled (``torch.no_grad()``,
inference mode: validation loops) and forwards of modules in eval mode are skipped
unless ``activation_eval=True``.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradwatch._measure.hooks import SafeHook
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


class ScratchBuffers:
    """Float32 work buffers shaped like the outputs being measured, reused for one step.

    Every fresh output-sized buffer on CPU costs page faults (the kernel zeroes new pages),
    often more than the arithmetic done in it; modules of one step mostly share a few
    output shapes, so CPU buffers are kept per shape until the probe drops them when the
    step is collected. On an accelerator the caching allocator already reuses freed
    blocks, so a fresh buffer is cheap and none is kept (no extra peak device memory).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], Tensor] = {}

    def get(self, like: Tensor, slot: int) -> Tensor:
        if like.device.type != "cpu":
            return torch.empty(like.shape, dtype=torch.float32, device=like.device)
        # A buffer made under inference_mode is an inference tensor: it cannot be written
        # in a later training forward, so those are kept apart.
        key = (tuple(like.shape), like.device, slot, torch.is_inference_mode_enabled())
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(
                like.shape, dtype=torch.float32, device=like.device
            )
        return buffer

    def clear(self) -> None:
        self._buffers.clear()


def output_stats(
    output: Tensor, target: _Target, scratch: ScratchBuffers | None = None
) -> tuple[Tensor, tuple[int, ...]]:
    """The statistics of one output that apply to ``target``, as one float32 vector, and
    their layout (indices into :data:`STATS`).

    Every value stays on the output's device. Mean and standard deviation are of the
    finite values only; the spread across the batch (``batch_std``) counts non-finite
    values as zeros; non-finite values count as neither saturated nor alive.

    Written for speed, since an output can be megabytes: only float reductions and
    element-wise float ops, each about one memory pass (boolean masks and their counts,
    ``var(dim=0)`` and ``var_mean`` are 10-100x slower on CPU). Variances are two-pass,
    about a mean: E[x²] - E[x]² cancels catastrophically for a bias-dominated output of
    a deep layer, whose spread is tiny next to its mean.

    On the CPU every kernel has finished when it returns, so reading a value back is not
    a synchronisation: there one value tells whether the output is all finite (the usual
    case), and if it is, the passes that set non-finite values aside are skipped, about
    3x less memory traffic. On an accelerator nothing is read back, and they always run.
    """
    y = measured_part(output.detach())
    samples = y.shape[0] if y.dim() >= 2 else 1
    flat = y.reshape(samples, -1).float()  # float32 already: a view, no copy
    pool = scratch if scratch is not None else ScratchBuffers()
    if _reading_back_is_free(flat.device):
        finite = _finite_stats_on_host(flat, target, pool)
        if finite is not None:
            return finite
    # Non-finite values become zeros in `safe`; `work` marks them with 1, the others 0.
    safe = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0, out=pool.get(flat, 0))
    work = torch.mul(flat, 0.0, out=pool.get(flat, 1))  # 0 for a finite x, NaN for NaN/±inf
    nonfinite = work.nan_to_num_(nan=1.0, posinf=1.0, neginf=1.0).sum()  # 0 exactly if none
    count = (flat.numel() - nonfinite).clamp_min(1.0)
    mean = safe.sum() / count
    # The finite values centred on their mean, and exactly 0 where a value was not
    # (mark·mean + 0 - mean), in place of the marks: at most two output-sized buffers.
    centred = work.mul_(mean).add_(safe).sub_(mean).reshape(-1)
    std = (torch.dot(centred, centred) / count).sqrt()
    del work, centred  # on an accelerator its block can serve the next buffer
    within_var = _within_unit_variance(safe, safe.mean(dim=0), pool) if samples >= 2 else None
    return _assemble(flat, safe, mean, std, within_var, nonfinite / flat.numel(), target, pool)


def _finite_stats_on_host(
    flat: Tensor, target: _Target, pool: ScratchBuffers
) -> tuple[Tensor, tuple[int, ...]] | None:
    """:func:`output_stats` of an all-finite ``flat`` (samples, units) on the CPU, or None
    when it holds a non-finite value (the careful path then runs).

    On the CPU a kernel has finished when it returns, so the few sums the statistics need
    are read back as they are made and combined in float64 on the host: about ten tensor
    ops per output instead of some forty (most of which cost more in dispatch than in
    arithmetic on the scalar-sized tensors they make). The memory passes are the same.
    """
    samples = flat.shape[0]
    total_values = flat.numel()
    unit_means = flat.sum(dim=0).div_(samples)
    units = unit_means.numel()
    centre = float(unit_means.sum()) / units
    # A NaN or inf anywhere makes its unit's mean, and so this, non-finite (finite
    # values whose sum overflows only send the output down the careful path).
    if not math.isfinite(centre):
        return None
    batch_std, saturated, dead = _applies(target, samples)
    values = [centre]
    layout = [0, 1]
    # The spread splits exactly into two non-negative parts, so no cancellation: each
    # unit's spread across the batch, plus the spread of the unit means (both centred
    # two-pass sums: E[x²] - E[x]² cancels when a bias dominates the output).
    within = _within_unit_variance(flat, unit_means, pool)
    within_var = 0.0 if within is None else float(within)
    between = unit_means.sub_(centre)
    between_var = float(torch.dot(between, between)) / units
    values.append(math.sqrt(between_var + within_var))
    if batch_std:
        values.append(math.sqrt(within_var))
        layout.append(2)
    if saturated:
        assert target.bounds is not None
        values.append(float(_saturated_count(flat, flat, target.bounds, pool)) / total_values)
        layout.append(3)
    if dead:
        values.append(float(_dead_fraction(flat)))
        layout.append(4)
    values.append(0.0)  # nonfinite: none, by the check above
    layout.append(5)
    return torch.from_numpy(np.array(values, dtype=np.float32)), tuple(layout)


def _applies(target: _Target, samples: int) -> tuple[bool, bool, bool]:
    """Which of ``batch_std``, ``saturated`` and ``dead`` apply to an output of
    ``samples`` samples of ``target``: the one owner of these conditions, which both the
    host shortcut and the careful path lay their statistics out by."""
    return (
        samples >= 2,  # a spread across the batch needs a batch
        target.bounds is not None,
        target.role == ROLE_RECTIFIER and samples >= MIN_DEAD_SAMPLES,
    )


def _dead_fraction(safe: Tensor) -> Tensor:
    """Fraction of units that output <= 0 for every sample (a device scalar): a unit is
    alive when its maximum over the batch is > 0."""
    alive = safe.amax(dim=0).clamp_(min=0.0).sign_()
    return 1.0 - alive.mean()


def _saturated_count(
    flat: Tensor, safe: Tensor, bounds: tuple[float, float], pool: ScratchBuffers
) -> Tensor:
    """How many values lie within :data:`SATURATION_EPS` of the range of ``bounds`` (a
    device scalar). ``safe`` is ``flat`` with non-finite values zeroed (``flat`` itself
    when it has none); a non-finite value is put at the middle: never saturated."""
    low, high = bounds
    middle, half = (high + low) / 2.0, (high - low) / 2.0
    edge = half - (high - low) * SATURATION_EPS
    # 1 where |x - middle| > edge (within SATURATION_EPS of a bound), else 0.
    work = pool.get(flat, 1)
    if safe is flat:
        centred = torch.sub(flat, middle, out=work)
    else:
        centred = torch.nan_to_num(flat, nan=middle, posinf=middle, neginf=middle, out=work)
        centred.sub_(middle)
    return centred.abs_().sub_(edge).clamp_(min=0.0).sign_().sum()


def measured_part(output: Tensor) -> Tensor:
    """``output``, or for an output of more than :data:`MEASURED_VALUES` values, a view
    of every k-th index of one axis: with at least 3 dimensions its second-to-last
    (positions, image rows), keeping all samples and all features of the kept indices, so
    each kept unit is whole and memory is read in contiguous runs of features; a
    (samples, features) output keeps every k-th feature of every sample."""
    if output.dim() < 2 or output.numel() <= MEASURED_VALUES:
        return output
    axis = max(1, output.dim() - 2)
    length = output.shape[axis]
    per_index = output.numel() // length
    keep = max(1, MEASURED_VALUES // per_index)
    stride = -(-length // keep)  # ceil: at most `keep` indices remain
    return output[(slice(None),) * axis + (slice(None, None, stride),)]


def _reading_back_is_free(device: torch.device) -> bool:
    """On the CPU a kernel has finished when it returns: a value can be read at once."""
    return device.type == "cpu"


def _within_unit_variance(
    values: Tensor, unit_means: Tensor, pool: ScratchBuffers
) -> Tensor | None:
    """Mean over units of each unit's variance across the batch (None without a batch).

    Centred on each unit's mean directly, not the total minus the variance between units,
    which cancels when a constant bias dominates the output (a deep badly initialised
    stack)."""
    if values.shape[0] < 2:
        return None
    within = torch.sub(values, unit_means, out=pool.get(values, 1)).reshape(-1)
    return torch.dot(within, within) / within.numel()


def _assemble(
    flat: Tensor,
    safe: Tensor,
    mean: Tensor,
    std: Tensor,
    within_var: Tensor | None,
    nonfinite: Tensor,
    target: _Target,
    pool: ScratchBuffers,
) -> tuple[Tensor, tuple[int, ...]]:
    """The statistics that apply (:func:`_applies`), stacked, and which they are
    (indices into :data:`STATS`). ``safe`` is ``flat`` with non-finite values zeroed
    (``flat`` itself when it has none)."""
    batch_std, saturated, dead = _applies(target, flat.shape[0])
    parts = [mean, std]
    layout = [0, 1]
    if batch_std:
        assert within_var is not None, "measured for every batch of two samples or more"
        parts.append(within_var.sqrt())  # RMS over units of the spread across the batch
        layout.append(2)
    if saturated:
        assert target.bounds is not None
        parts.append(_saturated_count(flat, safe, target.bounds, pool) / flat.numel())
        layout.append(3)
    if dead:
        parts.append(_dead_fraction(safe))
        layout.append(4)
    parts.append(nonfinite)
    layout.append(5)
    return torch.stack(parts), tuple(layout)


@dataclasses.dataclass
class _Accumulator:
    target: _Target
    layout: tuple[int, ...]
    total: Tensor
    calls: int = 1


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


class ActivationProbe:
    """Installs forward hooks for one sampled step and gathers what they measured.

    The probe keeps weak references to the modules (to install hooks on the next sampled
    step) and the hook handles while armed; the hooks themselves receive the module as an
    argument and close over nothing but the probe and a name.
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
        self._seen: dict[str, _Accumulator] = {}
        self._scratch = ScratchBuffers()

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Install the forward hooks (idempotent)."""
        if self._handles:
            return
        self._seen = {}
        for ref, target in self._modules:
            module = ref()
            if module is None:
                continue
            # Not traced into a torch.compile graph: its bookkeeping would cost graph
            # breaks and recompiles (see _measure/compile.py); compiled code is not sampled.
            hook = SafeHook(self, "_observe", target, on_error="_forget")
            self._handles.append(module.register_forward_hook(hook))

    def disarm(self) -> None:
        """Remove the hooks (idempotent); what they measured is kept until :meth:`collect`."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._scratch.clear()  # nothing output-sized outlives the hooks

    def collect(self) -> ActivationSample | None:
        """Remove the hooks and return what they measured (None if nothing ran)."""
        self.disarm()  # also drops the work buffers: nothing output-sized outlives the step
        seen, self._seen = self._seen, {}
        if not seen:
            return None
        parts: list[Tensor] = []
        device = next(iter(seen.values())).total.device
        for acc in seen.values():
            total = acc.total if acc.calls == 1 else acc.total / acc.calls
            if total.device != device:
                # non_blocking: a device-to-device hop must not stall the host.
                total = total.to(device, non_blocking=True)
            parts.append(total)
        accs = list(seen.values())
        return ActivationSample(
            layers=tuple(a.target.name for a in accs),
            roles=tuple(a.target.role for a in accs),
            layouts=tuple(a.layout for a in accs),
            values=torch.cat(parts),
        )

    def _observe(self, target: _Target, module: nn.Module, args: Any, output: Any) -> None:
        if not self.include_eval and (not module.training or not torch.is_grad_enabled()):
            return  # validation / inference forwards are not the training signal
        tensor = _first_tensor(output)
        if tensor is None or not (tensor.is_floating_point() and tensor.numel()):
            return
        stats, layout = output_stats(tensor, target, self._scratch)
        acc = self._seen.get(target.name)
        if acc is None:
            # First call at this step: its position in the dict is its execution order.
            self._seen[target.name] = _Accumulator(target, layout, stats)
        elif acc.layout == layout and acc.total.device == stats.device:
            acc.total = acc.total + stats  # on the device; averaged in collect()
            acc.calls += 1

    def _forget(self, target: _Target) -> None:
        """A hook failed part-way: drop the module's statistics of this step."""
        self._seen.pop(target.name, None)
