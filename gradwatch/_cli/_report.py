"""``gradwatch report LOGDIR [--run N] [--json] [--plot FILE.png]``: summarise a logged run.

Reads the event files (:mod:`gradwatch._cli.logreader`), prints layers with their final
and extreme norms, the loss, and the alerts; ``--plot`` draws the gradient-flow picture.
A directory holding several runs (a job re-run with the same logdir) is never merged: the
newest run is shown, the others are listed, and ``--run N`` picks one. Damaged records
are skipped and counted, and the report says so; a readable run still exits 0. A
directory that is missing, empty, or not written by gradwatch is a usage error (exit 2)
with a message saying which, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
    parser.add_argument(
        "--run",
        type=int,
        metavar="N",
        dest="run_number",  # `run` is the subcommand's entry point (set_defaults below)
        help="which run when LOGDIR holds several (1 the oldest, -1 the newest; default: "
        "the newest); the report lists them",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also write the gradient-flow picture (layers x steps heat map of log10 "
        "gradient norm, and norms across depth at the first/middle/last step)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradwatch._cli.logreader import NoSuchRun, NotAGradwatchLog, read_run
    from gradwatch._cli.runsummary import summarize

    try:
        log = read_run(args.logdir, run=args.run_number)
    except NotAGradwatchLog as error:
        raise UsageError(f"cannot report on {args.logdir!r}: {error}.") from None
    except NoSuchRun as error:
        raise UsageError(f"--run {args.run_number}: {error}.") from None
    except OSError as error:  # the directory itself cannot be listed (permissions)
        raise UsageError(f"cannot read {args.logdir!r} ({error.strerror or error}).") from None
    summary = summarize(log)
    if args.plot:
        _write_plot(log, args.plot)
    if args.json:
        # The notes also go to stderr, where a job's log shows them next to the JSON.
        for note in notes(summary):
            print(f"gradwatch report: note: {note}", file=sys.stderr)
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


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _span(first: Any, last: Any, count: int) -> str:
    return f"steps {first}-{last} ({count} logged)" if count else "no steps"


def notes(summary: dict[str, Any]) -> list[str]:
    """What the reader of a report must know before trusting it: which run of several
    it shows, and what could not be read."""
    out = []
    run = summary.get("run")
    if run is not None and run["count"] > 1:
        which = "the newest" if run["index"] == run["count"] else "not the newest"
        out.append(
            f"this directory holds {run['count']} runs (one per event file, or steps that "
            f"start again); showing run {run['index']} of {run['count']} ({which}, "
            f"started {_when(run['started'])}, {run['file']}); pick another with --run N"
        )
    damaged = summary.get("damaged") or {}
    if damaged.get("records"):
        files = ", ".join(d["file"] for d in damaged["files"] if d["records"])
        repaired = sum(d["repaired"] for d in damaged["files"])
        kept = (
            f" ({repaired} alert text(s) kept with undecodable bytes shown as \ufffd)"
            if repaired
            else ""
        )
        out.append(
            f"skipped {damaged['records']} damaged record(s) ({damaged['bytes']} bytes) in "
            f"{files}{kept}; everything else was read"
        )
    if damaged.get("skipped_files"):
        out.append(f"not read: {', '.join(damaged['skipped_files'])}")
    return out


#: Other runs listed by name in the text report (``--json`` lists them all).
RUNS_LISTED = 10


def _render_runs(summary: dict[str, Any], out: Output) -> None:
    run = summary.get("run")
    if run is None or run["count"] < 2:
        return
    others = [info for info in reversed(summary["runs"]) if info["index"] != run["index"]]
    out.line("other runs here, newest first:", style="yellow")
    for info in others[:RUNS_LISTED]:
        out.line(
            f"  --run {info['index']}: "
            f"{_span(info['first_step'], info['last_step'], info['steps'])}, "
            f"{info['alerts']} alert(s), started {_when(info['started'])} ({info['file']})"
        )
    if len(others) > RUNS_LISTED:
        out.line(f"  ... and {len(others) - RUNS_LISTED} older ones (--json lists them all)")


def render(summary: dict[str, Any], out: Output) -> None:
    """The human form of a run summary."""
    steps = summary["steps"]
    layers = summary["layers"]
    out.line(f"gradwatch report: {summary['logdir']}", style="bold")
    for note in notes(summary):
        out.line(note, style="yellow")
    _render_runs(summary, out)
    out.line(f"{_span(steps['first'], steps['last'], steps['count'])}, {len(layers)} layers")
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
