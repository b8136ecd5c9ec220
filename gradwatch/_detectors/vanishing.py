"""``vanishing``: layers the loss can no longer reach through their gradients.

Backpropagation multiplies the gradient by each layer's Jacobian on its way back from
the output; factors below 1 (saturated sigmoid/tanh, weights too small, a deep stack of
default-initialised ReLU layers) make it shrink exponentially, so the input-side layers
barely learn while the output-side ones do.

What is compared is each layer's *loss sensitivity* s = ‖g‖·‖w‖: to first order, the
change of the loss when the layer's weights are scaled by (1 + ε) is at most ε·s. Unlike
‖g‖ alone it does not depend on the layer's size or weight scale (in a ReLU or linear
stack without biases it is the same for every layer), so a layer with s far below the
layers above it is starved of gradient. A zero-initialised layer is given the model's
typical weight scale instead of its ≈0 norm (see ``weight_floor``). Three signs, all
smoothed by a median over the last ``trend_window`` steps:

* across depth: a weight layer whose s is below ``vanishing_ratio`` times the largest s
  of the layers after it (closer to the output); borderline cases (below its 3/4 power)
  are an info, and only when the input-most layer is among them and layers of its own
  kind (module type and size) closer to the output, if there are any, are at least
  1/``PEER_TREND`` times as sensitive: a gradient that vanishes shrinks layer after layer
  on its way to the input, so the same kind of layer is starved on the input side only.
  A branch that matters less than the output layer is starved alike in every block (a
  transformer's attention on data without structure, against an untied output layer 30x
  more sensitive: 0.31 in the first block, 0.38 in the last), and is no such pattern;
* exact zeros: a layer that has a gradient, but one that is exactly zero, at most of the
  last steps while layers after it do get gradient (cut off, e.g. by dead ReLUs);
* absolute: even the most sensitive layer has s below ``vanishing_floor`` times the loss,
  so no layer can move the loss (a deep chain of W = 0.5·I layers).

Normalisation and embedding layers are left out of the depth comparison: their scales sit
near 1 whatever the depth, and an embedding's gradient is sparse by design. The output
layer (the last weight layer in depth) is no reference for the layers before it: it
reads the model out straight into the loss, and its s grows with the number of outputs,
which the chain argument above does not cover. In a healthy Hugging Face Llama with an
untied 32,000-word head, the head's s was 27-33 against 0.19-0.26 for the blocks' layers
(ratios 0.006-0.01: vanishing warnings from step 4 on, before this rule).
"""

from __future__ import annotations

import numpy as np

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext, trend_detector
from gradwatch._detectors._common import layer_label, median, nanmedian, record_weight_floor
from gradwatch._format import fmt
from gradwatch._history import History

REMEDY = (
    "use ReLU/GELU instead of sigmoid/tanh; initialise with He (ReLU) or Xavier (tanh) "
    "initialisation so that each layer's gain stays near 1; add normalisation "
    "(BatchNorm/LayerNorm) and residual (skip) connections so gradient reaches the input "
    "side; a slightly higher learning rate helps only a little in deep nets."
)

#: A borderline (info) alert needs the input-most layer to be at most this fraction as
#: sensitive as the most sensitive layer of its kind closer to the output (when it has
#: one): over a whole depth, a vanishing gradient differs by far more than 2x.
PEER_TREND = 0.5

#: Steps of history needed before judging (the first steps of zero-initialised layers
#: legitimately give exact zeros below them).
MIN_STEPS = 5


