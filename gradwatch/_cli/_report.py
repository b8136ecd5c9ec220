"""``gradwatch report LOGDIR [--run N|NAME] [--json] [--plot FILE.png]``: summarise logged runs.

Reads the event files (:mod:`gradwatch._cli.logreader`), prints layers with their final
and extreme norms (vanishing, exploding and non-finite layers marked), the loss, and the
alerts; ``--plot`` draws the gradient-flow picture. A directory holding several runs (a
job re-run with the same logdir) is never merged: the newest run is shown, the others are
listed, and ``--run N`` picks one. A directory whose runs sit in subdirectories
(TensorBoard's ``runs/exp1``, ``runs/exp2``) gets one summary line per run, and
``--run NAME`` reports one of them in full. Damaged records are skipped and counted, and
the report says so; a readable run still exits 0, and so does a report whose ``--plot``
could not be drawn (matplotlib missing: the report is printed, and a note says what to
install). A directory that is missing, empty, or not written by gradwatch is a usage
error (exit 2) with a message saying which, never a traceback.
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
        metavar="N|NAME",
        dest="run_number",  # `run` is the subcommand's entry point (set_defaults below)
        help="which run: when LOGDIR holds several runs itself, N (1 the oldest, -1 the "
        "newest; default: the newest); when its runs are in subdirectories, NAME (e.g. "
        "exp1; default: one summary line per run)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also write the gradient-flow picture (layers x steps heat map of log10 "
        "gradient norm on a fixed scale, 1e-8 to 1e2, and each layer's norms at the "
        "first/middle/last step); with runs in subdirectories, one FILE-NAME.png per run",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradwatch._cli.logreader import run_directories

    path = args.logdir
    names = _subdirectory_runs(path, run_directories)
    if names is None:
        return _report_one(path, _run_number(args.run_number), args)
    if args.run_number is None:
        return _report_many(path, names, args)
    if args.run_number not in names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise UsageError(
            f"--run {args.run_number}: {path!r} holds no run named {args.run_number!r}; "
            f"its runs: {shown}."
        )
    return _report_one(os.path.join(path, args.run_number), None, args)


def _subdirectory_runs(path: str, run_directories: Any) -> list[str] | None:
    """Names (relative paths) of the runs in ``path``'s subdirectories, when ``path``
    holds no event files itself; None otherwise (``path`` is one run, or not readable:
    :func:`read_run` says why)."""
    if not os.path.isdir(path):
        return None
    try:
        found = run_directories(path)
    except OSError:
        return None
    if not found or os.path.normpath(found[0]) == os.path.normpath(path):
        return None
    return [os.path.relpath(directory, path) for directory in found]


def _run_number(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(
            f"--run {text}: this directory holds its runs itself, so --run takes their "
            "number (1 the oldest, -1 the newest); names are for runs in subdirectories."
        ) from None


def _read(path: str, number: int | None) -> Any:
    from gradwatch._cli.logreader import NoSuchRun, NotAGradwatchLog, read_run

    try:
        return read_run(path, run=number)
    except NotAGradwatchLog as error:
        raise UsageError(f"cannot report on {path!r}: {error}.") from None
    except NoSuchRun as error:
        raise UsageError(f"--run {number}: {error}.") from None
    except OSError as error:  # the directory itself cannot be listed (permissions)
        raise UsageError(f"cannot read {path!r} ({error.strerror or error}).") from None


def _report_one(path: str, number: int | None, args: argparse.Namespace) -> int:
    from gradwatch._cli.runsummary import summarize

    log = _read(path, number)
    summary = summarize(log)
    _check_plot_target(args.plot)
    if args.json:
        # The notes also go to stderr, where a job's log shows them next to the JSON.
        for note in notes(summary):
            print(f"gradwatch report: note: {note}", file=sys.stderr)
        json.dump(summary, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        render(summary, Output.for_stream(sys.stdout))
    sys.stdout.flush()
    if args.plot:
        _write_plot(log, args.plot)
    return 0


def _report_many(path: str, names: list[str], args: argparse.Namespace) -> int:
    """One summary per run in ``path``'s subdirectories; the runs gradwatch did not write
    are listed as such. A usage error only when none of them is a gradwatch run."""
    from gradwatch._cli.logreader import NotAGradwatchLog, read_run
    from gradwatch._cli.runsummary import summarize

    entries: list[dict[str, Any]] = []
    logs: dict[str, Any] = {}
    for name in names:
        try:
            log = read_run(os.path.join(path, name))
        except (NotAGradwatchLog, OSError) as error:
            entries.append({"name": name, "error": str(error)})
            continue
        logs[name] = log
        entries.append({"name": name, "summary": summarize(log)})
    if not logs:
        reasons = "; ".join(f"{entry['name']}: {entry['error']}" for entry in entries[:5])
        raise UsageError(
            f"cannot report on {path!r}: none of its {len(names)} run(s) in subdirectories "
            f"was written by gradwatch ({reasons})."
        )
    _check_plot_target(args.plot)
    if args.json:
        json.dump({"logdir": path, "directories": entries}, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        render_many(path, entries, Output.for_stream(sys.stdout))
    sys.stdout.flush()
    if args.plot:
        stem, extension = os.path.splitext(args.plot)
        for name, log in logs.items():
            _write_plot(log, f"{stem}-{name.replace(os.sep, '_')}{extension or '.png'}")
    return 0


def _check_plot_target(path: str | None) -> None:
    """A --plot into a directory that does not exist is a usage error, found before any
    output."""
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--plot {path!r}: directory {directory!r} does not exist.")


def _write_plot(log: Any, path: str) -> None:
    """Draw the picture after the report is out. A picture that cannot be drawn is a note
    on stderr, never a lost report or a changed exit status."""
    from gradwatch._sinks.flowplot import MatplotlibMissing, save_flow_png

    data = log.flow_data()
    if not len(data.steps):
        print(
            f"gradwatch report: note: --plot: {log.logdir!r} holds no per-layer statistics "
            "to draw; no picture written.",
            file=sys.stderr,
        )
        return
    try:
        save_flow_png(data, path, title=os.path.basename(os.path.normpath(log.logdir)))
    except MatplotlibMissing as error:
        print(f"gradwatch report: note: --plot skipped: {error}.", file=sys.stderr)
        return
    except OSError as error:
        raise UsageError(f"--plot {path!r}: cannot write it ({error.strerror or error}).") from None
    print(f"gradwatch: wrote the gradient-flow picture to {path}", file=sys.stderr)


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
        "update ratio", "flag",
    ]  # fmt: skip
    rows = []
    styles: list[str | None] = []
    for layer in layers:
        ratio = layer["update_ratio"]
        flag = layer.get("flag")
        rows.append(
            [
                layer["name"],
                *_stat_cells(layer["grad_norm"]),
                *_stat_cells(layer["weight_norm"]),
                fmt(_float(ratio["final"])) if ratio else "-",
                f"<< {flag}" if flag else "",
            ]
        )
        styles.append(FLAG_STYLE.get(flag or ""))
    out.table(columns, rows, right=[False] + [True] * 7 + [False], styles=styles)
    render_alerts(summary["alerts"], out)


#: Row style of a marked layer in the table (rich, on a terminal); piped output shows
#: the marker text alone.
FLAG_STYLE: dict[str, str] = {
    "vanishing": "cyan",
    "exploding": "bold red",
    "non-finite": "bold red",
}
#: Alert messages longer than this are cut at a sentence end (``--json`` has them whole).
ALERT_CHARS = 160


def short_message(message: str, limit: int = ALERT_CHARS) -> str:
    """The first sentences of ``message`` that fit in ``limit`` characters (at least
    the first one, cut with an ellipsis if it alone is longer)."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    shown = ""
    for sentence in text.replace(". ", ".\n").splitlines():
        candidate = f"{shown} {sentence}".strip()
        if len(candidate) > limit:
            break
        shown = candidate
    return shown or text[: limit - 1].rstrip() + "\u2026"


