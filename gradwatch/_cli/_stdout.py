"""Keeping ``gradwatch check``'s stdout for the report alone, at the file-descriptor level.

The user's code runs inside the CLI's process, and redirecting ``sys.stdout`` catches only
Python's ``print``: ``sys.__stdout__``, ``logging.basicConfig(stream=sys.__stdout__)``,
``os.write(1, ...)`` and C extensions write to file descriptor 1 directly, and a thread
of the user's may keep printing after the report. So, when stdout is the process's file
descriptor 1, :func:`report_only_stdout` duplicates it first (the report goes there),
points descriptor 1 at stderr while the target is imported and trained, and *leaves it
there* for the rest of the process: whatever anybody writes to stdout from then on,
even after the report, lands on stderr, and stdout holds the report and nothing else.
(The CLI owns its process; ``main()`` is not meant to be embedded.)

When ``sys.stdout`` is not descriptor 1 (an embedding that replaced it, pytest's
``capsys``), only ``sys.stdout`` is redirected, as Python's ``contextlib`` does, and the
report goes to the ``sys.stdout`` found on entry.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import TextIO

STDOUT_FD = 1
STDERR_FD = 2


def _is_fd_stdout(stream: object) -> bool:
    try:
        return stream is not None and stream.fileno() == STDOUT_FD  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _flush(stream: object) -> None:
    with contextlib.suppress(Exception):  # a closed or odd stream: nothing to keep
        stream.flush()  # type: ignore[attr-defined]


@contextlib.contextmanager
def report_only_stdout() -> Iterator[TextIO]:
    """Yield the stream the report must be written to; inside, stdout goes to stderr."""
    original = sys.stdout
    saved: int | None = None
    if _is_fd_stdout(original):
        _flush(original)
        _flush(sys.__stdout__)
        try:
            saved = os.dup(STDOUT_FD)
            os.dup2(STDERR_FD, STDOUT_FD)
        except OSError:  # no descriptor to spare, or stderr closed: Python level only
            if saved is not None:
                os.close(saved)
            saved = None
    if saved is None:
        with contextlib.redirect_stdout(sys.stderr):
            yield original
        return
    report = os.fdopen(
        saved,
        "w",
        encoding=getattr(original, "encoding", None) or "utf-8",
        errors=getattr(original, "errors", None) or "strict",
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield report
    finally:
        with contextlib.suppress(OSError):  # the reader went away (`| head`)
            report.close()
