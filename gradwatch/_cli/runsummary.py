"""A JSON-safe summary of a logged run: layers, final and extreme norms, alerts.

This is what ``gradwatch report LOGDIR`` prints (as a table, or with ``--json`` as is).
It works from a :class:`~gradwatch._cli.logreader.RunLog`, so it needs nothing but the
event files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

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
    layers = []
    for name in run.layer_order():
        entry: dict[str, Any] = {"name": name}
        for stat in LAYER_STATS:
            entry[stat] = series_summary(run.scalars.get(f"{stat}/{name}", []))
        layers.append(entry)
    totals = {key: series_summary(run.scalars.get(tag, [])) for key, tag in TOTAL_TAGS.items()}
    alerts = [
        {key: json_number(value) if key in ("value", "threshold") else value
         for key, value in alert.items()}
        for alert in run.parsed_alerts()
    ]  # fmt: skip
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