def render_alerts(alerts: list[dict[str, Any]], out: Output, title: str = "Alerts") -> None:
    """Each alert on one short line, its remedy on its own line below it; a remedy
    already given for an earlier alert is not repeated."""
    out.heading(f"{title} ({len(alerts)})")
    if not alerts:
        out.line("none", style="green")
    given: set[str] = set()
    for alert in alerts:
        if alert["kind"] is None:
            out.alert(None, f"step {alert['step']}: {short_message(alert['text'])}")
            continue
        remedy = alert["remedy"]
        out.alert(
            alert["severity"],
            f"{alert['kind']} at step {alert['step']} in {alert['layer']}: "
            f"{short_message(alert['message'])}",
            None if remedy in given else remedy,
        )
        if remedy:
            given.add(remedy)


def render_many(path: str, entries: list[dict[str, Any]], out: Output) -> None:
    """One line per run of a directory whose runs are in subdirectories, then each
    run's alerts."""
    out.line(f"gradwatch report: {path} ({len(entries)} runs in subdirectories)", style="bold")
    out.line("one line per run; --run NAME for one run in full", style="dim")
    rows = []
    styles: list[str | None] = []
    for entry in entries:
        summary = entry.get("summary")
        if summary is None:
            rows.append([entry["name"], "-", "-", "-", "-", "not a gradwatch run"])
            styles.append("dim")
            continue
        steps = summary["steps"]
        loss = summary["totals"]["loss"]
        total = summary["totals"]["grad_norm"]
        counts = summary["alert_counts"]
        flagged = [layer for layer in summary["layers"] if layer.get("flag")]
        kinds = sorted({layer["flag"] for layer in flagged})
        rows.append(
            [
                entry["name"],
                _span(steps["first"], steps["last"], steps["count"]),
                "-" if loss is None else
                f"{fmt(_float(loss['first']))} -> {fmt(_float(loss['final']))}",
                "-" if total is None else fmt(_float(total["final"])),
                f"{counts.get('error', 0)}/{counts.get('warning', 0)}/{counts.get('info', 0)}",
                ", ".join(f"{len([x for x in flagged if x['flag'] == k])} {k}" for k in kinds),
            ]
        )  # fmt: skip
        worst = "error" if counts.get("error") else "warning" if counts.get("warning") else None
        styles.append({"error": "bold red", "warning": "yellow"}.get(worst or ""))
    out.table(
        ["run", "steps", "loss first -> final", "total grad norm", "alerts e/w/i", "layers"],
        rows,
        right=[False, False, False, True, True, False],
        styles=styles,
    )
    for entry in entries:
        summary = entry.get("summary")
        if summary is None:
            out.line(f"{entry['name']}: not read: {entry['error']}", style="dim")
            continue
        if summary["alerts"]:
            render_alerts(summary["alerts"], out, title=f"{entry['name']}: alerts")
