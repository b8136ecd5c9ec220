"""The user's own destinations of ``watch()``: ``writer=``, ``sinks=``, ``global_step_offset=``.

Checked in one place at attach time, before the watcher opens anything, so a wrong
argument is an error naming it and nothing is left half attached; opened into internal
sinks (each then runs in a :class:`~gradwatch._sinks.GuardedSink`) on the writing rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gradwatch._history import History
from gradwatch._sinks.public import (
    PublicSinkAdapter,
    Sink,
    StepScalars,
    check_sinks,
    check_step_offset,
    sink_name,
)
from gradwatch._sinks.user_writer import UserWriterEvents, check_writer


@dataclasses.dataclass(frozen=True)
class Destinations:
    """Where, besides ``logdir`` and logging, a watcher writes."""

    writer: Any = None
    sinks: tuple[Sink, ...] = ()
    offset: int = 0

    @classmethod
    def check(
        cls, *, writer: object, sinks: object, logdir: object, global_step_offset: object
    ) -> Destinations:
        """The arguments as given to ``watch()``, checked; a clear error otherwise."""
        check_writer(writer, logdir)
        checked = check_sinks(sinks)
        offset = check_step_offset(global_step_offset)
        if offset and writer is None and not checked:
            raise ValueError(
                f"global_step_offset={offset} shifts the steps written to writer= and "
                "sinks=, and neither was given. Pass writer= or sinks=, or drop "
                "global_step_offset."
            )
        return cls(writer, tuple(checked), offset)

    def open(
        self,
        history: History,
        *,
        flush_secs: float,
        flow_image_every: int,
        ordered_tags: bool = False,
    ) -> list[tuple[object, str]]:
        """The internal sinks to add, each with the name its warnings use."""
        opened: list[tuple[object, str]] = []
        if self.writer is not None:
            from gradwatch._sinks.tensorboard import TensorBoardSink

            events = UserWriterEvents(self.writer, self.offset)
            sink = TensorBoardSink(
                events.logdir,
                flush_secs=flush_secs,
                history=history,
                flow_image_every=flow_image_every,
                events=events,
                ordered_tags=ordered_tags,
            )
            opened.append((sink, "TensorBoard (writer=)"))
        scalars = StepScalars()  # one {tag: value} per logged step, shared by all sinks
        for user_sink in self.sinks:
            opened.append(
                (PublicSinkAdapter(user_sink, scalars, self.offset), sink_name(user_sink))
            )
        return opened
