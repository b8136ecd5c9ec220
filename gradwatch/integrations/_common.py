"""What both framework callbacks share: argument checks and the missing-framework error."""

from __future__ import annotations

from gradwatch._watcher import logdir_path


def missing_framework(framework: str, extra: str, error: ImportError) -> ImportError:
    """The error raised when a callback's framework is not installed."""
    return ImportError(
        f"gradwatch.integrations.{extra} needs {framework}, which is not installed "
        f"({error}). Install it with: pip install 'gradwatch[{extra}]'"
    )


def check_logdir(logdir: object) -> str | None:
    """``logdir`` as a path string, or None; refuses other types at construction."""
    return logdir_path(
        logdir,
        hint="Pass e.g. logdir='runs/exp1', or leave it out to log next to the trainer's "
        "own TensorBoard logs.",
    )
