"""A progress bar for ``gradwatch check``, on stderr and only on a terminal.

It counts optimizer steps with torch's global optimizer step post-hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``), so it works whether the
target brought its own optimizer or ``check()`` built the default Adam. The hook is
removed when the bar closes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any


def _plain_bar(stream: IO[str], total: int) -> Any:
    def advance(done: int) -> None:
        stream.write(f"\rgradwatch check: step {done}/{total}")
        stream.flush()

    return advance


@contextlib.contextmanager
def step_progress(total: int, *, stream: IO[str] | None = None) -> Iterator[None]:
    """Show ``step i/total`` while the block trains; nothing unless ``stream`` is a TTY."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        yield
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from gradwatch._cli._output import wants_color

    done = 0
    progress: Any = None
    task: Any = None
    plain = None
    if wants_color(stream):
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
    else:
        plain = _plain_bar(stream, total)

    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        nonlocal done
        done = min(done + 1, total)
        if progress is not None:
            progress.update(task, completed=done)
        elif plain is not None:
            plain(done)

    handle = register_optimizer_step_post_hook(on_step)
    try:
        yield
    finally:
        handle.remove()
        if progress is not None:
            progress.stop()
        elif done:
            stream.write("\r" + " " * 40 + "\r")
            stream.flush()
