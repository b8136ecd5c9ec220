"""``gradwatch report LOGDIR [--json] [--plot FILE.png]``: summarise a logged run.

Reads the event files with TensorBoard's own reader (:mod:`gradwatch._cli.logreader`),
prints layers with their final and extreme norms, the loss, and the alerts; ``--plot``
draws the gradient-flow picture. A directory that is missing, empty, or not written by
gradwatch is a usage error (exit 2) with a message saying which, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gradwatch._cli._errors import UsageError
from gradwatch._cli._output import Output
from gradwatch._format import fmt


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="summarise a gradwatch TensorBoard log directory",
        description=(
            "Summarise a TensorBoard log directory written by gradwatch: layers with their "
            "final and extreme gradient/weight norms, the loss, and the alerts."
        ),
    )
    parser.add_argument("logdir", metavar="LOGDIR", help="the logdir given to gradwatch")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also write the gradient-flow picture (layers x steps heat map of log10 "
        "gradient norm, and norms across depth at the first/middle/last step)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradwatch._cli.logreader import NotAGradwatchLog, read_run
    from gradwatch._cli.runsummary import summarize

    try:
        log = read_run(args.logdir)
    except NotAGradwatchLog as error:
        raise UsageError(f"cannot report on {args.logdir!r}: {error}.") from None
    except Exception as error:  # a damaged event file: TensorBoard's reader gave up
        raise UsageError(
            f"cannot read the event files in {args.logdir!r} ({type(error).__name__}: {error})."
        ) from None
    summary = summarize(log)
    if args.plot:
        _write_plot(log, args.plot)
    if args.json:
        json.dump(summary, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        render(summary, Output.for_stream(sys.stdout))
    if args.plot:
        print(f"gradwatch: wrote the gradient-flow picture to {args.plot}", file=sys.stderr)
    return 0


def _write_plot(log: Any, path: str) -> None:
    from gradwatch._sinks.flowplot import MatplotlibMissing, save_flow_png

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--plot {path!r}: directory {directory!r} does not exist.")
    data = log.flow_data()
    if not len(data.steps):
        raise UsageError(f"--plot: {log.logdir!r} holds no per-layer statistics to draw.")
    try:
        save_flow_png(data, path, title=os.path.basename(os.path.normpath(log.logdir)))
    except MatplotlibMissing as error:
        raise UsageError(f"--plot: {error}.") from None
    except OSError as error:
        raise UsageError(f"--plot {path!r}: cannot write it ({error.strerror or error}).") from None


def _stat_cells(stat: dict[str, Any] | None) -> list[str]:
    if stat is None:
        return ["-", "-", "-"]

    def with_step(value: Any, step: Any) -> str:
        return "-" if value is None else f"{fmt(_float(value))} @{step}"

    return [
        fmt(_float(stat["final"])),
        with_step(stat["min"], stat["min_step"]),
        with_step(stat["max"], stat["max_step"]),
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def render(summary: dict[str, Any], out: Output) -> None:
    """The human form of a run summary."""
    steps = summary["steps"]
    layers = summary["layers"]
    out.line(f"gradwatch report: {summary['logdir']}", style="bold")
    span = f"steps {steps['first']}-{steps['last']}" if steps["count"] else "no steps"
    out.line(f"{span} ({steps['count']} logged), {len(layers)} layers")
    loss = summary["totals"]["loss"]
    if loss is not None:
        out.line(
            f"loss: first {fmt(_float(loss['first']))}, final {fmt(_float(loss['final']))}, "
            f"min {fmt(_float(loss['min']))} @{loss['min_step']}"
            + (f", {loss['nonfinite']} non-finite" if loss["nonfinite"] else "")
        )
    total = summary["totals"]["grad_norm"]
    if total is not None:
        out.line(
            f"total gradient norm: final {fmt(_float(total['final']))}, "
            f"max {fmt(_float(total['max']))} @{total['max_step']}"
            + (f", {total['nonfinite']} non-finite" if total["nonfinite"] else "")
        )
    out.heading("Layers (input side first; final, min @step, max @step)")
    columns = [
        "layer",
        "grad final", "grad min", "grad max",
        "weight final", "weight min", "weight max",
        "update ratio",
    ]  # fmt: skip
    rows = []
    for layer in layers:
        ratio = layer["update_ratio"]
        rows.append(
            [
                layer["name"],
                *_stat_cells(layer["grad_norm"]),
                *_stat_cells(layer["weight_norm"]),
                fmt(_float(ratio["final"])) if ratio else "-",
            ]
        )
    out.table(columns, rows, right=[False] + [True] * 7)
    alerts = summary["alerts"]
    out.heading(f"Alerts ({len(alerts)})")
    if not alerts:
        out.line("none", style="green")
    for alert in alerts:
        if alert["kind"] is None:
            out.alert(None, f"step {alert['step']}: {alert['text']}")
            continue
        out.alert(
            alert["severity"],
            f"{alert['kind']} at step {alert['step']} in {alert['layer']}: {alert['message']}",
            alert["remedy"],
        )
