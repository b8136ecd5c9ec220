"""The :class:`Alert` record that every detector raises and every sink writes."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "error")
SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}

#: Alert kinds of the public contract (DESIGN.md). Detectors may add more.
ALERT_KINDS: tuple[str, ...] = (
    "nonfinite",
    "exploding",
    "vanishing",
    "saturation",
    "dead_units",
    "poor_init",
    "not_learning",
    "loss_spike",
    "grad_spike",
    "amp_skip",
)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One diagnosis: what is wrong, where, when, how badly, and what to try.

    Attributes:
        kind: what went wrong, one of :data:`ALERT_KINDS` (or a detector's own kind).
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        step: the optimizer step (counted from 0) whose statistics raised it.
        layer: the module's qualified name as in ``model.named_modules()``
            (``""`` for the root module), or ``None`` when the alert is about the
            whole model (e.g. the loss).
        message: one or two sentences saying what was measured and why it matters.
        value: the measured value that crossed the threshold, if any.
        threshold: the threshold it crossed, if any.
        remedy: a concrete thing to try.
    """

    kind: str
    severity: Severity
    step: int
    layer: str | None
    message: str
    value: float | None = None
    threshold: float | None = None
    remedy: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def where(self) -> str:
        """Human text for the layer: its name, ``(root module)`` or ``(model)``."""
        if self.layer is None:
            return "(model)"
        return self.layer or "(root module)"

    def format(self) -> str:
        """One readable line, plus the remedy."""
        text = f"[{self.severity}] {self.kind} at step {self.step} in {self.where}: {self.message}"
        if self.remedy:
            text += f" Try: {self.remedy}"
        return text

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (non-finite numbers become strings such as ``"nan"``)."""
        out = dataclasses.asdict(self)
        for key in ("value", "threshold"):
            number = out[key]
            if number is not None and not math.isfinite(number):
                out[key] = str(number)
        return out
