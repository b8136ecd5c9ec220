"""``loss_spike``: the loss jumps far above its recent values.

A sudden jump of the loss is the first visible symptom of an unstable step (too high a
learning rate, an exploding gradient, a bad batch). Judged on a robust rolling z-score:
median and MAD of the previous ``spike_window`` losses, after ``spike_warmup`` of them;
see :func:`._spike.spike_of`.
"""

from __future__ import annotations

from gradwatch._alerts import Alert
from gradwatch._detectors._base import DetectorContext
from gradwatch._detectors._spike import spike_of
from gradwatch._format import fmt
from gradwatch._history import History

REMEDY = (
    "lower the learning rate (or warm it up); clip gradients (gradwatch.watch(..., clip=1.0)); "
    "check that batch for bad inputs or labels; with Adam, a larger eps damps steps taken "
    "on tiny second-moment estimates."
)


def detect_loss_spike(history: History, context: DetectorContext) -> list[Alert]:
    record = history.latest
    if record is None or record.loss is None or record.skipped or record.amp_skipped:
        return []  # a step skipped by a policy was already reported by it
    config = context.config
    spike = spike_of(history.series("loss", config.spike_window + 1), config, log=False)
    if spike is None:
        return []
    return [
        Alert(
            kind="loss_spike",
            severity="error" if spike.ratio >= config.spike_ratio**3 else "warning",
            step=record.step,
            layer=None,
            message=f"The loss jumped to {fmt(spike.value)}, {fmt(spike.ratio)}x its rolling "
            f"median of {fmt(spike.median)} over the last {spike.samples} steps (robust "
            f"z-score {fmt(spike.z)}): training was thrown off by an unstable step.",
            value=spike.value,
            threshold=spike.median * config.spike_ratio,
            remedy=REMEDY,
        )
    ]
