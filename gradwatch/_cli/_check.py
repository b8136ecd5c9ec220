"""``gradwatch check TARGET``: run :func:`gradwatch.check` on the user's model and judge it.

Exit status: 0 healthy, 1 unhealthy (an alert at or above ``--fail-on`` whose kind is not
``--ignore``d), 2 usage error: a bad target, an import error in the user's file, a
function returning the wrong shape, or an exception while training, ``SystemExit``
included (each reported with the user's traceback): a check that did not finish has no
verdict. Anything the user's code writes to stdout goes to stderr, down to file
descriptor 1 (:mod:`gradwatch._cli._stdout`), so stdout holds only the report (and
``--json`` output always parses).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from gradwatch._cli._errors import UsageError
from gradwatch._cli._output import Output
from gradwatch._format import fmt
from gradwatch._names import display_name, quoted_name
from gradwatch._notebook import marked_layers


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    from gradwatch._alerts import ALERT_KINDS, SEVERITIES

    parser = subparsers.add_parser(
        "check",
        help="train a model for a few steps under watch and report its gradient health",
        description=(
            "Train the model that TARGET builds for a few optimizer steps with every "
            "gradwatch detector on, print what was found, and exit 0 (healthy), "
            "1 (unhealthy) or 2 (usage error). TARGET is 'pkg.module:function' or "
            "'path/to/file.py:function'; the function takes no arguments and returns "
            "(model, data, loss_fn) or (model, data, loss_fn, optimizer)."
        ),
    )
    parser.add_argument("target", metavar="TARGET", help="pkg.module:function or file.py:function")
    parser.add_argument(
        "--steps", type=_positive_int, default=20, help="optimizer steps (default 20)"
    )
    parser.add_argument("--logdir", metavar="DIR", help="also write TensorBoard logs there")
    parser.add_argument(
        "--json", action="store_true", help="print Report.to_dict() (plus a 'cli' verdict)"
    )
    parser.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="warning",
        help="lowest alert severity that makes the check fail (default: warning)",
    )
    parser.add_argument(
        "--ignore",
        metavar="KIND",
        # One value per --ignore (repeat it, or comma-separate kinds): a list-taking
        # option would swallow the TARGET that follows it.
        action="append",
        default=[],
        help="an alert kind that never fails the check; repeat or comma-separate "
        f"(one of: {', '.join(ALERT_KINDS)})",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first measure the learning-rate-zero loss baseline (check(baseline=True))",
    )
    parser.add_argument(
        "--try-fixes",
        action="store_true",
        help=(
            "when unhealthy, re-run the check from the same starting weights with each fix "
            "gradwatch can apply itself (check(try_fixes=True)); needs --steps >= 10"
        ),
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradwatch._alerts import failing_alerts, validate_ignore
    from gradwatch._cli._progress import step_progress
    from gradwatch._cli._target import load_target, user_traceback

    ignore = [kind for item in args.ignore for kind in item.split(",") if kind]
    try:
        ignore = list(validate_ignore(ignore))
    except ValueError as error:
        raise UsageError(f"--ignore: {error}") from None

    import gradwatch
    from gradwatch._check import reporting_trials
    from gradwatch._cli._stdout import report_only_stdout
    from gradwatch._fixes import MIN_STEPS

    if args.try_fixes and args.steps < MIN_STEPS:
        raise UsageError(
            f"--try-fixes needs --steps {MIN_STEPS} or more to judge whether a fix works, "
            f"got --steps {args.steps}. Pass e.g. --steps 20 (the default)."
        )
    # Whatever the user's code writes to stdout (print, sys.__stdout__, os.write(1, ...),
    # a thread that outlives the check) goes to stderr; the report alone goes to stdout.
    with report_only_stdout() as stdout:
        inputs = load_target(args.target)
        with step_progress(args.steps) as taken, reporting_trials(_trial_progress):
            try:
                report = gradwatch.check(
                    inputs.model,
                    inputs.data,
                    inputs.loss_fn,
                    optimizer=inputs.optimizer,
                    steps=args.steps,
                    baseline=args.baseline,
                    try_fixes=args.try_fixes,
                    logdir=args.logdir,
                )
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # SystemExit too: a check cut short fails
                raise UsageError(
                    _training_failed(error, args, taken.done),
                    user_traceback(error, skip_prefixes=(gradwatch.__path__[0],)),
                ) from None
        failing = failing_alerts(report.alerts, fail_on=args.fail_on, ignore=ignore)
        status = 1 if failing else 0
        if args.json:
            data = report.to_dict()
            data["cli"] = {
                "healthy": not failing,
                "exit_status": status,
                "fail_on": args.fail_on,
                "ignore": ignore,
                "failing": len(failing),
                "target": args.target,
                "logdir": args.logdir,
            }
            json.dump(data, stdout, indent=2, allow_nan=False)
            stdout.write("\n")
        else:
            render(report, Output.for_stream(stdout), failing=len(failing), args=args)
    return status


def _trial_progress(number: int, total: int, fix: str) -> None:
    """One line on stderr before each fix trial: the trials take up to ``total`` times the
    check's own time, so the user sees where it is (also in a CI log)."""
    import sys

    sys.stderr.write(f"gradwatch check: trying fix {number + 1}/{total}: {fix}\n")
    sys.stderr.flush()


def _training_failed(error: BaseException, args: argparse.Namespace, done: int) -> str:
    """Why the check has no verdict. ``sys.exit()`` in the user's code is named as such:
    whatever its code, a check that did not finish fails (exit status 2), so a CI gate
    never passes on it."""
    where = f"after {done} of {args.steps} steps"
    if isinstance(error, SystemExit):
        return (
            f"checking {args.target} did not finish: the training code called "
            f"sys.exit({error.code!r}) (SystemExit) {where}. A check that does not finish "
            "has no verdict, so it fails."
        )
    return f"checking {args.target} failed with {type(error).__name__}: {error} ({where})"


