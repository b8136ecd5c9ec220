"""The public sink interface: how your own code receives gradwatch's numbers and alerts.

``gradwatch.Sink`` is what ``watch(..., sinks=[...])`` accepts. It speaks plain data
only (a step number, a ``{tag: float}`` mapping, a public :class:`~gradwatch.Alert`), so
gradwatch's internal records can change without breaking anyone's sink. The internal
sinks (:mod:`gradwatch._sinks`) take a ``StepRecord``; :class:`PublicSinkAdapter` is the
one place that turns one into the other.

The four methods and their signatures are a stable contract (the Hugging Face and
Lightning callbacks, :class:`~gradwatch.sinks.MLflowSink` and
:class:`~gradwatch.sinks.WandbSink` are built on it).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from gradwatch._alerts import Alert
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord
from gradwatch._sinks.tensorboard import step_scalars


@runtime_checkable
class Sink(Protocol):
    """Receives gradwatch's scalars and alerts: pass instances as ``watch(..., sinks=[...])``.

    Implement all four methods (or subclass :class:`gradwatch.sinks.BaseSink`, whose
    methods do nothing, and override what you need). gradwatch calls them on the
    training thread, so keep them quick (buffer, and send in ``flush``) and never block
    for long. A sink that raises is switched off for the rest of the run with one
    :class:`~gradwatch.SinkFailureWarning`; training and everything gradwatch keeps in
    memory (alerts, history, report) go on.
    """

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One logged step (every ``log_every`` steps): ``{tag: value}``.

        The tags are gradwatch's TensorBoard tags: ``total/grad_norm``, ``total/loss``,
        ``total/clip_coef``, ``grad_norm/<layer>``, ``weight_norm/<layer>``,
        ``update_ratio/<layer>``, ``act_<statistic>/<layer>``. A step carries only the
        tags measured at it (update ratios and activations are sampled). ``step`` is
        gradwatch's optimizer step plus ``global_step_offset``. The mapping is
        read-only and shared by every sink: copy it (``dict(scalars)``) to keep it.
        """
        ...

    def write_alert(self, alert: Alert) -> None:
        """An alert, once, as soon as it is raised (every alert, whatever ``log_every``)."""
        ...

    def flush(self) -> None:
        """Send what is buffered (gradwatch calls it when alerts need to reach you)."""
        ...

    def close(self) -> None:
        """The watcher closed: flush, release what the sink opened (not the user's run)."""
        ...


class BaseSink:
    """A :class:`~gradwatch.Sink` whose methods do nothing: subclass it, override some."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Ignore the step's scalars (override to use them)."""
        return None

    def write_alert(self, alert: Alert) -> None:
        """Ignore the alert (override to use it)."""
        return None

    def flush(self) -> None:
        """Nothing buffered, nothing to send."""
        return None

    def close(self) -> None:
        """Nothing opened, nothing to release."""
        return None


#: The methods a sink must have, with arguments to try binding (so a wrong signature
#: is an error at attach time, not a warning at the first logged step).
_CONTRACT: dict[str, tuple[object, ...]] = {
    "write_scalars": (0, {}),
    "write_alert": (None,),
    "flush": (),
    "close": (),
}


def _missing(sink: object) -> list[str]:
    """What ``sink`` lacks or cannot be called as, one phrase each."""
    problems = []
    for name, args in _CONTRACT.items():
        method = getattr(sink, name, None)
        if not callable(method):
            problems.append(f"no method {name}()")
            continue
        try:
            inspect.signature(method).bind(*args)
        except TypeError:
            problems.append(f"{name}() does not take {len(args)} positional argument(s)")
        except ValueError:  # no signature to read (a builtin): trust it
            pass
    return problems


def check_sinks(sinks: object) -> list[Sink]:
    """``watch(sinks=...)`` as a list of sinks; anything else is refused with the fix."""
    if sinks is None:
        return []
    if isinstance(sinks, Sink) or not isinstance(sinks, Sequence) or isinstance(sinks, str):
        raise TypeError(
            f"sinks must be a list of sinks, got {type(sinks).__name__}. Pass a list, "
            "e.g. sinks=[MySink()] (one sink: sinks=[sink])."
        )
    checked: list[Sink] = []
    for position, sink in enumerate(sinks):
        problems = _missing(sink)
        if problems:
            hint = ""
            if callable(getattr(sink, "write_step", None)):
                hint = (
                    " It has write_step(): that is gradwatch's internal interface, "
                    "not the public one."
                )
            raise TypeError(
                f"sinks[{position}] ({type(sink).__name__}) is not a gradwatch.Sink: "
                f"{'; '.join(problems)}.{hint} A sink needs write_scalars(step, scalars), "
                "write_alert(alert), flush() and close(); subclass "
                "gradwatch.sinks.BaseSink to get no-op defaults."
            )
        if any(sink is other for other in checked):
            raise ValueError(
                f"sinks[{position}] ({type(sink).__name__}) is listed twice; it would "
                "receive every step twice. List each sink once."
            )
        checked.append(sink)
    return checked


def check_step_offset(offset: object) -> int:
    """``global_step_offset`` as an int (numpy integers too), or a clear error."""
    if isinstance(offset, bool) or not hasattr(offset, "__index__"):
        raise TypeError(
            f"global_step_offset must be an int, got {type(offset).__name__} {offset!r}. "
            "Pass the step your own run is at when gradwatch's step 0 is taken, e.g. "
            "global_step_offset=1000."
        )
    value = int(offset)
    if value < 0:
        raise ValueError(
            f"global_step_offset must be >= 0, got {value}. Pass the step your own run is "
            "at when gradwatch's step 0 is taken (0 when both count from the start)."
        )
    return value


class StepScalars:
    """The scalars of a logged step as a read-only ``{tag: value}``, built once per step
    however many public sinks read it, and never when none is attached."""

    def __init__(self) -> None:
        self._record: StepRecord | None = None
        self._scalars: Mapping[str, float] = MappingProxyType({})

    def of(self, record: StepRecord, index: LayerIndex) -> Mapping[str, float]:
        if record is not self._record:
            self._scalars = MappingProxyType(dict(step_scalars(record, index)))
            self._record = record
        return self._scalars


class PublicSinkAdapter:
    """An internal sink that hands a public :class:`Sink` plain data, steps shifted by
    ``offset`` (``global_step_offset``); alerts reach it with the same shifted step."""

    def __init__(self, sink: Sink, scalars: StepScalars, offset: int = 0) -> None:
        self.sink = sink
        self._scalars = scalars
        self._offset = offset

    def write_step(self, record: StepRecord, index: LayerIndex) -> None:
        self.sink.write_scalars(record.step + self._offset, self._scalars.of(record, index))

    def write_alert(self, alert: Alert) -> None:
        if self._offset:
            alert = dataclasses.replace(alert, step=alert.step + self._offset)
        self.sink.write_alert(alert)

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


def sink_name(sink: object) -> str:
    """How warnings name a user's sink: its class."""
    return f"{type(sink).__name__} (sinks=)"


__all__ = [
    "BaseSink",
    "PublicSinkAdapter",
    "Sink",
    "StepScalars",
    "check_sinks",
    "check_step_offset",
    "sink_name",
]
