"""Sweep gradwatch's detectors over the model zoo: false alarms, misses and lead times.

Every scenario of ``tests.zoo`` (textbook ``seed`` cases and ``real`` architectures) is
trained under ``gradwatch.watch`` with its own plain training loop. A healthy scenario must
come out without any warning or error (else FALSE ALARM); a broken one must raise at least
one of the alert kinds that fit its failure at warning or error (else MISS). For a failure
that develops during training, the lead time is the step where the loss first exceeds 3x its
start (or goes non-finite) minus the step of the first fitting alert.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_detectors.py
    ... benchmarks/sweep_detectors.py --tags seed --seeds 2      # the old sweep's cases
    ... benchmarks/sweep_detectors.py --only gpt2,vit --verbose  # with every alert's message
    ... benchmarks/sweep_detectors.py --list                     # scenarios and what they expect

Exit status 1 when any run is a false alarm, a miss or an error.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from typing import Optional

import torch

import gradwatch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.zoo import SCENARIOS, Outcome, Scenario, median, train


def number(value: Optional[float]) -> str:
    """A loss for the table: 3 significant digits, '-' when unknown."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def where(layer: Optional[str]) -> str:
    """An alert's layer for the table: the module name, '(root)' or '(model)'."""
    if layer is None:
        return "(model)"
    return layer or "(root)"


def expectation(scenario: Scenario) -> str:
    """What the scenario asks of gradwatch, in words."""
    if scenario.expect is None:
        return "healthy"
    if not scenario.expect:
        return "no demand"
    return "|".join(sorted(scenario.expect))


def select(names: str, tags: str) -> list[Scenario]:
    """The scenarios whose name contains one of the comma-separated ``names`` (all when
    empty) and that carry one of the comma-separated ``tags`` (any when empty)."""
    wanted_names = [n for n in names.split(",") if n]
    wanted_tags = {t for t in tags.split(",") if t}
    chosen = []
    for scenario in SCENARIOS.values():
        if wanted_names and not any(n in scenario.name for n in wanted_names):
            continue
        if wanted_tags and not wanted_tags & scenario.tags:
            continue
        chosen.append(scenario)
    return chosen


def first_by_kind(outcome: Outcome) -> list[gradwatch.Alert]:
    """The first warning-or-error alert of each kind, in step order."""
    first: dict[str, gradwatch.Alert] = {}
    for alert in outcome.problems:
        current = first.get(alert.kind)
        if current is None or alert.step < current.step:
            first[alert.kind] = alert
    return sorted(first.values(), key=lambda a: a.step)


def describe(outcome: Outcome, verbose: bool) -> str:
    """The lines of one run: the verdict row, then details."""
    scenario = outcome.scenario
    chance = scenario.chance_loss
    row = (
        f"{outcome.verdict:11s} {scenario.name:38s} s{outcome.seed} {outcome.steps:4d} steps "
        f"{outcome.seconds:6.1f}s  loss {number(outcome.first_loss)} (chance {number(chance)})"
        f" -> {number(outcome.final_loss)}  expect {expectation(scenario)}"
    )
    lines = [row]
    loud = first_by_kind(outcome)
    if loud:
        lines.append(
            "    raised: "
            + ", ".join(f"{a.kind}:{a.severity[0]}@{a.step} {where(a.layer)}" for a in loud)
        )
    if outcome.diagnoses:
        causes = ", ".join(d.cause for d in outcome.diagnoses)
        lines.append(f"    cause: {causes}")
    if scenario.develops:
        blowup = outcome.blowup_step
        fitting = outcome.first_fitting
        lead = outcome.lead
        lines.append(
            f"    loss x3 at step {blowup if blowup is not None else '-'}; first fitting alert "
            f"{f'{fitting.kind}@{fitting.step}' if fitting else '-'}; lead "
            f"{lead if lead is not None else '-'}"
        )
    if outcome.stopped:
        lines.append(f"    stopped: {outcome.stopped}")
    if verbose:
        for alert in outcome.alerts:
            lines.append(
                f"    [{alert.severity}] {alert.kind}@{alert.step} {where(alert.layer)}: "
                f"{alert.message}"
            )
        for diagnosis in outcome.diagnoses:
            lines.append("    diagnosis: " + str(diagnosis).replace("\n", "\n    "))
    elif outcome.verdict == "FALSE ALARM":
        for alert in loud:
            lines.append(f"      {alert.kind}@{alert.step} {where(alert.layer)}: {alert.message}")
    return "\n".join(lines)


