"""What both framework callbacks share: argument checks and the missing-framework error."""

from __future__ import annotations

import os


def missing_framework(framework: str, extra: str, error: ImportError) -> ImportError:
    """The error raised when a callback's framework is not installed."""
    return ImportError(
        f"gradwatch.integrations.{extra} needs {framework}, which is not installed "
        f"({error}). Install it with: pip install 'gradwatch[{extra}]'"
    )


def check_logdir(logdir: object) -> str | None:
    """``logdir`` as a path string, or None; refuses other types at construction."""
    if logdir is None:
        return None
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(
            f"logdir must be a path (str or os.PathLike) or None, got "
            f"{type(logdir).__name__} {logdir!r}. Pass e.g. logdir='runs/exp1', or leave it "
            "out to log next to the trainer's own TensorBoard logs."
        )
    return os.fsdecode(os.fspath(logdir))
