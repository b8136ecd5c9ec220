"""Where a callback's watcher writes, on the trainer's step axis and logging cadence.

A watcher counts its steps from 0 at the first step after the weights were initialised
(or from the restored count, after :meth:`Watcher.load_state_dict`): its detectors and
diagnoses read step 0 as the initialisation, so that count stays as it is. A trainer
numbers the same optimizer steps its own way (Hugging Face: 1 for the first update;
Lightning: 0, continued across a resumed run) and logs its scalars every so many steps.
:class:`TrainerSteps` maps one axis onto the other and says which steps get scalars;
:class:`AtTrainerSteps` wraps a sink so that everything it writes is at the trainer's
step, scalars only on the trainer's logging steps and every alert at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from gradwatch._alerts import Alert
from gradwatch._diagnosis import Diagnosis
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord
from gradwatch._sinks import Sink
from gradwatch._sinks.public import Sink as PublicSink
from gradwatch._watcher import Watcher


def every_step(step: int) -> bool:
    """The cadence that keeps every step's scalars."""
    return True


def every(n: int) -> Callable[[int], bool]:
    """The cadence that keeps the scalars of every ``n``-th step (``log_every``)."""
    return lambda step: step % n == 0


@dataclasses.dataclass
class TrainerSteps:
    """The trainer's step of each watcher step, and which steps' scalars to write.

    Attributes:
        offset: trainer step = watcher step + ``offset``; None until the first step
            measured tells it (the trainer's counter may be restored late).
        keep: whether scalars go out at a trainer step (alerts always do).
    """

    offset: int | None = None
    keep: Callable[[int], bool] = every_step

    def of(self, step: int) -> int:
        """The trainer's step for the watcher's ``step``."""
        return step + (self.offset or 0)

    def alert(self, alert: Alert) -> Alert:
        """``alert`` at the trainer's step."""
        step = self.of(alert.step)
        return alert if step == alert.step else dataclasses.replace(alert, step=step)

    def diagnosis(self, diagnosis: Diagnosis) -> Diagnosis:
        """``diagnosis`` and its evidence at the trainer's steps."""
        return dataclasses.replace(
            diagnosis,
            step=self.of(diagnosis.step),
            evidence=tuple(self.alert(alert) for alert in diagnosis.evidence),
        )


class Prefixed:
    """``target`` with ``prefix`` in front of every scalar's name: gradwatch's names in a
    namespace of their own where a trainer logs names they would clash with (the Hugging
    Face Trainer's MLflow metric ``grad_norm`` is a file in MLflow's file store, so
    ``grad_norm/<layer>`` beside it cannot be created)."""

    def __init__(self, target: PublicSink, prefix: str) -> None:
        self.target = target
        self.prefix = prefix

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        prefix = self.prefix
        self.target.write_scalars(step, {prefix + name: value for name, value in scalars.items()})

    def write_alert(self, alert: Alert) -> None:
        self.target.write_alert(alert)

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self.target.close()


class AtTrainerSteps:
    """``sink`` seen through ``steps``: records and alerts at the trainer's step, a
    record only on a step ``keep`` (by default ``steps.keep``) accepts, every alert."""

    def __init__(
        self, sink: Sink, steps: TrainerSteps, keep: Callable[[int], bool] | None = None
    ) -> None:
        self.sink = sink
        self.steps = steps
        self.keep = keep

    def write_step(self, record: StepRecord, index: LayerIndex) -> None:
        step = self.steps.of(record.step)
        if not (self.keep or self.steps.keep)(step):
            return
        if step != record.step:
            record = dataclasses.replace(record, step=step)
        self.sink.write_step(record, index)

    def write_alert(self, alert: Alert) -> None:
        self.sink.write_alert(self.steps.alert(alert))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


def attach(watcher: Watcher, sink: Any, name: str) -> None:
    """Give ``watcher`` one more sink, run like its own (a failure: one warning, then
    silence; closed with the watcher)."""
    watcher._add_sink(sink, name)
