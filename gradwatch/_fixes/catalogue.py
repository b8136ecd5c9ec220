"""What fixes gradwatch can apply itself, which causes each addresses, and which to try.

A :class:`Fix` is declarative (a learning-rate factor, a warmup length, a clipping norm,
a re-initialisation); :mod:`~gradwatch._fixes.trial` applies it to a copy. Only causes
whose remedy gradwatch can carry out without editing the user's code get fixes: a
learning rate, a schedule, clipping, the initial weights. Adding normalisation or skip
connections, fixing the data or the loss function stay the user's job (the diagnosis's
remedies say how).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gradwatch._diagnosis.record import Diagnosis
from gradwatch._format import fmt

#: At most this many fixes are tried, so a trial run costs at most this many times the
#: original check.
MAX_TRIALS = 6
#: ``try_fixes`` needs at least this many steps: fewer cannot show whether a fix works
#: (the detectors judge trends over several steps).
MIN_STEPS = 10
#: The learning rate ``lr_raise`` sets: the usual default of adaptive optimizers (Adam
#: family) and of the others (SGD).
USUAL_LR = {True: 1e-3, False: 1e-2}
#: The clipping norm when no step before the failure shows a healthy one.
DEFAULT_CLIP = 1.0
#: A learning rate below this is "too low to learn" (the diagnosis's own threshold).
TINY_LR = 1e-5

#: Which fixes each cause calls for, most promising first. Causes missing here have no
#: fix gradwatch can apply itself (data, the loss's code, mixed precision, structure).
FIXES_FOR: dict[str, tuple[str, ...]] = {
    "learning_rate_too_high": ("lr_div_10", "lr_div_100", "linear_warmup", "clip_grad_norm"),
    "missing_warmup": ("linear_warmup", "lr_div_10"),
    "attention_logit_growth": ("lr_div_10", "linear_warmup", "lr_div_100"),
    "output_logit_divergence": ("lr_div_10", "linear_warmup", "lr_div_100"),
    # Orthogonal recurrent weights (gain 1 through time) first: clipping bounds the
    # update, not a state that grows or shrinks geometrically over the sequence.
    "recurrent_instability": ("reinit", "clip_grad_norm", "lr_div_10"),
    "poor_initialisation": ("reinit",),
    "saturating_activations": ("reinit",),
    "depth_without_skip_or_norm": ("reinit",),
    "dead_relus": ("reinit",),
    "learning_rate_too_low": ("lr_raise",),
}
#: Alert kinds that show a gradient too large: only then can clipping help.
_LARGE_GRADIENT = ("exploding", "grad_spike", "loss_spike", "nonfinite", "update_size")


@dataclasses.dataclass(frozen=True)
class Fix:
    """One fix to try.

    Attributes:
        id: one of :data:`gradwatch._fixes.record.FIX_IDS`.
        causes: the diagnosed causes it addresses.
        description: what it changes, with the numbers.
        lr_factor: multiply every parameter group's learning rate by this.
        lr_value: set every parameter group's learning rate to this.
        warmup_steps: a linear warmup from 1/n of the rate to all of it over n steps.
        clip_norm: clip the total gradient norm to this before every step.
        reinit: re-initialise the weight layers to fit their activation.
    """

    id: str
    causes: tuple[str, ...]
    description: str
    lr_factor: float | None = None
    lr_value: float | None = None
    warmup_steps: int = 0
    clip_norm: float | None = None
    reinit: bool = False


@dataclasses.dataclass(frozen=True)
class Context:
    """What choosing and describing the fixes needs to know of the original run.

    Attributes:
        lr: the first parameter group's learning rate (None when unknown).
        adaptive: the optimizer scales its steps by the gradient (Adam family...).
        steps: the steps of the check.
        grad_norms: the total gradient norm of each measured step, in order.
        norm_steps: the step of each of ``grad_norms``.
    """

    lr: float | None
    adaptive: bool
    steps: int
    grad_norms: Sequence[float] = ()
    norm_steps: Sequence[int] = ()

    def median_norm_before(self, step: int) -> float | None:
        """The median finite, positive total gradient norm of the steps before ``step``;
        None when there is none (the failure was there from the first step)."""
        norms = np.asarray(self.grad_norms, dtype=np.float64)
        at = np.asarray(self.norm_steps, dtype=np.int64)
        if not norms.size or at.size != norms.size:
            return None
        chosen = norms[at < step]
        chosen = chosen[np.isfinite(chosen) & (chosen > 0)]
        return float(np.median(chosen)) if chosen.size else None


def warmup_length(steps: int) -> int:
    """The warmup of a trial: a quarter of the check, at least 5 steps (half of the
    shortest check), so a short check still sees the rate climb."""
    return min(max(5, steps // 4), max(2, steps // 2))


def _make(fix_id: str, causes: tuple[str, ...], context: Context, first_step: int) -> Fix | None:
    lr = context.lr
    if fix_id in ("lr_div_10", "lr_div_100"):
        if lr is not None and lr == 0:
            return None  # dividing a zero rate changes nothing
        factor = 0.1 if fix_id == "lr_div_10" else 0.01
        what = f"{fmt(lr)} -> {fmt(lr * factor)}" if lr is not None else f"x{fmt(factor)}"
        return Fix(
            fix_id, causes, f"learning rate {what} in every parameter group", lr_factor=factor
        )
    if fix_id == "lr_raise":
        usual = USUAL_LR[context.adaptive]
        if lr is not None and lr >= TINY_LR:
            return None
        return Fix(
            fix_id,
            causes,
            f"learning rate {fmt(lr)} -> {fmt(usual)} (the usual value) in every group",
            lr_value=usual,
        )
    if fix_id == "linear_warmup":
        n = warmup_length(context.steps)
        return Fix(
            fix_id,
            causes,
            f"linear warmup of the learning rate from 1/{n} to its full value over the "
            f"first {n} steps (LambdaLR)",
            warmup_steps=n,
        )
    if fix_id == "clip_grad_norm":
        norm = context.median_norm_before(first_step)
        if norm is None:  # broken from the first step: no healthy norm to keep
            norm, why = DEFAULT_CLIP, "the usual max_norm; the run failed from its first step"
        else:
            why = f"the median before step {first_step}, where the trouble began"
        return Fix(
            fix_id,
            causes,
            f"clip the total gradient norm to {fmt(norm)} ({why}) before every step",
            clip_norm=norm,
        )
    if fix_id == "reinit":
        # The exact layers and inits are written by the trial once it sees the copy.
        return Fix(
            fix_id, causes, "re-initialise the weight layers to fit their activation", reinit=True
        )
    raise ValueError(f"unknown fix {fix_id!r}")


def _wanted(diagnosis: Diagnosis, fix_id: str, adaptive: bool) -> bool:
    """Whether ``fix_id`` fits this diagnosis's evidence."""
    kinds = {alert.kind for alert in diagnosis.evidence}
    if fix_id == "clip_grad_norm":
        # Clipping cures a gradient too large; an adaptive optimizer divides a large
        # gradient's scale out anyway, except through time in a recurrent net.
        if not kinds & set(_LARGE_GRADIENT):
            return False
        return not adaptive or diagnosis.cause == "recurrent_instability"
    return True


def propose(diagnoses: Sequence[Diagnosis], context: Context) -> list[Fix]:
    """The fixes to try for ``diagnoses`` (most likely cause first), at most
    :data:`MAX_TRIALS`, each once, with every cause it addresses."""
    order: list[str] = []
    causes: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for diagnosis in diagnoses:
        for fix_id in FIXES_FOR.get(diagnosis.cause, ()):
            if not _wanted(diagnosis, fix_id, context.adaptive):
                continue
            if fix_id not in causes:
                order.append(fix_id)
                causes[fix_id] = []
                first[fix_id] = diagnosis.step
            if diagnosis.cause not in causes[fix_id]:
                causes[fix_id].append(diagnosis.cause)
    fixes = []
    for fix_id in order:
        fix = _make(fix_id, tuple(causes[fix_id]), context, first[fix_id])
        if fix is not None:
            fixes.append(fix)
    return fixes[:MAX_TRIALS]
