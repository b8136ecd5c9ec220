"""Counting ``gradwatch check``'s optimizer steps, with a progress bar on a terminal.

Steps are counted with torch's global optimizer step post-hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``), so it works whether the
target brought its own optimizer or ``check()`` built the default Adam; the count says
how far a check got when the target stops it. The bar is drawn on stderr, and only on a
terminal. The hook is removed when the block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import IO, Any


@dataclasses.dataclass
class StepCount:
    """Optimizer steps taken so far inside :func:`step_progress` (capped at the total)."""

    done: int = 0


def _plain_bar(stream: IO[str], total: int) -> Any:
    def advance(done: int) -> None:
        stream.write(f"\rgradwatch check: step {done}/{total}")
        stream.flush()

    return advance


@contextlib.contextmanager
def step_progress(total: int, *, stream: IO[str] | None = None) -> Iterator[StepCount]:
    """Count the optimizer steps the block takes; show ``step i/total`` if ``stream``
    (default stderr) is a terminal."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from gradwatch._cli._output import wants_color

    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    shown = bool(isatty and isatty())
    count = StepCount()
    progress: Any = None
    task: Any = None
    plain = None
    if shown and wants_color(stream):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("gradwatch check"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            console=Console(file=stream),
            transient=True,
        )
        task = progress.add_task("check", total=total)
        progress.start()
    elif shown:
        plain = _plain_bar(stream, total)

    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        count.done = min(count.done + 1, total)
        if progress is not None:
            progress.update(task, completed=count.done)
        elif plain is not None:
            plain(count.done)

    handle = register_optimizer_step_post_hook(on_step)
    try:
        yield count
    finally:
        handle.remove()
        if progress is not None:
            progress.stop()
        elif plain is not None and count.done:
            stream.write("\r" + " " * 40 + "\r")
            stream.flush()
