"""The :class:`FixTrial` record: one fix, tried on a copy of the model from its starting
weights, and what came of it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from gradwatch._alerts import SEVERITY_RANK, Alert
from gradwatch._diagnosis.record import Diagnosis
from gradwatch._format import fmt, json_number

#: The ids of the fixes gradwatch can apply itself (README, "Try the fixes").
FIX_IDS: tuple[str, ...] = (
    "lr_div_10",
    "lr_div_100",
    "lr_raise",
    "linear_warmup",
    "clip_grad_norm",
    "reinit",
)


def tail_loss(losses: Sequence[float]) -> float:
    """The mean loss over the last tenth of a run (at least one step), less noisy than
    the last step's; NaN without losses, non-finite when any of those steps was."""
    if not losses:
        return math.nan
    tail = list(losses[-max(1, len(losses) // 10) :])
    return sum(tail) / len(tail)


@dataclasses.dataclass(frozen=True)
class FixTrial:
    """One fix, applied to a copy of the model from its starting weights (a deep copy
    taken before the check trained it) and checked again with the same batches, steps,
    loss, optimizer class and settings, and random state.

    Attributes:
        fix: the fix's id, one of :data:`FIX_IDS` (``"lr_div_10"``, ``"reinit"``...).
        description: what was changed, with the numbers (``"learning rate 1 -> 0.1 in
            every parameter group"``).
        causes: the diagnosed causes this fix addresses.
        ok: the re-run raised no warning or error.
        alerts: every alert of the re-run.
        diagnoses: the causes the re-run still shows (empty when ``ok``).
        steps: optimizer steps the re-run took.
        final_loss: the re-run's mean loss over its last tenth of steps.
        original_final_loss: the same for the original (unfixed) run.
        error: why the re-run did not finish (an exception from the training code), or
            None.
    """

    fix: str
    description: str
    causes: tuple[str, ...]
    ok: bool
    alerts: tuple[Alert, ...]
    diagnoses: tuple[Diagnosis, ...]
    steps: int
    final_loss: float
    original_final_loss: float
    error: str | None = None

    @property
    def problems(self) -> tuple[Alert, ...]:
        """The re-run's alerts of severity warning or error."""
        return tuple(a for a in self.alerts if SEVERITY_RANK[a.severity] >= 1)

    @property
    def loss_ratio(self) -> float:
        """``final_loss / original_final_loss``: below 1 the fix ended lower. NaN when
        either is not a finite number or the original is 0."""
        a, b = self.final_loss, self.original_final_loss
        if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
            return math.nan
        return a / b

    def comparison(self) -> str:
        """The final loss against the original's, in words."""
        a, b = self.final_loss, self.original_final_loss
        if math.isfinite(a) and not math.isfinite(b):
            return f"{fmt(a)} (original {fmt(b)})"
        ratio = self.loss_ratio
        if not math.isfinite(ratio):
            return f"{fmt(a)} (original {fmt(b)})"
        return f"{fmt(a)} ({fmt(ratio, 2)}x the original {fmt(b)})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (README, "JSON output")."""
        return {
            "fix": self.fix,
            "description": self.description,
            "causes": list(self.causes),
            "ok": self.ok,
            "steps": self.steps,
            "final_loss": json_number(self.final_loss),
            "original_final_loss": json_number(self.original_final_loss),
            "loss_ratio": json_number(self.loss_ratio),
            "error": self.error,
            "problems": len(self.problems),
            "remaining_causes": [d.cause for d in self.diagnoses],
            "alerts": [alert.to_dict() for alert in self.alerts],
        }
