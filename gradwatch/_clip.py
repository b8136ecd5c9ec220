"""Gradient clippers: norm, value, unit-wise adaptive (AGC), percentile (AutoClip), z-score (ZClip).

A clipper runs once per optimizer step, in the watcher's pre-step path, on the gradients
of the watched model (the accumulated gradient under gradient accumulation, the unscaled
gradient under a ``GradScaler``), *after* the step's statistics were measured, so that
``total/grad_norm`` is always the norm before clipping. It scales the gradients in place
and returns the clip coefficient as a device scalar: the factor by which the global L2
norm of the gradient shrank (``1`` when nothing was clipped).

No clipper reads a value back to the host: thresholds, coefficients and the adaptive
clippers' running statistics are device tensors, combined with ``torch.clamp`` /
``torch.where`` instead of Python branches, as ``torch.nn.utils.clip_grad`` does. The
norm is computed once: norm-based clippers reuse the total L2 norm the watcher already
measured for logging.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from gradwatch._measure.distributed import full_value, has_dtensor, sharded_l2_norm
from gradwatch._validate import (
    Flag,
    IntAtLeast,
    Number,
    OneOf,
    OrNone,
    Strings,
    checked,
    plain,
)

#: Added to a norm before dividing by it, exactly as ``torch.nn.utils.clip_grad_norm_`` does.
NORM_EPS = 1e-6


@dataclasses.dataclass
class ClipTarget:
    """The gradients a clipper acts on: the watched parameters that have a gradient.

    ``layers`` gives, per parameter, the qualified name of the layer it is counted to.
    ``holders`` (optional, aligned with ``params``) names *every* module that holds the
    parameter: a tied output head holds the embedding's weight, which is counted to the
    embedding; :class:`AGC`'s ``exclude`` matches any of them. ``unit_axes`` (optional)
    gives, per parameter, the axis that indexes its units (:func:`unitwise_norm`): 0 for
    torch's ``(out, in, ...)`` weights, 1 for Hugging Face ``Conv1D``'s ``(in, out)``.
    """

    params: list[Tensor]
    grads: list[Tensor]
    layers: list[str]
    holders: list[tuple[str, ...]] = dataclasses.field(default_factory=list)
    unit_axes: list[int] = dataclasses.field(default_factory=list)

    def held_by(self, position: int) -> tuple[str, ...]:
        """Every module name holding parameter ``position`` (its layer at least)."""
        if position < len(self.holders):
            return self.holders[position]
        return (self.layers[position],)

    def unit_axis(self, position: int) -> int:
        """The axis of parameter ``position`` that indexes its units (0 unless told)."""
        return self.unit_axes[position] if position < len(self.unit_axes) else 0


def scale_grads_(grads: Sequence[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the device scalar ``coef``.

    One ``_foreach_mul_`` per (device, dtype) group; ``coef`` is moved with
    ``non_blocking`` so no group forces a host sync.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.device, grad.dtype), []).append(grad)
    for (device, _), group in groups.items():
        torch._foreach_mul_(group, coef.to(device, non_blocking=True))


def l2_norm(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Global L2 norm of ``tensors`` in float32 on ``device`` (batched, no sync)."""
    if not tensors:
        return torch.zeros((), device=device)
    if has_dtensor(tensors):  # FSDP2 shards: the norm of the full tensors, across ranks
        return sharded_l2_norm(tensors, device)
    norms = torch._foreach_norm(list(tensors), 2.0, dtype=torch.float32)
    squares = torch.stack([n.to(device, non_blocking=True) for n in norms]).square()
    return squares.sum().sqrt()


def total_norm_of(grads: Sequence[Tensor], norm_type: float) -> Tensor:
    """``torch.nn.utils.get_total_norm`` in float32 (with a fallback for torch < 2.6)."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        # On DTensor shards torch reduces across ranks and returns a replicated DTensor.
        return full_value(get_total_norm([g.float() for g in grads], norm_type))
    norms = [torch.linalg.vector_norm(g, norm_type, dtype=torch.float32) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


class Clipper(abc.ABC):
    """Base class of gradwatch's clippers; pass an instance as ``watch(..., clip=...)``.

    A clipper keeps its running state (if any) on the model's device; a watcher uses the
    instance it was given, so pass a fresh instance to each run: a watcher warns of an
    adaptive clipper that already clipped steps of another run (:attr:`steps_seen`), as
    its running statistics carry over; ``reset()`` makes one fresh again.
    """

    @property
    def steps_seen(self) -> int:
        """How many steps this instance's running statistics hold (0 when stateless)."""
        return 0

    @abc.abstractmethod
    def clip_(self, target: ClipTarget, total_norm: Tensor) -> Tensor:
        """Clip ``target.grads`` in place; return the clip coefficient (a float32 device scalar).

        ``total_norm`` is the global L2 norm of ``target.grads`` before clipping, already
        computed by the watcher (a float32 device scalar).
        """

    def reset(self) -> None:  # noqa: B027 - stateless clippers have nothing to reset
        """Forget running statistics (adaptive clippers); stateless clippers do nothing."""


