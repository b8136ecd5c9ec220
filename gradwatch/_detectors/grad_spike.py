"""``grad_spike``: the total gradient norm jumps far above its recent values.

Judged on a robust rolling z-score of log(‖g‖) (gradient norms fluctuate
multiplicatively): median and MAD of the previous ``spike_window`` steps, after
``spike_warmup`` of them; see :func:`._spike.spike_of`. The alert names the layer whose
gradient jumped most against its own recent median. A spike below ``spike_ratio`` squared
while the loss of that step stays ordinary (below ``CALM_LOSS_RATIO`` times its rolling
median) is an info: a model leaving a plateau, or a step the user's own clipping bounds,
does that; the loss spike that would follow a harmful one is judged by ``loss_spike``.
"""

from __future__ import annotations

import numpy as np

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext
from gradwatch._detectors._common import layer_label, nanmedian
from gradwatch._detectors._spike import spike_of
from gradwatch._format import fmt
from gradwatch._history import History

REMEDY = (
    "clip gradients (gradwatch.watch(..., clip=1.0), or an adaptive clipper such as "
    "gradwatch.ZClip); lower the learning rate; check that batch for outliers; in recurrent "
    "nets clip gradients and prefer LSTM/GRU."
)


#: A loss below this many times its rolling median at the spike's step is ordinary.
CALM_LOSS_RATIO = 1.5


def _loss_ratio(history: History, window: int) -> float | None:
    """The latest loss over the median of the ``window`` losses before it (None when
    the loss is not recorded)."""
    losses = history.series("loss", window + 1)
    previous = losses[:-1][np.isfinite(losses[:-1])]
    if not previous.size or not np.isfinite(losses[-1]):
        return None
    center = float(np.median(previous))
    return float(losses[-1]) / center if center > 0 else None


def detect_grad_spike(history: History, context: DetectorContext) -> list[Alert]:
    record = history.latest
    if record is None or record.skipped or record.amp_skipped:
        return []  # a step skipped by a policy was already reported by it
    config = context.config
    spike = spike_of(history.series("total_grad_norm", config.spike_window + 1), config, log=True)
    if spike is None:
        return []
    recent = history.matrix("grad_norm", config.spike_window + 1)
    layer = None
    with np.errstate(all="ignore"):
        medians = nanmedian(recent[:-1], axis=0)
        jump = recent[-1] / medians
    jump[~np.isfinite(jump)] = 0.0
    if jump.size and jump.max() > 0:
        layer = int(np.argmax(jump))
    where = (
        f" Layer {layer_label(context, layer)} jumped most ({fmt(float(jump[layer]))}x)."
        if layer is not None
        else ""
    )
    severity: Severity = "error" if spike.ratio >= config.spike_ratio**3 else "warning"
    loss_ratio = _loss_ratio(history, config.spike_window)
    calm = (
        severity == "warning"
        and spike.ratio < config.spike_ratio**2
        and loss_ratio is not None
        and loss_ratio < CALM_LOSS_RATIO
    )
    if calm:
        # A larger gradient while the loss stays ordinary: often a model leaving a
        # plateau (or a clipped step); worth seeing, not an alarm on its own.
        severity = "info"
        where += (
            f" The loss at that step was ordinary ({fmt(loss_ratio or 0.0)}x its rolling "
            "median): if it spikes next, this was the warning."
        )
    return [
        Alert(
            kind="grad_spike",
            severity=severity,
            step=record.step,
            layer=None if layer is None else context.layer_names[layer],
            message=f"The total gradient norm jumped to {fmt(spike.value)}, {fmt(spike.ratio)}x "
            f"its rolling median of {fmt(spike.median)} over the last {spike.samples} steps "
            f"(robust z-score {fmt(spike.z)}).{where}"
            + ("" if calm else " One step this large can undo much of the training so far."),
            value=spike.value,
            threshold=spike.median * config.spike_ratio,
            remedy=REMEDY,
        )
    ]
