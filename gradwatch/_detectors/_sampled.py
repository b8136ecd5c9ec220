"""Shared reading of sampled activation statistics for the activation detectors."""

from __future__ import annotations

import numpy as np

from gradwatch._history import History
from gradwatch._measure.record import StepRecord
from gradwatch._names import sentence_name


def sampled_records(history: History, n: int) -> list[StepRecord]:
    """The last ``n`` records that carry activation statistics, oldest first.

    Empty unless the latest record is itself a sampled one, so that a detector speaks
    once per sampled step, about that step.
    """
    latest = history.latest
    if latest is None or not latest.activations:
        return []
    out: list[StepRecord] = []
    for record in reversed(history):  # newest first, no copy of the history
        if record.activations:
            out.append(record)
            if len(out) == n:
                break
    return out[::-1]


def held_values(records: list[StepRecord], stat: str, role: str) -> dict[str, float]:
    """Per module of ``role`` (latest execution order): the *smallest* value of ``stat``
    over ``records``, i.e. the level the statistic held at every one of them.

    Modules missing from an older record (not run at that step) count only their
    latest value; NaN (statistic not measured) removes a module.
    """
    latest = records[-1]
    assert latest.activations is not None and latest.activation_layers is not None
    roles = latest.activation_roles or ()
    held: dict[str, float] = {}
    for position, (name, module_role) in enumerate(zip(latest.activation_layers, roles)):
        if module_role != role:
            continue
        value = float(latest.activations[stat][position])
        for record in records[:-1]:
            layers = record.activation_layers or ()
            if record.activations is None or name not in layers:
                continue
            value = min(value, float(record.activations[stat][layers.index(name)]))
        if np.isfinite(value):
            held[name] = value
    return held


def grade(values: dict[str, float], threshold: float) -> tuple[str, float, list[str]] | None:
    """Severity, the level crossed and the modules crossing it: ``warning`` at
    ``threshold``, ``info`` (borderline) at half of it; None below both."""
    for level, severity in ((threshold, "warning"), (threshold / 2, "info")):
        flagged = [name for name, value in values.items() if value >= level]
        if flagged:
            return severity, level, flagged
    return None


def list_names(names: list[str], limit: int = 4) -> str:
    """``'a', 'b', 'c' and 2 more``."""
    shown = ", ".join(sentence_name(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