class _NormClipper(Clipper):
    """Scales the whole gradient by ``min(1, threshold / (norm + 1e-6))`` (``clip_grad_norm_``)."""

    @abc.abstractmethod
    def threshold(self, norm: Tensor) -> Tensor:
        """This step's maximum norm given the step's norm (device scalars, no sync)."""

    def clip_(self, target: ClipTarget, total_norm: Tensor) -> Tensor:
        norm = total_norm.detach().float()
        coef = torch.clamp(self.threshold(norm) / (norm + NORM_EPS), max=1.0)
        scale_grads_(target.grads, coef)
        return coef


class ClipNorm(_NormClipper):
    """Clip the global gradient norm to ``max_norm``: ``torch.nn.utils.clip_grad_norm_``.

    ``watch(..., clip=1.0)`` is ``ClipNorm(1.0)``. For ``norm_type=2`` the norm the watcher
    measured (and logged) is reused; other norm types are computed with
    ``torch.nn.utils.get_total_norm``. Gradients are then scaled with
    ``torch.nn.utils.clip_grads_with_norm_``: the same coefficient
    ``min(1, max_norm / (norm + 1e-6))``, the same in-place multiply.
    """

    @checked(
        max_norm=Number(
            exclusive_minimum=0,
            hint="Pass the largest global gradient norm to allow, e.g. ClipNorm(1.0).",
        ),
        norm_type=Number(
            exclusive_minimum=0,
            allow_inf=True,
            hint="2 is the L2 norm, math.inf the largest absolute element.",
        ),
    )
    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def threshold(self, norm: Tensor) -> Tensor:
        return torch.full_like(norm, self.max_norm)

    def clip_(self, target: ClipTarget, total_norm: Tensor) -> Tensor:
        if self.norm_type == 2.0:
            norm = total_norm.detach().float()
        else:
            norm = total_norm_of(target.grads, self.norm_type)
            norm = norm.to(total_norm.device, non_blocking=True)
        # The coefficient clip_grads_with_norm_ applies, computed again only to log it.
        coef = torch.clamp(self.max_norm / (norm + NORM_EPS), max=1.0)
        clip_with_norm = getattr(torch.nn.utils, "clip_grads_with_norm_", None)
        if clip_with_norm is not None and target.params:
            clip_with_norm(target.params, self.max_norm, norm)
        else:  # torch < 2.6: the same multiply, by hand
            scale_grads_(target.grads, coef)
        return coef

    def __repr__(self) -> str:
        return f"ClipNorm(max_norm={self.max_norm}, norm_type={self.norm_type})"


class ClipValue(Clipper):
    """Clamp every gradient element to ``[-value, value]``: ``torch.nn.utils.clip_grad_value_``.

    The logged coefficient is the global L2 norm after clamping over the norm before
    (1 when nothing was clamped); measuring it costs one batched norm on the device.
    """

    @checked(
        value=Number(
            exclusive_minimum=0,
            hint="Pass the largest absolute gradient element to allow, e.g. ClipValue(0.5).",
        )
    )
    def __init__(self, value: float) -> None:
        self.value = float(value)

    def clip_(self, target: ClipTarget, total_norm: Tensor) -> Tensor:
        if not target.grads:
            return torch.ones((), device=total_norm.device)
        torch.nn.utils.clip_grad_value_(target.params, self.value)
        return _shrink(total_norm, l2_norm(target.grads, total_norm.device))

    def __repr__(self) -> str:
        return f"ClipValue(value={self.value})"


def _shrink(before: Tensor, after: Tensor) -> Tensor:
    """``after / before`` where ``before > 0``, else 1: how much the global norm shrank."""
    before = before.detach().float()
    return torch.where(before > 0, after / before.clamp_min(NORM_EPS), torch.ones_like(after))


