"""A JSON-safe summary of a logged run: layers, final and extreme norms, alerts.

This is what ``gradwatch report LOGDIR`` prints (as a table, or with ``--json`` as is).
It works from a :class:`~gradwatch._cli.logreader.RunLog`, so it needs nothing but the
event files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gradwatch._cli.logreader import RunLog
from gradwatch._format import json_number

#: Per-layer statistics summarised, in table order.
LAYER_STATS: tuple[str, ...] = ("grad_norm", "weight_norm", "update_ratio")
#: Whole-model series summarised.
TOTAL_TAGS: dict[str, str] = {
    "loss": "total/loss",
    "grad_norm": "total/grad_norm",
    "clip_coef": "total/clip_coef",
}


def series_summary(series: list[tuple[int, float]]) -> dict[str, Any] | None:
    """First, final, min and max of a series (with their steps), and non-finite count.

    Extremes are over the finite values; ``nonfinite`` counts the NaN/inf ones.
    """
    if not series:
        return None
    finite = [(step, value) for step, value in series if math.isfinite(value)]
    out: dict[str, Any] = {
        "first": json_number(series[0][1]),
        "first_step": series[0][0],
        "final": json_number(series[-1][1]),
        "final_step": series[-1][0],
        "min": None,
        "min_step": None,
        "max": None,
        "max_step": None,
        "nonfinite": len(series) - len(finite),
    }
    if finite:
        low = min(finite, key=lambda item: item[1])
        high = max(finite, key=lambda item: item[1])
        out.update(min=low[1], min_step=low[0], max=high[1], max_step=high[0])
    return out


def summarize(run: RunLog) -> dict[str, Any]:
    """Everything ``gradwatch report`` shows, as plain JSON-safe data.

    ``run`` says which run of the directory this is (``index`` of ``count``, 1 the
    oldest) and ``runs`` lists them all; ``damaged`` says what could not be read.
    """
    steps = run.steps()
    alerts = [
        {key: json_number(value) if key in ("value", "threshold") else value
         for key, value in alert.items()}
        for alert in run.parsed_alerts()
    ]  # fmt: skip
    order = run.layer_order()
    marks = layer_flags(run, order, alerts)
    layers = []
    for name in order:
        entry: dict[str, Any] = {"name": name}
        for stat in LAYER_STATS:
            entry[stat] = series_summary(run.scalars.get(f"{stat}/{name}", []))
        entry["flag"] = marks.get(name)
        layers.append(entry)
    totals = {key: series_summary(run.scalars.get(tag, [])) for key, tag in TOTAL_TAGS.items()}
    by_severity: dict[str, int] = {}
    for alert in alerts:
        key = str(alert["severity"] or "unknown")
        by_severity[key] = by_severity.get(key, 0) + 1
    return {
        "logdir": run.logdir,
        "steps": {
            "count": len(steps),
            "first": steps[0] if steps else None,
            "last": steps[-1] if steps else None,
        },
        "layers": layers,
        "totals": totals,
        "alerts": alerts,
        "alert_counts": by_severity,
        "has_layout": run.has_layout,
        "images": list(run.images),
        "run": None if run.run is None else {**run.run.to_dict(), "count": len(run.runs)},
        "runs": [info.to_dict() for info in run.runs],
        "damaged": damage_summary(run),
    }


def damage_summary(run: RunLog) -> dict[str, Any]:
    """Damaged records skipped (or kept repaired) and files not read, over the directory."""
    return {
        "records": sum(d.records for d in run.damage),
        "bytes": sum(d.bytes for d in run.damage),
        "files": [dataclasses.asdict(d) for d in run.damage],
        "skipped_files": list(run.skipped_files),
    }


#: Steps at the end of a run whose median judges a layer (the detectors' default window).
FLAG_WINDOW = 10


def _config_default(option: str) -> float:
    """A detector threshold's default, from its one owner (``WatchConfig``)."""
    from gradwatch._config import WatchConfig

    return float(getattr(WatchConfig(), option))


def layer_flags(run: RunLog, layers: list[str], alerts: list[dict[str, Any]]) -> dict[str, str]:
    """Which layers the table marks, and as what: ``non-finite``, ``exploding`` or
    ``vanishing``; from the logged norms, judged as the detectors judge them.

    * ``non-finite``: its gradient norm was NaN/inf at some logged step.
    * ``exploding``: named by an ``exploding`` alert, or ‖g‖/‖w‖ above the
      ``exploding_rel_grad`` default at its median over the last :data:`FLAG_WINDOW`
      logged steps.
    * ``vanishing``: only in a run with a ``vanishing`` warning or error (so a healthy run
      gets no marks): every layer whose loss sensitivity ‖g‖·‖w‖ (median over the last
      steps) is below ``vanishing_ratio`` (default) times the largest of the layers after
      it (see ``gradwatch/_detectors/vanishing.py``).
    """
    if not layers:
        return {}
    every = run.steps()
    steps = every[-FLAG_WINDOW:]
    grad = run.matrix("grad_norm", layers, steps)
    # Weight norms are logged on the steps that measured them (weight_norm_every): each
    # step takes the latest one.
    weight = _carried_forward(run.matrix("weight_norm", layers, every))[
        :, len(every) - len(steps) :
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = _nanmedian_rows(grad / weight)
    flags: dict[str, str] = {}
    kinds = {(a["kind"], a["layer"]) for a in alerts if a["severity"] in ("warning", "error")}
    explode_at = _config_default("exploding_rel_grad")
    for i, name in enumerate(layers):
        series = run.scalars.get(f"grad_norm/{name}", [])
        if any(not math.isfinite(value) for _, value in series):
            flags[name] = "non-finite"
        elif ("exploding", name) in kinds or (math.isfinite(ratio[i]) and ratio[i] > explode_at):
            flags[name] = "exploding"
    if any(kind == "vanishing" for kind, _ in kinds) and steps:
        with np.errstate(invalid="ignore"):
            sensitivity = _nanmedian_rows(grad * weight)
        below = _vanishing_rows(sensitivity, _config_default("vanishing_ratio"))
        for i in below:
            flags.setdefault(layers[i], "vanishing")
    return flags


def _carried_forward(matrix: np.ndarray) -> np.ndarray:
    """Each NaN replaced by the last non-NaN value before it in its row."""
    out = matrix.copy()
    for column in range(1, out.shape[1]):
        missing = np.isnan(out[:, column])
        out[missing, column] = out[missing, column - 1]
    return out


def _nanmedian_rows(matrix: np.ndarray) -> np.ndarray:
    """Median of each row over its finite entries; NaN for a row with none."""
    out = np.full(matrix.shape[0], np.nan)
    for row, values in enumerate(matrix):
        finite = values[np.isfinite(values)]
        if finite.size:
            out[row] = float(np.median(finite))
    return out


def _vanishing_rows(sensitivity: np.ndarray, ratio: float) -> list[int]:
    """Rows whose value is below ``ratio`` times the largest value of the rows after it."""
    rows = []
    largest_after = -math.inf
    for row in range(len(sensitivity) - 1, -1, -1):
        value = sensitivity[row]
        if math.isfinite(value) and largest_after > 0 and value < ratio * largest_after:
            rows.append(row)
        if math.isfinite(value):
            largest_after = max(largest_after, value)
    return sorted(rows)
