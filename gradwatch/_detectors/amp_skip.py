"""``amp_skip``: the ``GradScaler`` skipped a step because its gradients overflowed.

With fp16 mixed precision this is routine - the scaler probes for the largest loss scale
that does not overflow, skips the step when one does and halves the scale - so it is an
``info`` alert, not a failure. It becomes a ``warning`` when the scaler keeps skipping:
after :data:`PERSISTENT_SKIPS` skipped steps in a row the scale has been divided by
2**PERSISTENT_SKIPS (at the default backoff), which overflow alone does not explain.
"""

from __future__ import annotations

from gradwatch._alerts import Alert
from gradwatch._detectors._base import DetectorContext
from gradwatch._history import History

#: Consecutive scaler-skipped steps after which the alert escalates to a warning.
PERSISTENT_SKIPS = 20

REMEDY = (
    "nothing while it is occasional (the GradScaler is calibrating its loss scale). If it "
    "persists, look for a NaN/inf loss or activations overflowing in fp16 (use bf16, "
    "keep the loss and softmax in float32, lower the learning rate)."
)


def detect_amp_skip(history: History, context: DetectorContext) -> list[Alert]:
    record = history.latest
    if record is None or not record.amp_skipped:
        return []
    run = 0
    for past in reversed(history.last(PERSISTENT_SKIPS)):
        if not past.amp_skipped:
            break
        run += 1
    persistent = run >= PERSISTENT_SKIPS
    if persistent:
        message = (
            f"The GradScaler skipped the last {run} optimizer steps in a row (inf/NaN "
            "gradients every time): training is not progressing."
        )
    else:
        message = (
            "The GradScaler found inf/NaN in the scaled gradients and skipped this step "
            "(parameters and optimizer state unchanged); it lowers the loss scale and goes on."
        )
    return [
        Alert(
            kind="amp_skip",
            severity="warning" if persistent else "info",
            step=record.step,
            layer=None,
            message=message,
            value=float(run),
            threshold=float(PERSISTENT_SKIPS) if persistent else None,
            remedy=REMEDY,
        )
    ]