def unitwise_norm(x: Tensor, unit_axis: int = 0) -> Tensor:
    """L2 norm per unit (an output neuron or conv filter), kept broadcastable against ``x``.

    A unit is one index along ``unit_axis``, the norm is over every other axis. torch's
    weights (``Linear``, convolutions, ``Embedding``) are ``(out, in, ...)``: units are
    rows, ``unit_axis=0``. Hugging Face's ``Conv1D`` (GPT-2's ``c_attn``, ``c_fc``,
    ``c_proj``) computes ``x @ W + b`` with ``W`` of shape ``(in, out)``: its units are
    columns, ``unit_axis=1``. Scalars and vectors (biases, norm gains) are one unit: their
    whole-tensor norm. This matches the NFNets reference code, whose JAX kernels are laid
    out ``(..., in, out)`` and therefore reduce over all axes but the last.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    dims = tuple(d for d in range(x.ndim) if d != unit_axis)
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)


class AGC(Clipper):
    """Unit-wise adaptive gradient clipping (Brock, De, Smith & Simonyan, 2021).

    "High-Performance Large-Scale Image Recognition Without Normalization" (NFNets),
    arXiv:2102.06171, section 4.1 and the authors' reference code
    (github.com/deepmind/deepmind-research, ``nfnets/optim.py``). For each unit ``i`` (an
    output neuron or conv filter: a row of a torch weight, a column of a Hugging Face
    ``Conv1D`` weight, see :func:`unitwise_norm`; a bias or gain vector as a whole)::

        max_i = clip_factor * max(||W_i||, eps)
        G_i  <- G_i                               if ||G_i|| < max_i
                G_i * max_i / max(||G_i||, 1e-6)  otherwise

    The paper does not clip the final classifier layer: name it in ``exclude``
    (module names as in ``model.named_modules()``). A name excludes every parameter that
    module holds, shared ones included: ``exclude=("lm_head",)`` on a model whose head is
    tied to its input embedding leaves the tied weight (embedding and head) unclipped. A
    watcher refuses a name that matches no module holding a parameter. The logged
    coefficient is the global L2 norm after clipping over the norm before. Everything
    stays on the device.
    """

    @checked(
        clip_factor=Number(
            exclusive_minimum=0,
            hint="The paper uses 0.01 to 0.16 depending on the batch size.",
        ),
        eps=Number(exclusive_minimum=0, hint="It floors each unit's weight norm."),
        exclude=Strings(
            "layer names", hint="Pass e.g. exclude=('fc',) to leave the classifier unclipped."
        ),
    )
    def __init__(
        self, clip_factor: float = 0.01, eps: float = 1e-3, exclude: Sequence[str] = ()
    ) -> None:
        self.clip_factor = float(clip_factor)
        self.eps = float(eps)
        self.exclude = tuple(exclude)

    def clip_(self, target: ClipTarget, total_norm: Tensor) -> Tensor:
        excluded = set(self.exclude)
        for position, (param, grad) in enumerate(zip(target.params, target.grads)):
            if excluded.intersection(target.held_by(position)):
                continue
            axis = target.unit_axis(position)
            max_norm = unitwise_norm(param.detach(), axis).clamp_min(self.eps) * self.clip_factor
            grad_norm = unitwise_norm(grad, axis)
            factor = torch.where(
                grad_norm < max_norm,
                torch.ones_like(grad_norm),
                max_norm / grad_norm.clamp_min(NORM_EPS),
            )
            grad.mul_(factor.to(grad.dtype))
        return _shrink(total_norm, l2_norm(target.grads, total_norm.device))

    def __repr__(self) -> str:
        return f"AGC(clip_factor={self.clip_factor}, eps={self.eps}, exclude={self.exclude})"


class AutoClip(_NormClipper):
    """Clip to a percentile of the gradient norms seen so far (Seetharaman et al., 2020).

    "AutoClip: Adaptive Gradient Clipping for Source Separation Networks", IEEE MLSP 2020,
    arXiv:2007.14469, and the authors' code (github.com/pseeth/autoclip): at step ``t`` the
    current norm joins the history, and the threshold is the ``percentile``-th percentile
    (linear interpolation, as ``numpy.percentile``) of the history, current norm included::

        threshold_t = percentile({||g_1||, ..., ||g_t||}, p)

    The paper keeps every norm; here the history is the last ``history`` norms (a ring
    buffer on the device, so memory is bounded and no value crosses to the host), which
    equals the paper's rule until ``history`` steps have passed. Non-finite norms are
    stored as NaN and ignored (``torch.nanquantile``), so one bad step cannot poison the
    threshold. The paper's default percentile is 10.
    """

    @checked(
        percentile=Number(exclusive_minimum=0, maximum=100, hint="It is a percentile in (0, 100]."),
        history=IntAtLeast(1, hint="It is how many past gradient norms to keep."),
    )
    def __init__(self, percentile: float = 10.0, history: int = 10_000) -> None:
        self.percentile = float(percentile)
        self.history = int(history)
        self._norms: Tensor | None = None
        self._count = 0

    def reset(self) -> None:
        self._norms = None
        self._count = 0

    @property
    def steps_seen(self) -> int:
        return self._count

    @property
    def norms(self) -> Tensor:
        """The norms in the history, oldest slot first in ring order (reading it syncs)."""
        if self._norms is None:
            return torch.zeros(0)
        return self._norms[: min(self._count, self.history)]

    def threshold(self, norm: Tensor) -> Tensor:
        if self._norms is None or self._norms.device != norm.device:
            self._norms = torch.full((self.history,), math.nan, device=norm.device)
        slot = self._count % self.history  # a host-side counter: no tensor is read
        self._norms[slot].copy_(torch.where(torch.isfinite(norm), norm, math.nan))
        self._count += 1
        filled = self._norms[: min(self._count, self.history)]
        # A float q (not a tensor) keeps quantile's range check on the host: no sync.
        return torch.nanquantile(filled, self.percentile / 100.0)

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self.percentile}, history={self.history})"


ZCLIP_MODES = ("zscore", "percentile")
ZCLIP_OPTIONS = ("adaptive_scaling", "mean")


class ZClip(_NormClipper):
    """Z-score clipping on EMA statistics of the gradient norm (Kumar et al., 2025).

    "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", arXiv:2504.02507, and the
    authors' reference code (github.com/bluorion-com/ZClip, ``zclip/zclip.py``), whose
    defaults are kept. For the first ``warmup_steps`` steps the norms are collected and
    the gradient is clipped to ``max_grad_norm`` only; then ``mu``/``var`` start as the
    mean and (population) variance of those norms. At each later step with norm ``g``::

        sigma = sqrt(var);  z = (g - mu) / (sigma + eps)
        mode "zscore", z > z_thresh (clipped):
            clip_option "adaptive_scaling": c = (mu + z_thresh * sigma / (z / z_thresh))
                                                * clip_factor
            clip_option "mean":             c = mu
        mode "percentile", g > mu + z_thresh * sigma (clipped): c = mu + z_thresh * sigma
        otherwise no adaptive clip (c = g)
        threshold = min(c, max_grad_norm)   (max_grad_norm=None: no cap)
        v = c if clipped else g             (skip_update_on_spike: clipped steps update nothing)
        mu  <- alpha * mu + (1 - alpha) * v
        var <- alpha * var + (1 - alpha) * (v - mu)^2     (with the new mu)

    The coefficient is ``min(1, threshold / (g + 1e-6))``. State lives on the device and
    is updated with ``torch.where``: no host sync. Unlike the reference, a non-finite
    norm leaves ``mu``/``var`` untouched (it would poison them for good).
    """

    @checked(
        alpha=Number(
            exclusive_minimum=0,
            exclusive_maximum=1,
            hint="It is the EMA smoothing factor in (0, 1); at 1 the EMA would never move.",
        ),
        z_thresh=Number(
            exclusive_minimum=0, hint="It is the z-score above which a norm is clipped."
        ),
        warmup_steps=IntAtLeast(1, hint="It is how many norms seed the EMA."),
        max_grad_norm=OrNone(
            Number(exclusive_minimum=0), hint="Pass a positive cap, or None for no fixed cap."
        ),
        eps=Number(exclusive_minimum=0, hint="It keeps z finite when the norms do not vary."),
        mode=OneOf(*ZCLIP_MODES),
        clip_option=OneOf(*ZCLIP_OPTIONS),
        clip_factor=Number(exclusive_minimum=0, hint="It scales the adaptive threshold."),
        skip_update_on_spike=Flag(),
    )
    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        *,
        max_grad_norm: float | None = 1.0,
        eps: float = 1e-6,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
    ) -> None:
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.warmup_steps = int(warmup_steps)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.eps = float(eps)
        self.mode = mode
        self.clip_option = clip_option
        self.clip_factor = float(clip_factor)
        self.skip_update_on_spike = skip_update_on_spike
        self.reset()

    def reset(self) -> None:
        self._warmup: Tensor | None = None
        self._count = 0  # warm-up norms collected
        self._steps = 0  # steps seen in all
        self.mean: Tensor | None = None
        """EMA of the gradient norm (a device scalar; None during warm-up)."""
        self.var: Tensor | None = None
        """EMA of its variance (a device scalar; None during warm-up)."""

    @property
    def steps_seen(self) -> int:
        return self._steps

    def _cap(self, value: Tensor) -> Tensor:
        return value if self.max_grad_norm is None else value.clamp(max=self.max_grad_norm)

    def threshold(self, norm: Tensor) -> Tensor:
        self._steps += 1
        finite = torch.isfinite(norm)
        if self.mean is None or self.var is None:
            return self._warm_up(norm, finite)
        mean, var = self.mean, self.var
        std = var.sqrt()
        if self.mode == "percentile":
            limit = mean + self.z_thresh * std
            clipped = norm > limit
            adaptive = limit
        else:
            z = (norm - mean) / (std + self.eps)
            clipped = z > self.z_thresh
            if self.clip_option == "mean":
                adaptive = mean
            else:
                eta = z / self.z_thresh
                adaptive = (mean + self.z_thresh * std / eta) * self.clip_factor
        value = torch.where(clipped, adaptive, norm)
        update = finite & ~clipped if self.skip_update_on_spike else finite
        new_mean = self.alpha * mean + (1 - self.alpha) * value
        new_var = self.alpha * var + (1 - self.alpha) * (value - new_mean) ** 2
        self.mean = torch.where(update, new_mean, mean)
        self.var = torch.where(update, new_var, var)
        # Unclipped steps pass through (threshold = the norm itself, coefficient ~1).
        return self._cap(torch.where(clipped, adaptive, norm.clamp_min(0) + NORM_EPS))

    def _warm_up(self, norm: Tensor, finite: Tensor) -> Tensor:
        if self._warmup is None or self._warmup.device != norm.device:
            self._warmup = torch.full((self.warmup_steps,), math.nan, device=norm.device)
        self._warmup[self._count].copy_(torch.where(finite, norm, math.nan))
        self._count += 1
        if self._count == self.warmup_steps:  # host-side counter: no tensor is read
            mean = self._warmup.nanmean()
            var = (self._warmup - mean).square().nanmean()
            # All warm-up norms non-finite: start from zero rather than from NaN.
            self.mean = torch.nan_to_num(mean, nan=0.0)
            self.var = torch.nan_to_num(var, nan=0.0)
            self._warmup = None
        if self.max_grad_norm is None:
            return torch.full_like(norm, math.inf)
        return torch.full_like(norm, self.max_grad_norm)

    def __repr__(self) -> str:
        return (
            f"ZClip(alpha={self.alpha}, z_thresh={self.z_thresh}, "
            f"warmup_steps={self.warmup_steps}, max_grad_norm={self.max_grad_norm}, "
            f"mode={self.mode!r}, clip_option={self.clip_option!r}, "
            f"clip_factor={self.clip_factor}, skip_update_on_spike={self.skip_update_on_spike})"
        )


def resolve_clip(value: object) -> Clipper | None:
    """Turn ``watch(clip=...)`` into a :class:`Clipper` (or None), refusing bad values."""
    if value is None or isinstance(value, Clipper):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # np.float32 too
        value = float(plain(value))
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"clip must be a positive, finite max gradient norm, got {value!r}. Pass "
                "e.g. clip=1.0 (clip the global gradient norm to 1.0), a clipper such as "
                "gradwatch.ZClip(), or None for no clipping."
            )
        return ClipNorm(float(value))
    hint = ""
    if isinstance(value, type) and issubclass(value, Clipper):
        hint = f" You passed the class; pass an instance, e.g. clip={value.__name__}()."
    raise TypeError(
        f"clip must be a number (max gradient norm), a gradwatch clipper (ClipNorm, "
        f"ClipValue, AGC, AutoClip, ZClip) or None, got {type(value).__name__} "
        f"{value!r}.{hint}"
    )
