"""``dead_units``: ReLU units that output zero for every sample of a batch.

A ReLU unit whose pre-activation is negative for every input gets no gradient, so it
never recovers: a large negative bias, a too-high learning rate or a bad init can kill
most of a layer. The statistic is the fraction of a rectifier's units (``ReLU``,
``ReLU6``) that output <= 0 for every sample of the batch (``act_dead/<module>``,
measured on batches of at least 4 samples). The detector warns when at least
``dead_units_threshold`` of a module's units were dead at each of the last two sampled
steps, raises an error when the whole layer is dead (no gradient passes at all), and
says so as info from half the threshold.
"""

from __future__ import annotations

from gradwatch._alerts import Alert
from gradwatch._detectors._base import DetectorContext
from gradwatch._detectors._sampled import grade, held_values, list_names, sampled_records
from gradwatch._history import History
from gradwatch._measure.activations import ROLE_RECTIFIER

HOLD = 2

REMEDY = (
    "initialise biases at 0 or slightly positive (e.g. 0.01) rather than negative, use "
    "He/Kaiming init (nn.init.kaiming_normal_(w, nonlinearity='relu')), lower the "
    "learning rate, add BatchNorm/LayerNorm before the ReLU, or use LeakyReLU/GELU, "
    "which never stop passing gradient."
)


def detect_dead_units(history: History, context: DetectorContext) -> list[Alert]:
    records = sampled_records(history, HOLD)
    if not records:
        return []
    held = held_values(records, "dead", ROLE_RECTIFIER)
    threshold = context.config.dead_units_threshold
    graded = grade(held, threshold)
    if graded is None:
        return []
    severity, level, flagged = graded
    first = flagged[0]
    value = held[first]
    if value >= 1.0 and severity == "warning":
        severity = "error"
    others = f" (dead layers: {list_names(flagged)})" if len(flagged) > 1 else ""
    return [
        Alert(
            kind="dead_units",
            severity=severity,  # type: ignore[arg-type]
            step=records[-1].step,
            layer=first,
            message=(
                f"{value:.0%} of the units of {list_names([first])} output zero for every "
                f"sample of the batch over the last {len(records)} sampled step(s){others}; "
                "a dead ReLU unit gets no gradient and never recovers."
            ),
            value=value,
            threshold=level,
            remedy=REMEDY,
        )
    ]
