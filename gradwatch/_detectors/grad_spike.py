"""``grad_spike``: the total gradient norm jumps far above its recent values.

Judged on a robust rolling z-score of log(‖g‖) (gradient norms fluctuate
multiplicatively): median and MAD of the previous ``spike_window`` steps, after
``spike_warmup`` of them; see :func:`._spike.spike_of`. The alert names the layer whose
gradient jumped most against its own recent median.
"""

from __future__ import annotations

import numpy as np

from gradwatch._alerts import Alert
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
    return [
        Alert(
            kind="grad_spike",
            severity="error" if spike.ratio >= config.spike_ratio**3 else "warning",
            step=record.step,
            layer=None if layer is None else context.layer_names[layer],
            message=f"The total gradient norm jumped to {fmt(spike.value)}, {fmt(spike.ratio)}x "
            f"its rolling median of {fmt(spike.median)} over the last {spike.samples} steps "
            f"(robust z-score {fmt(spike.z)}).{where} One step this large can undo much of "
            "the training so far.",
            value=spike.value,
            threshold=spike.median * config.spike_ratio,
            remedy=REMEDY,
        )
    ]
