"""Exceptions gradwatch raises on purpose."""

from __future__ import annotations

from gradwatch._alerts import Alert


class NonFiniteError(FloatingPointError):
    """Raised by ``on_nonfinite="raise"`` when a NaN/inf reaches the optimizer step."""

    def __init__(self, alert: Alert) -> None:
        super().__init__(alert.format())
        self.alert = alert
        self.step = alert.step
        self.layer = alert.layer