def _names(context: DetectorContext, layers: np.ndarray, limit: int = 3) -> str:
    shown = ", ".join(layer_label(context, int(i)) for i in layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def _input_side(
    context: DetectorContext, candidates: np.ndarray, values: np.ndarray, flagged: np.ndarray
) -> bool:
    """Whether borderline evidence reads as a gradient vanishing towards the input: the
    input-most candidate is ``flagged`` (a mask over the depth-ordered ``candidates``),
    and the layers of its kind (module type and size) closer to the output, if any, are
    at least 1/``PEER_TREND`` times as sensitive as it."""
    if not flagged[0]:
        return False
    first = int(candidates[0])
    kinds = context.module_types
    sizes = context.layer_numel
    peers = [
        position
        for position, layer in enumerate(candidates[1:].tolist(), start=1)
        if kinds[layer] == kinds[first] and (not sizes or sizes[layer] == sizes[first])
    ]
    return not peers or bool(values[0] <= PEER_TREND * values[peers].max())


@trend_detector
def detect_vanishing(history: History, context: DetectorContext) -> list[Alert]:
    config = context.config
    records = [r for r in history.last(config.trend_window) if not r.amp_skipped]
    if len(records) < min(MIN_STEPS, config.trend_window):
        return []
    latest = records[-1]
    grads = np.stack([r.grad_norm for r in records])
    weights = np.stack([r.weight_norm for r in records])
    if not np.isfinite(grads[np.stack([r.has_grad for r in records])]).all():
        return []  # NaN/inf around: the nonfinite and exploding detectors speak
    floors = np.stack([record_weight_floor(context, r) for r in records])
    sensitivity = grads * np.maximum(weights, floors)
    mask = context.depth_mask & latest.has_grad
    with np.errstate(all="ignore"):
        smoothed = nanmedian(sensitivity, axis=0)
        # Fraction of steps with an exactly zero gradient, among steps that had one
        # (NaN for a layer that never had a gradient in the window; no warning for it).
        had = ~np.isnan(grads)
        zero_fraction = ((grads == 0) & had).sum(axis=0) / had.sum(axis=0)
    candidates = np.flatnonzero(mask & np.isfinite(smoothed))
    if candidates.size == 0:
        return []

    alert = _absolute(history, context, candidates, smoothed, latest.step)
    if alert is not None:
        return [alert]
    return _across_depth(context, candidates, smoothed, zero_fraction, latest.step)


def _absolute(
    history: History,
    context: DetectorContext,
    candidates: np.ndarray,
    smoothed: np.ndarray,
    step: int,
) -> Alert | None:
    losses = history.series("loss", context.config.trend_window)
    losses = np.abs(losses[np.isfinite(losses)])
    if losses.size < min(MIN_STEPS, context.config.trend_window):
        return None
    loss = median(losses)
    if not loss > 0:
        return None
    best = float(smoothed[candidates].max()) / loss
    floor = context.config.vanishing_floor
    if best >= floor:
        return None
    first = int(candidates[0])
    return Alert(
        kind="vanishing",
        severity="error",
        step=step,
        layer=context.layer_names[first],
        message=f"No layer can move the loss: the largest loss sensitivity ‖g‖·‖w‖ of any layer "
        f"is {fmt(best)} times the loss ({fmt(loss)}), below {fmt(floor)}, so gradients "
        "have vanished everywhere and the weights will not change.",
        value=best,
        threshold=floor,
        remedy=REMEDY,
    )


def _across_depth(
    context: DetectorContext,
    candidates: np.ndarray,
    smoothed: np.ndarray,
    zero_fraction: np.ndarray,
    step: int,
) -> list[Alert]:
    config = context.config
    values = smoothed[candidates]
    # The references: every layer but the output layer (the last in depth; see the
    # module's docstring), which is judged against nothing either, having nothing after it.
    references = values.copy()
    references[-1] = -np.inf
    # the largest sensitivity among the layers after each one (closer to the output)
    after = np.maximum.accumulate(references[::-1])[::-1]
    above = np.append(after[1:], -np.inf)
    if not np.isfinite(above).any() or not (above > 0).any():
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(above > 0, values / above, np.inf)
    zeros = (zero_fraction[candidates] > 0.5) & (above > 0)
    ratio[zeros] = 0.0
    info_level = config.vanishing_ratio**0.75
    flagged = ratio < info_level
    if not flagged.any():
        return []
    worst = float(ratio[flagged].min())
    severity: Severity
    if worst < config.vanishing_ratio**2:
        severity = "error"
    elif worst < config.vanishing_ratio:
        severity = "warning"
    else:
        severity = "info"
    level = config.vanishing_ratio if severity != "info" else info_level
    affected = candidates[ratio < level]
    first = int(affected[0])
    # At info level, ``level`` is ``info_level``: the affected layers are ``flagged``.
    if severity == "info" and not _input_side(context, candidates, values, flagged):
        return []  # borderline and not the input-side pattern: not worth a word
    reference = int(candidates[int(np.argmax(references))])
    if zeros.any():
        zero_layers = candidates[zeros]
        what = (
            f"{len(zero_layers)} layer(s) get an exactly zero gradient "
            f"({_names(context, zero_layers)}) "
            "while layers after them do not: gradient no longer reaches them (dead ReLUs, a "
            "saturated or blocked path)"
        )
    else:
        what = (
            f"{len(affected)} of {len(candidates)} weight layers get almost no gradient: "
            f"layer {layer_label(context, first)} has a loss sensitivity ‖g‖·‖w‖ of "
            f"{fmt(float(smoothed[first]))}, {fmt(float(ratio[candidates == first][0]))} times "
            f"the layers after it (the most sensitive is {layer_label(context, reference)} at "
            f"{fmt(float(smoothed[reference]))})"
        )
    return [
        Alert(
            kind="vanishing",
            severity=severity,
            step=step,
            layer=context.layer_names[first],
            message=f"{what}. First affected, input side first: {_names(context, affected)}. "
            "These layers barely learn: gradients are vanishing on the way back from the "
            "output.",
            value=float(ratio[candidates == first][0]),
            threshold=level,
            remedy=REMEDY,
        )
    ]
