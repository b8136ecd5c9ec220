"""Alerts to Python's ``logging`` (logger ``gradwatch``); the library installs no handlers."""

from __future__ import annotations

import logging

from gradwatch._alerts import Alert
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
alert_logger = logging.getLogger("gradwatch")


class LoggingSink:
    """Logs each alert once, at the level matching its severity."""

    def write_step(self, record: StepRecord, index: LayerIndex) -> None:
        return None

    def write_alert(self, alert: Alert) -> None:
        alert_logger.log(_LEVELS[alert.severity], "%s", alert.format())

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
