"""``saturation``: bounded activations (sigmoid, tanh, ...) stuck at their bounds.

A saturated sigmoid/tanh passes almost no gradient (its derivative there is below 4% of
its peak; sigmoid's peak is only 0.25), so the layers below it stop learning. The
statistic is the fraction of a module's outputs within 1% of the activation's range from
a bound (``act_saturated/<module>``). The detector warns when at least
``saturation_threshold`` of a module's outputs were saturated at each of the last two
sampled steps (stuck, not a passing state), and says so as info from half that level.
A bounded activation with no Linear/Conv layer after it is the model's output (a
confident classifier, a tanh-squashed action), not a gradient problem, and is ignored.
"""

from __future__ import annotations

from gradwatch._alerts import Alert
from gradwatch._detectors._base import DetectorContext
from gradwatch._detectors._sampled import grade, held_values, list_names, sampled_records
from gradwatch._history import History
from gradwatch._measure.activations import ROLE_BOUNDED, ROLE_MIXING

#: How many sampled steps a level must hold for (the latest included).
HOLD = 2

REMEDY = (
    "initialise the weights feeding it with Xavier/Glorot init "
    "(nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain('tanh'))) instead of large "
    "or N(0, 1) weights; put BatchNorm/LayerNorm before the activation; use ReLU/GELU "
    "instead of sigmoid/tanh in hidden layers; and a lower learning rate if it "
    "saturates during training."
)


def detect_saturation(history: History, context: DetectorContext) -> list[Alert]:
    records = sampled_records(history, HOLD)
    if not records:
        return []
    latest = records[-1]
    held = held_values(records, "saturated", ROLE_BOUNDED)
    roles = latest.activation_roles or ()
    layers = latest.activation_layers or ()
    mixing = [i for i, role in enumerate(roles) if role == ROLE_MIXING]
    last_mixing = mixing[-1] if mixing else -1
    hidden = {name: value for name, value in held.items() if layers.index(name) < last_mixing}
    threshold = context.config.saturation_threshold
    graded = grade(hidden, threshold)
    if graded is None:
        return []
    severity, level, flagged = graded
    first = flagged[0]
    value = hidden[first]
    more = len(flagged) - 1
    kind_of = f"and {more} more bounded activation(s) are" if more else "is"
    return [
        Alert(
            kind="saturation",
            severity=severity,  # type: ignore[arg-type]
            step=latest.step,
            layer=first,
            message=(
                f"{value:.0%} of the outputs of {list_names([first])} {kind_of} stuck at "
                f"the activation's bounds over the last {len(records)} sampled step(s) "
                f"(saturated modules: {list_names(flagged)}); there the derivative is "
                "near 0, so little gradient reaches the layers below."
            ),
            value=value,
            threshold=level,
            remedy=REMEDY,
        )
    ]
