"""``watch(..., writer=summary_writer)``: gradwatch's TensorBoard output in the user's run.

:class:`UserWriterEvents` gives the user's ``torch.utils.tensorboard.SummaryWriter`` the
small event-writer surface :class:`~gradwatch._sinks.tensorboard.TensorBoardSink` writes
through (``add_summary(summary, step)``, ``flush()``, ``close()``), so the same scalars,
custom-scalars layout, heat map and alert text land in the user's event file, on the
user's step axis (gradwatch's step plus ``global_step_offset``).

The writer stays the user's: ``close()`` only flushes it, so the user can keep writing
after the watcher closes, and closes it themselves. Summaries go through the writer's
own ``FileWriter.add_summary`` (one event per step holding every tag), not one
``add_scalar`` call per tag, and under exactly gradwatch's tags (``add_text`` would add a
suffix to ``alerts``, which ``gradwatch report`` reads).
"""

from __future__ import annotations

from typing import Any

#: What gradwatch calls on the user's writer; checked at attach time.
_NEEDED = ("_get_file_writer", "get_logdir", "flush")


def check_writer(writer: object, logdir: object) -> None:
    """Refuse, at attach time, a ``writer=`` gradwatch cannot write through."""
    if writer is None:
        return
    if logdir is not None:
        raise ValueError(
            "watch() got both writer= and logdir=: pass one. writer= writes into your "
            "SummaryWriter's run (its log_dir); logdir= makes gradwatch's own run. Drop "
            "logdir= to log into your writer's run."
        )
    missing = [name for name in _NEEDED if not callable(getattr(writer, name, None))]
    if missing:
        raise TypeError(
            f"writer must be a torch.utils.tensorboard.SummaryWriter, got "
            f"{type(writer).__name__} (it has no {', '.join(m + '()' for m in missing)}). "
            "Pass your SummaryWriter, e.g. writer=SummaryWriter('runs/exp1'), or use "
            "logdir='runs/exp1' to let gradwatch open its own; for another logging tool "
            "use sinks=[...] (gradwatch.sinks)."
        )


class UserWriterEvents:
    """The user's ``SummaryWriter`` as the event writer of a ``TensorBoardSink``."""

    def __init__(self, writer: Any, offset: int = 0) -> None:
        self._writer = writer
        self._offset = offset

    @property
    def logdir(self) -> str:
        return str(self._writer.get_logdir())

    def add_summary(self, summary: Any, step: int) -> None:
        # Asked every time: SummaryWriter reopens its file writer if the user closed it.
        self._writer._get_file_writer().add_summary(summary, step + self._offset)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Flush only: the writer is the user's, who may write to it after gradwatch."""
        self._writer.flush()
