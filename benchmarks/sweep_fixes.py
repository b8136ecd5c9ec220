"""Sweep ``check(..., try_fixes=True)`` over the model zoo: the top diagnosis's cause, and
whether a fix gradwatch applies itself makes the run healthy and is ranked first.

Every chosen scenario of ``tests.zoo`` (the broken ones, edge cases with no demand
included; or with ``--healthy`` the healthy ones) is built (seeded) and run through
``gradwatch.check(model, batches, loss_fn, optimizer=..., steps=..., try_fixes=True)``,
i.e. check()'s own loop: a scenario's learning-rate scheduler is not part of it, and its
in-loop clipping becomes watch()'s ``clip=`` policy, which clips after measuring (the
table marks such scenarios "sched"/"clip"). A broken scenario should name its cause
first and, where one of gradwatch's fixes applies, find one that makes the run healthy,
ranked first; a healthy one should get no diagnosis and no trial.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_fixes.py   # failing seeds
    ... benchmarks/sweep_fixes.py --tags real                   # the real-model failures
    ... benchmarks/sweep_fixes.py --healthy --tags seed         # healthy seeds: no trials
    ... benchmarks/sweep_fixes.py --only lr --verbose           # with each trial

Exit status 1 when a failing run that got trials found no working fix ranked first, or a
healthy run got a diagnosis or a trial.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence

import torch

import gradwatch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.zoo import SCENARIOS, Scenario, build


def chosen(only: str, tags: str, healthy: bool) -> list[Scenario]:
    names = [n for n in only.split(",") if n]
    wanted = {t for t in tags.split(",") if t}
    out = []
    for scenario in SCENARIOS.values():
        if healthy != scenario.healthy:
            continue
        if names and not any(n in scenario.name for n in names):
            continue
        if wanted and not wanted & scenario.tags:
            continue
        out.append(scenario)
    return out


def sweep(scenario: Scenario, seed: int, steps: int | None, verbose: bool) -> dict[str, object]:
    run = build(scenario, seed)
    notes = [n for n, present in (("sched", run.scheduler), ("clip", run.clip)) if present]
    start = time.perf_counter()
    report = gradwatch.check(
        run.model,
        run.batches,
        run.loss_fn,
        optimizer=run.optimizer,
        steps=steps or run.steps,
        try_fixes=True,
        clip=run.clip,  # the run's own clipping, as watch()'s clip policy
    )
    seconds = time.perf_counter() - start
    trials = report.fix_trials
    best = trials[0] if trials else None
    row: dict[str, object] = {
        "scenario": scenario.name,
        "notes": ",".join(notes) or "-",
        "ok": report.ok,
        "cause": report.diagnoses[0].cause if report.diagnoses else "-",
        "tried": len(trials),
        "working": sum(t.ok for t in trials),
        "best": best.fix if best else "-",
        "best_ok": bool(best and best.ok),
        "loss": f"{report.losses and report.losses[-1]:.3g}" if report.losses else "-",
        "best_loss": "-" if best is None else f"{best.final_loss:.3g}",
        "seconds": seconds,
    }
    if verbose:
        print(f"\n== {scenario.name}: {report.headline()}", flush=True)
        for d in report.diagnoses:
            print(f"   cause {d.cause}: {d.summary}")
        for t in trials:
            verdict = (
                "HEALTHY"
                if t.ok
                else f"{len(t.problems)} problems " + ",".join(d.cause for d in t.diagnoses)
            )
            print(f"   {t.fix:15s} {verdict:40s} loss {t.comparison()}  {t.description}")
    return row


def verdict(row: dict[str, object], healthy: bool) -> str:
    if healthy:
        return "OK" if row["ok"] and row["tried"] == 0 else "FALSE ALARM"
    if row["ok"]:
        return "NOT FLAGGED"
    if not row["tried"]:
        return "NO FIX APPLIES"
    return "FIXED, RANKED FIRST" if row["best_ok"] else "NO WORKING FIX"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated name substrings")
    parser.add_argument("--tags", default="seed", help="comma-separated tags (any): seed, real")
    parser.add_argument("--healthy", action="store_true", help="the healthy scenarios instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override every run's steps")
    parser.add_argument("--verbose", action="store_true", help="each trial")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("gradwatch").addHandler(logging.NullHandler())
    logging.getLogger("gradwatch").propagate = False
    scenarios = chosen(args.only, args.tags, args.healthy)
    columns = ("scenario", "notes", "cause", "tried", "working", "best", "verdict", "seconds")
    print(" | ".join(columns))
    print("|".join("---" for _ in columns))
    bad = 0
    for scenario in scenarios:
        try:
            row = sweep(scenario, args.seed, args.steps, args.verbose)
        except Exception as error:  # a scenario check() cannot run: say so, go on
            print(f"{scenario.name} | ERROR {type(error).__name__}: {error}", flush=True)
            bad += 1
            continue
        row["verdict"] = verdict(row, args.healthy)
        bad += row["verdict"] in ("FALSE ALARM", "NO WORKING FIX")
        cells = [
            f"{row[c]:.1f}" if isinstance(row[c], float) and not math.isnan(row[c]) else str(row[c])
            for c in columns
        ]
        print(" | ".join(cells), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
