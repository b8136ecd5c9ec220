"""``poor_init``: activation scale drifting geometrically with depth at the start.

Glorot & Bengio (2010): with a poor initialisation each layer multiplies the variance
of its input by a factor != 1, so the signal shrinks (PyTorch's default init in a deep
ReLU stack: about x0.4 in std per layer) or grows (N(0, 1) weights) geometrically with
depth, pushing units towards zero or into saturation. Measured from the forward pass at
the first sampled steps (before ``poor_init_steps``): the chain of Linear/Conv outputs,
in execution order, and for each its std across the batch (``act_batch_std``: the part
of the output that still depends on the input; a constant bias does not count). A
straight-line fit of log10(std) over the chain gives the per-layer factor; the total
drift is that factor to the power (layers - 1). Warning from ``poor_init_ratio``, info
from its square root; chains shorter than 4 layers are not judged.

Bounded activations (sigmoid, tanh) hide such a drift: they squash whatever arrives. So
the detector also measures each Linear/Conv layer's gain, the std of its output over the
RMS of its input, where the input is the activation module executed just before it:
Glorot/He-initialised layers have a gain between about 0.5 and 1.7 (He: sqrt(2), Xavier
for tanh: 5/3); N(0, 1) weights have sqrt(fan_in). A median gain of at least
``poor_init_gain`` over at least 3 layers warns (info from the midpoint between it and
5/3): the weights are too large and drive the activations into saturation. Small gains
are left to the drift test (residual blocks and normalisation legitimately use them).

Normalisation layers hide a poor initialisation from both tests; the loss does not: a
cross-entropy whose first steps sit above ``LOSS_OVER_CHANCE`` times its chance level
ln(classes) comes from outputs that are confidently wrong before any training (warning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._detectors._base import DetectorContext
from gradwatch._history import History
from gradwatch._measure.activations import (
    ROLE_ACTIVATION,
    ROLE_BOUNDED,
    ROLE_MIXING,
    ROLE_RECTIFIER,
)
from gradwatch._measure.record import StepRecord

_ACTIVATION_ROLES = (ROLE_BOUNDED, ROLE_RECTIFIER, ROLE_ACTIVATION)

#: Steps whose median loss is compared with chance (judged once, at the last of them).
LOSS_STEPS = 3
#: A first cross-entropy above this many times chance (ln(classes)) is a poor start.
LOSS_OVER_CHANCE = 3.0
#: Shortest chain of Linear/Conv layers whose drift is judged.
MIN_LAYERS = 4
#: Fewest (activation -> Linear/Conv) pairs whose median gain is judged.
MIN_GAINS = 3
#: The largest gain of a healthy initialisation (Xavier/Glorot for tanh: gain 5/3).
HEALTHY_GAIN = 5.0 / 3.0
#: The log-linear fit must explain at least this share of the variation: a drift, not
#: a scale that jumps around (norm layers, residual streams).
MIN_R2 = 0.6


def drift_fit(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log10(values) per position, and the fit's R²."""
    logs = np.log10(np.asarray(values, dtype=np.float64))
    if len(logs) < 2:
        return 0.0, 0.0
    positions = np.arange(len(logs), dtype=np.float64)
    slope, intercept = np.polyfit(positions, logs, 1)
    residual = logs - (slope * positions + intercept)
    total = float(((logs - logs.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 0.0
    return float(slope), r2


def _remedy(shrinking: bool, roles: Sequence[str]) -> str:
    if ROLE_BOUNDED in roles:
        return (
            "use Xavier/Glorot init for sigmoid/tanh layers "
            "(nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain('tanh'))), or switch "
            "hidden activations to ReLU/GELU with He init; BatchNorm/LayerNorm between "
            "layers also keeps the scale at 1."
        )
    if shrinking and ROLE_RECTIFIER in roles:
        return (
            "use He/Kaiming init for ReLU layers (nn.init.kaiming_normal_(w, "
            "nonlinearity='relu'); PyTorch's default init shrinks the variance of a ReLU "
            "stack about 6x per layer), add BatchNorm/LayerNorm, or residual connections."
        )
    return (
        "initialise weights with variance matched to fan-in (He init for ReLU, Xavier for "
        "tanh/sigmoid/linear) instead of "
        + ("tiny weights" if shrinking else "large or N(0, 1) weights")
        + "; add BatchNorm/LayerNorm or residual connections."
    )


def detect_poor_init(history: History, context: DetectorContext) -> list[Alert]:
    latest = history.latest
    config = context.config
    if latest is None or latest.step >= config.poor_init_steps:
        return []
    alerts = _loss_alert(history)
    if latest.activations:
        alerts += _drift_alert(latest, config) + _gain_alert(latest, config)
    return alerts


def _loss_alert(history: History) -> list[Alert]:
    """A cross-entropy that starts far above chance: the initial outputs are far too
    confident, which normalisation layers hide from the activation statistics (they
    rescale every layer's output) but not from the loss."""
    latest = history.latest
    if latest is None or latest.step != LOSS_STEPS - 1 or not latest.chance_loss:
        return []
    losses = history.series("loss", LOSS_STEPS)
    losses = losses[np.isfinite(losses)]
    if not losses.size:
        return []
    first = float(np.median(losses))
    chance = latest.chance_loss
    if not first > LOSS_OVER_CHANCE * chance:
        return []
    return [
        Alert(
            kind="poor_init",
            severity="warning",
            step=latest.step,
            layer=None,
            message=(
                f"The loss starts at {first:.3g} (median of the first {losses.size} steps), "
                f"{first / chance:.2g}x the {chance:.3g} of a uniform guess over the classes "
                f"(ln(classes)): the untrained model is confidently wrong, so its weights "
                f"(or its output layer) start far too large. Normalisation layers hide this "
                f"from the activation statistics, not from the loss."
            ),
            value=first,
            threshold=LOSS_OVER_CHANCE * chance,
            remedy=(
                "initialise with a small standard deviation (e.g. nn.init.normal_(w, "
                "std=0.02) for transformers; for Hugging Face models keep the config's "
                "initializer_range at its default 0.02), and start the output layer small "
                "or at zero so the first predictions are near uniform."
            ),
        )
    ]


def layer_gains(record: StepRecord) -> list[tuple[str, float]]:
    """(Linear/Conv layer, std of its output / RMS of the activation just before it)."""
    assert record.activations is not None
    layers = record.activation_layers or ()
    roles = record.activation_roles or ()
    mean, std = record.activations["mean"], record.activations["std"]
    gains = []
    for i in range(1, len(layers)):
        if roles[i] != ROLE_MIXING or roles[i - 1] not in _ACTIVATION_ROLES:
            continue
        rms_in = math.hypot(float(mean[i - 1]), float(std[i - 1]))
        if rms_in > 0 and math.isfinite(rms_in) and math.isfinite(float(std[i])):
            gains.append((layers[i], float(std[i]) / rms_in))
    return gains


def _gain_alert(record: StepRecord, config: WatchConfig) -> list[Alert]:
    gains = layer_gains(record)
    if len(gains) < MIN_GAINS:
        return []
    median = float(np.median([gain for _, gain in gains]))
    warn = config.poor_init_gain
    info = (warn + HEALTHY_GAIN) / 2
    if median >= warn:
        severity, threshold = "warning", warn
    elif median >= info:
        severity, threshold = "info", info
    else:
        return []
    roles = record.activation_roles or ()
    bounded = ROLE_BOUNDED in roles
    first = next(name for name, gain in gains if gain >= threshold)
    consequence = (
        "drives the sigmoid/tanh units into saturation, where almost no gradient passes"
        if bounded
        else "makes the activations and the gradients grow with depth"
    )
    return [
        Alert(
            kind="poor_init",
            severity=severity,  # type: ignore[arg-type]
            step=record.step,
            layer=None,  # about the whole stack (one episode), the message names layers
            message=(
                f"At the start of training each Linear/Conv layer multiplies the scale of "
                f"its input by a median x{median:.2g} (std of its output over the RMS of its "
                f"input, over {len(gains)} layers, from {first!r}); Glorot/He "
                f"initialisation keeps it near 1-1.7. The weights are too large, which "
                f"{consequence}."
            ),
            value=median,
            threshold=threshold,
            remedy=_remedy(False, roles),
        )
    ]


def _drift_alert(latest: StepRecord, config: WatchConfig) -> list[Alert]:
    assert latest.activations is not None
    layers = latest.activation_layers or ()
    roles = latest.activation_roles or ()
    stds = latest.activations["batch_std"]
    chain = [
        (name, float(std))
        for name, role, std in zip(layers, roles, stds)
        if role == ROLE_MIXING and np.isfinite(std) and std > 0
    ]
    if len(chain) < MIN_LAYERS:
        return []
    slope, r2 = drift_fit([std for _, std in chain])
    steps = len(chain) - 1
    drift = 10.0 ** (abs(slope) * steps)
    if r2 < MIN_R2 or not math.isfinite(drift):
        return []
    ratio = config.poor_init_ratio
    if drift >= ratio:
        severity, threshold = "warning", ratio
    elif drift >= math.sqrt(ratio):
        severity, threshold = "info", math.sqrt(ratio)
    else:
        return []
    shrinking = slope < 0
    per_layer = 10.0**slope
    (first, first_std), (last, last_std) = chain[0], chain[-1]
    return [
        Alert(
            kind="poor_init",
            severity=severity,  # type: ignore[arg-type]
            step=latest.step,
            layer=None,
            message=(
                f"At the start of training the activation scale "
                f"{'shrinks' if shrinking else 'grows'} geometrically with depth: "
                f"x{per_layer:.2g} per layer over {len(chain)} Linear/Conv layers, from "
                f"std {first_std:.2g} at {first!r} to {last_std:.2g} at {last!r} "
                f"({drift:.2g}x overall). Each layer should keep its output variance near "
                f"its input variance (Glorot/He); otherwise the signal "
                f"{'vanishes' if shrinking else 'explodes'} and so do the gradients."
            ),
            value=drift,
            threshold=threshold,
            remedy=_remedy(shrinking, roles),
        )
    ]