def render(report: Any, out: Output, *, failing: int, args: argparse.Namespace) -> None:
    """The human form of a check: the verdict; the causes first (each in one line, what to
    change, the evidence); the fix trials; the loss; the alerts; the per-layer table."""
    counts = report.counts()
    healthy = failing == 0
    verdict = "HEALTHY" if healthy else "UNHEALTHY"
    out.verdict(
        healthy,
        f"gradwatch check {args.target}: {verdict} after {report.steps} step(s) "
        f"(alerts: {counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['info']} info)",
    )
    rules = f"fails on: {args.fail_on} or worse"
    if args.ignore:
        rules += f"; ignoring {', '.join(sorted(set(args.ignore)))}"
    out.line(rules, style="dim")
    if report.stopped:
        out.line(f"Stopped early: {report.stopped}", style="yellow")
    if not report.problems:
        out.line(report.numbers_line())
    types = {layer.name: layer.type for layer in report.layers}
    _render_causes(report, out, types)
    _render_fix_trials(report, out)
    losses = list(report.losses)
    if losses:
        finite = [v for v in losses if math.isfinite(v)]
        text = f"loss: first {fmt(losses[0])}, last {fmt(losses[-1])}"
        if finite:
            text += f", min {fmt(min(finite))}"
        out.line(text)
    title = "Alerts (the evidence" if report.diagnoses else "Alerts ("
    out.heading(f"{title}{', ' if report.diagnoses else ''}{len(report.alerts)})")
    if not report.alerts:
        out.line("none", style="green")
    rank = {"error": 0, "warning": 1, "info": 2}
    for alert in sorted(report.alerts, key=lambda a: (rank[a.severity], a.step)):
        where = alert.where if alert.layer is None else layer_label(alert.layer, types)
        out.alert(
            alert.severity,
            f"{alert.kind} at step {alert.step} in {where}: {alert.message}",
            alert.remedy,
        )
    out.heading("Layers (input side first; norms at the last step)")
    marks = marked_layers(report)
    rows = [
        [
            display_name(layer.name),
            layer.type,
            fmt(layer.final_grad_norm),
            fmt(layer.final_weight_norm),
            fmt(layer.final_ratio),
            fmt(layer.max_grad_norm),
            fmt(layer.max_weight_norm),
            marks.get(layer.name, ""),
        ]
        for layer in report.layers
    ]
    columns = ["layer", "type", "grad norm", "weight norm", "grad/weight", "max grad"]
    columns += ["max weight", "alert"]
    if not marks:  # no column that is always empty
        columns.pop()
        rows = [row[:-1] for row in rows]
    out.table(
        columns,
        rows,
        right=[False, False, True, True, True, True, True, False][: len(columns)],
        styles=[_MARK_STYLE.get(marks.get(layer.name, "")) for layer in report.layers],
    )
    if args.logdir:
        out.line(f"\nTensorBoard logs: {args.logdir}  (gradwatch report {args.logdir})")


#: Colours of the layers a vanishing or exploding alert named (on a terminal).
_MARK_STYLE = {"vanishing": "cyan", "exploding": "red"}


def layer_label(name: str, types: dict[str, str]) -> str:
    """``layer '0' (Linear)``."""
    kind = types.get(name)
    return f"layer {quoted_name(name)}" + (f" ({kind})" if kind else "")


def _render_causes(report: Any, out: Output, types: dict[str, str]) -> None:
    if not report.diagnoses:
        return
    problems = len(report.problems)
    out.heading(f"Causes ({problems} problem(s): {len(report.diagnoses)} cause(s))")
    for rank, diagnosis in enumerate(report.diagnoses, 1):
        where = "" if diagnosis.layer is None else f", {layer_label(diagnosis.layer, types)}"
        out.line(
            f"{rank}. {diagnosis.cause} (from step {diagnosis.step}{where}): {diagnosis.summary}",
            style="bold",
        )
        if diagnosis.remedies:
            out.line("   Change:")
            for number, remedy in enumerate(diagnosis.remedies, 1):
                out.line(f"     {number}. {remedy}")
        evidence = "; ".join(
            f"{a.kind} ({a.severity}) at step {a.step}"
            + ("" if a.layer is None else f" in {layer_label(a.layer, types)}")
            for a in diagnosis.evidence
        )
        out.line(f"   Evidence: {evidence}.", style="dim")


def _render_fix_trials(report: Any, out: Output) -> None:
    if not report.tried_fixes or report.ok:
        return
    out.heading(f"Fixes tried from the same starting weights ({len(report.fix_trials)})")
    if not report.fix_trials:
        out.line(
            "none: no fix gradwatch can apply itself (learning rate, warmup, clipping, "
            "initialisation) addresses these causes."
        )
        return
    rows = []
    for rank, trial in enumerate(report.fix_trials, 1):
        if trial.ok:
            result = "healthy"
        elif trial.error:
            result = "failed"
        else:
            result = f"{len(trial.problems)} problem(s)"
        rows.append([str(rank), trial.fix, result, trial.comparison(), trial.description])
    out.table(
        ["#", "fix", "result", "final loss", "what changed"],
        rows,
        right=[True, False, False, False, False],
        styles=["green" if t.ok else None for t in report.fix_trials],
    )
    best = report.fix_trials[0]
    if best.ok:
        out.line(f"Best: {best.fix} ({best.description}).", style="bold green")
    else:
        out.line("No fix made the run healthy; see the causes' remedies above.", style="yellow")
