"""What both framework callbacks share: argument checks, the missing-framework error,
gradwatch's TensorBoard writer on the trainer's steps, the end-of-training report."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

from gradwatch._check import _layer_summaries as layer_summaries
from gradwatch._config import WatchConfig
from gradwatch._report import Report
from gradwatch._sinks.tensorboard import TensorBoardSink
from gradwatch._watcher import Watcher, logdir_path
from gradwatch._watcher import _validate_logdir as validate_logdir
from gradwatch.integrations._route import AtTrainerSteps, TrainerSteps


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


def watcher_config(config: WatchConfig) -> WatchConfig:
    """The config a callback's watcher runs with: every step's record reaches the
    callback's sinks, which keep the trainer's logging steps themselves (``log_every``
    counts the watcher's steps, which may not be the trainer's)."""
    return dataclasses.replace(config, log_every=1)


def tensorboard_sink(
    watcher: Watcher, logdir: str, steps: TrainerSteps, keep: Callable[[int], bool] | None = None
) -> AtTrainerSteps:
    """gradwatch's TensorBoard writer (scalars, chart layout, alerts, flow picture) into
    ``logdir``, on the trainer's steps, scalars on the steps ``keep`` accepts (default:
    the trainer's logging steps). Its own event file: TensorBoard reads every file of a
    directory as one run, so a trainer's file beside it makes one run."""
    config = watcher.config
    # Absolute: a relative run directory stays the same one if the process changes cwd.
    logdir = os.path.abspath(validate_logdir(logdir) or logdir)
    sink = TensorBoardSink(
        logdir,
        flush_secs=config.flush_secs,
        history=watcher.history,
        flow_image_every=config.flow_image_every,
        ordered_tags=config.tensorboard_tags == "ordered",
    )
    return AtTrainerSteps(sink, steps, keep)


def final_report(watcher: Watcher, steps: TrainerSteps) -> Report:
    """What the watcher found, as :func:`gradwatch.check`'s :class:`Report`, with its
    steps on the trainer's axis (for the end-of-training log)."""
    alerts = tuple(steps.alert(alert) for alert in watcher.alerts)
    losses = watcher.history.series("loss")
    return Report(
        ok=not any(alert.severity in ("warning", "error") for alert in alerts),
        alerts=alerts,
        steps=watcher.step_count,
        steps_requested=watcher.step_count,
        losses=tuple(float(v) for v in losses if v == v),
        layers=layer_summaries(watcher.index, watcher.history),
        diagnoses=tuple(steps.diagnosis(d) for d in watcher.diagnoses),
    )


def log_final_report(watcher: Watcher | None, steps: TrainerSteps, log: logging.Logger) -> None:
    """Log the diagnosis of a finished run, causes first (never raises: the run is over
    and its numbers are safe in the watcher, whatever the log does)."""
    if watcher is None or not watcher.step_count:
        return
    try:
        report = final_report(watcher, steps)
        log.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
    except Exception:
        log.exception("gradwatch: summarising the run failed")