def totals(outcomes: Sequence[Outcome]) -> str:
    """Per alert kind: false alarms (healthy runs it fired on at warning+), runs of broken
    scenarios expecting it that were missed (no fitting kind fired), the broken runs it
    caught, and the median lead over developing failures it caught."""
    false_alarms: collections.Counter[str] = collections.Counter()
    misses: collections.Counter[str] = collections.Counter()
    caught: collections.Counter[str] = collections.Counter()
    leads: dict[str, list[int]] = collections.defaultdict(list)
    kinds: set[str] = set()
    for outcome in outcomes:
        scenario = outcome.scenario
        fired = {a.kind for a in outcome.problems}
        kinds |= fired | set(scenario.expect or ())
        if scenario.expect is None:
            false_alarms.update(fired)
            continue
        if not scenario.expect:
            continue
        if outcome.verdict == "MISS":
            misses.update(scenario.expect)
        blowup = outcome.blowup_step
        for kind in fired & scenario.expect:
            caught[kind] += 1
            first = outcome.first_problem([kind])
            if scenario.develops and blowup is not None and first is not None:
                leads[kind].append(blowup - first.step)
    lines = [f"{'detector':18s} {'false alarms':>12s} {'misses':>7s} {'caught':>7s} {'lead':>6s}"]
    for kind in sorted(kinds):
        lead = median(leads[kind])
        lines.append(
            f"{kind:18s} {false_alarms[kind]:12d} {misses[kind]:7d} {caught[kind]:7d} "
            f"{'-' if lead is None else f'{lead:g}':>6s}"
        )
    return "\n".join(lines)


def causes_table(outcomes: Sequence[Outcome]) -> str:
    """Per run of a scenario that raised a problem: the top diagnosis (its root cause)."""
    lines = [f"{'scenario':40s} {'expect':34s} top cause"]
    for outcome in outcomes:
        if not outcome.problems:
            continue
        top = outcome.diagnoses[0].cause if outcome.diagnoses else "-"
        name = f"{outcome.scenario.name} s{outcome.seed}"
        lines.append(f"{name:40s} {expectation(outcome.scenario):34s} {top}")
    return "\n".join(lines)


def run_all(
    scenarios: Iterable[Scenario], seeds: int, steps: Optional[int], verbose: bool
) -> tuple[list[Outcome], int]:
    """Train every scenario for every seed, printing as it goes; returns the outcomes and
    the number of runs that raised an exception."""
    outcomes: list[Outcome] = []
    errors = 0
    for scenario in scenarios:
        for seed in range(seeds):
            try:
                outcome = train(scenario, seed=seed, steps=steps)
            except Exception:  # a broken scenario must not end the sweep
                errors += 1
                print(f"{'ERROR':11s} {scenario.name:38s} s{seed}", flush=True)
                print("    " + traceback.format_exc().strip().replace("\n", "\n    "))
                continue
            outcomes.append(outcome)
            print(describe(outcome, verbose), flush=True)
    return outcomes, errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated name substrings")
    parser.add_argument("--tags", default="", help="comma-separated tags (any): seed, real...")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="override every run's steps")
    parser.add_argument("--verbose", action="store_true", help="every alert, with its message")
    parser.add_argument("--list", action="store_true", help="list the scenarios and stop")
    args = parser.parse_args(argv)
    scenarios = select(args.only, args.tags)
    if args.list:
        for scenario in scenarios:
            tags = ",".join(sorted(scenario.tags))
            print(f"{scenario.name:40s} {tags:22s} {expectation(scenario)}")
        return 0
    if not scenarios:
        print("no scenario matches", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    # The alerts are printed here; gradwatch's own log lines would only repeat them.
    logging.getLogger("gradwatch").setLevel(logging.CRITICAL + 1)
    start = time.perf_counter()
    outcomes, errors = run_all(scenarios, args.seeds, args.steps, args.verbose)
    elapsed = time.perf_counter() - start
    verdicts = collections.Counter(o.verdict for o in outcomes)
    print()
    print(totals(outcomes))
    print()
    print(causes_table(outcomes))
    print()
    print(
        f"{len(outcomes) + errors} runs in {elapsed:.0f}s: {verdicts['OK']} OK, "
        f"{verdicts['FALSE ALARM']} false alarms, {verdicts['MISS']} misses, {errors} errors"
    )
    return 1 if errors or verdicts["FALSE ALARM"] or verdicts["MISS"] else 0


if __name__ == "__main__":
    sys.exit(main())
