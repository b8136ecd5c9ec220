"""Sinks: where statistics and alerts go (TensorBoard, Python logging, ...).

A sink is a small object with ``write_step``, ``write_alert`` and ``close``. Each is
wrapped in :class:`GuardedSink`, so a sink that fails (log directory deleted, disk full)
is switched off with one warning, and training carries on with everything still
recorded in memory (alerts, history, report).

This ``Sink`` is gradwatch's internal interface (it takes a ``StepRecord``, which may
change with any release). Users' sinks implement the public, plain-data one,
:class:`gradwatch.Sink` (:mod:`gradwatch._sinks.public`), and reach the watcher through
``PublicSinkAdapter``; ``watch(writer=...)`` goes through :mod:`.user_writer`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Protocol

from gradwatch._alerts import Alert
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord

logger = logging.getLogger(__name__)


class Sink(Protocol):
    def write_step(self, record: StepRecord, index: LayerIndex) -> None: ...

    def write_alert(self, alert: Alert) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class SinkFailureWarning(RuntimeWarning):
    """A sink stopped working; gradwatch switched it off and training carried on."""


class GuardedSink:
    """Runs a sink's methods, turning its first failure into one warning and silence."""

    def __init__(self, sink: Sink, name: str) -> None:
        self.sink = sink
        self.name = name
        self.failed: BaseException | None = None

    def _guard(self, what: str, *args: object) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.sink, what)(*args)
        except Exception as error:  # any sink fault must not reach the training loop
            self.failed = error
            message = (
                f"gradwatch: the {self.name} sink failed ({type(error).__name__}: {error}); "
                "it is switched off for the rest of this run. Training continues and "
                "alerts are still kept in memory (Watcher.alerts, the report)."
            )
            logger.warning(message)
            warnings.warn(message, SinkFailureWarning, stacklevel=2)
            try:
                self.sink.close()
            except Exception:
                logger.debug("closing the failed %s sink also failed", self.name, exc_info=True)

    def write_step(self, record: StepRecord, index: LayerIndex) -> None:
        self._guard("write_step", record, index)

    def write_alert(self, alert: Alert) -> None:
        self._guard("write_alert", alert)

    def write_diagnosis(self, step: int, markdown: str) -> None:
        """The current diagnoses, for sinks that show them (TensorBoard's Text tab)."""
        if hasattr(self.sink, "write_diagnosis"):
            self._guard("write_diagnosis", step, markdown)

    def flush(self) -> None:
        self._guard("flush")

    def close(self) -> None:
        self._guard("close")
        self.failed = self.failed or _CLOSED


class _Closed(Exception):
    pass


_CLOSED = _Closed("closed")
