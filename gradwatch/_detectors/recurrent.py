"""Vanishing and exploding gradients *through time* in recurrent layers.

Backpropagation through time multiplies the gradient by the recurrent Jacobian once per
time step (Bengio et al. 1994; Pascanu et al. 2013): with a recurrent weight whose
largest singular value is below 1 (times tanh's derivative) the gradient reaching the
first time step shrinks geometrically with the sequence length, so the layer cannot
learn dependencies on early inputs; above 1 it grows geometrically. Per-layer norms
cannot see it: the weights' gradient sums over all time steps.

Measured on sampled steps by the recurrent probe: for each ``nn.RNN/LSTM/GRU``, the
gradient norm reaching its input at the first and at the last time step, over a
sequence of T steps. Their ratio r and the per-step factor r^(1/(T-1)) are judged:

* ``vanishing`` (warning): r below ``VANISHING_RATIO`` with a per-step factor below
  ``VANISHING_RATE``; error when the first step gets exactly nothing (underflow); an
  info for gated cells (LSTM, GRU), whose gates learn how long to remember;
* ``exploding`` (warning): r above ``EXPLODING_RATIO`` with a per-step factor above
  ``EXPLODING_RATE``.

Sequences shorter than ``MIN_LENGTH`` are not judged.
"""

from __future__ import annotations

import math

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext
from gradwatch._format import fmt
from gradwatch._history import History

#: Gated cells: their vanishing through time is an info (see ``_vanishing``).
GATED = ("LSTM", "GRU")
MIN_LENGTH = 10
VANISHING_RATIO = 1e-6
VANISHING_RATE = 0.8
EXPLODING_RATIO = 1e6
EXPLODING_RATE = 1.25


def detect_recurrent(history: History, context: DetectorContext) -> list[Alert]:
    latest = history.latest
    if (
        latest is None
        or not latest.recurrent_layers
        or latest.recurrent_first is None
        or latest.recurrent_last is None
        or latest.recurrent_length is None
    ):
        return []
    alerts = []
    for name, first, last, length in zip(
        latest.recurrent_layers,
        latest.recurrent_first,
        latest.recurrent_last,
        latest.recurrent_length,
    ):
        first, last = float(first), float(last)
        if length < MIN_LENGTH or not (math.isfinite(first) and math.isfinite(last)):
            continue
        if not last > 0:
            continue  # nothing reached the last step either: not a through-time effect
        ratio = first / last
        rate = ratio ** (1.0 / (length - 1)) if ratio > 0 else 0.0
        if ratio < VANISHING_RATIO and rate < VANISHING_RATE:
            alerts.append(_vanishing(latest.step, name, first, last, ratio, rate, length, context))
        elif ratio > EXPLODING_RATIO and rate > EXPLODING_RATE:
            alerts.append(_exploding(latest.step, name, ratio, rate, length, context))
    return alerts


def _vanishing(
    step: int,
    name: str,
    first: float,
    last: float,
    ratio: float,
    rate: float,
    length: int,
    context: DetectorContext,
) -> Alert:
    kind = _module_type(name, context)
    severity: Severity = "error" if first == 0.0 else "warning"
    if kind in GATED:
        # LSTM/GRU gates learn how long to remember: a short memory at the start (forget
        # gates near 0.5) is where they begin, not a failure; worth knowing only.
        severity = "info"
    reached = (
        "nothing (it underflowed to 0)"
        if first == 0.0
        else f"{fmt(ratio)} of what reaches the last ({fmt(first)} vs {fmt(last)})"
    )
    return Alert(
        kind="vanishing",
        severity=severity,
        step=step,
        layer=name,
        message=f"Gradients vanish through time in {name!r}: over a sequence of {length} "
        f"steps, the gradient reaching the first time step is {reached}, a factor of "
        f"{fmt(rate)} per time step. The layer cannot learn how early inputs affect the "
        "output.",
        value=ratio,
        threshold=VANISHING_RATIO,
        remedy=_remedy(name, context, vanishing=True),
    )


def _exploding(
    step: int, name: str, ratio: float, rate: float, length: int, context: DetectorContext
) -> Alert:
    return Alert(
        kind="exploding",
        severity="warning",
        step=step,
        layer=name,
        message=f"Gradients explode through time in {name!r}: over a sequence of {length} "
        f"steps, the gradient reaching the first time step is {fmt(ratio)} times that "
        f"reaching the last, a factor of {fmt(rate)} per time step.",
        value=ratio,
        threshold=EXPLODING_RATIO,
        remedy=_remedy(name, context, vanishing=False),
    )


def _module_type(name: str, context: DetectorContext) -> str:
    if name in context.layer_names:
        return context.module_types[context.layer_names.index(name)]
    return ""


def _remedy(name: str, context: DetectorContext, *, vanishing: bool) -> str:
    kind = _module_type(name, context)
    gated = kind in GATED
    if vanishing:
        first = (
            "initialise the recurrent weights orthogonally at gain 1 "
            f"(nn.init.orthogonal_({name or 'rnn'}.weight_hh_l0)) and the LSTM forget-gate "
            "bias at 1, or shorten the sequences (truncated backpropagation through time)"
            if gated
            else f"replace the vanilla {kind or 'RNN'} with nn.LSTM or nn.GRU (their gates "
            "let gradient through many time steps), or initialise its recurrent weights "
            "orthogonally at gain 1 (nn.init.orthogonal_(weight_hh_l0))"
        )
        return first + "; a Transformer layer sees every time step directly."
    return (
        "clip gradients (gradwatch.watch(..., clip=1.0), as recurrent nets usually need), "
        "initialise the recurrent weights orthogonally (nn.init.orthogonal_) so their "
        "singular values are 1, and lower the learning rate"
        + ("." if gated else "; gated cells (nn.LSTM, nn.GRU) are more stable.")
    )
