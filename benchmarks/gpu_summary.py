"""The one summary ``benchmarks/gpu_check.sh`` prints: the CUDA tests, the overhead table.

    python benchmarks/gpu_summary.py --tests-rc 0 --tests-xml cuda-tests.xml \\
        --bench-rc 0 --bench-file benchmarks/results/bench_overhead-DATE-GPU.md

It reads pytest's JUnit XML (how many CUDA tests ran, passed, failed, were skipped, and
the failures' names) and the benchmark's results file (the machine line, the summary
table and the device-memory table), prints them together with one verdict, and exits 0
only if every part passed: the tests ran (none skipped: the machine has a GPU, so a skip
means a broken set-up) and passed, and the table was completed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import xml.etree.ElementTree as ET


@dataclasses.dataclass
class TestCounts:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failed_names: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped


def read_junit(path: str) -> TestCounts | None:
    """Counts from pytest's ``--junitxml`` file; None if it is missing or unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = TestCounts()
    for suite in suites:
        for case in suite.iter("testcase"):
            counts.tests += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None:
                counts.failures += 1
                counts.failed_names.append(name)
            elif case.find("error") is not None:
                counts.errors += 1
                counts.failed_names.append(name)
            elif case.find("skipped") is not None:
                counts.skipped += 1
    return counts


def bench_sections(text: str) -> tuple[str, list[str]]:
    """(the machine line, the lines of the summary and device-memory sections)."""
    lines = text.splitlines()
    machine = next((line for line in lines if line.startswith("gradwatch ")), "")
    keep: list[str] = []
    taking = False
    for line in lines:
        if line.startswith("## Summary") or line.startswith("### Device memory"):
            taking = True
        elif line.startswith("### ") or line.startswith("# "):
            taking = False
        if taking:
            keep.append(line)
    return machine, keep


def summarise(
    tests_rc: int, tests: TestCounts | None, bench_rc: int, bench_text: str | None
) -> tuple[list[str], bool]:
    """The summary's lines and whether everything passed."""
    problems: list[str] = []
    out = ["=" * 20 + " gradwatch GPU check " + "=" * 20]
    machine, sections = bench_sections(bench_text or "")
    if machine:
        out.append(f"machine: {machine}")
    if tests is None:
        out.append(f"CUDA tests: no report (pytest exit status {tests_rc})")
        problems.append("the CUDA tests did not report")
    else:
        out.append(
            f"CUDA tests: {tests.passed} passed, {tests.failures + tests.errors} failed, "
            f"{tests.skipped} skipped of {tests.tests} (pytest exit status {tests_rc})"
        )
        out += [f"  failed: {name}" for name in tests.failed_names]
        if tests_rc != 0 or tests.failures or tests.errors:
            problems.append("CUDA tests failed")
        if tests.tests == 0 or tests.skipped:
            problems.append("CUDA tests were skipped or none ran (is the GPU visible?)")
    complete = bench_text is not None and any(s.startswith("## Summary") for s in sections)
    if bench_rc == 124:
        problems.append("the overhead table ran out of time (partial results below)")
    elif bench_rc != 0 or not complete:
        problems.append(f"the overhead table failed (exit status {bench_rc})")
    out.append("overhead table: " + ("complete" if complete else "incomplete"))
    out += sections
    out.append("")
    out.append("verdict: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    return out, not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tests-rc", type=int, required=True, help="pytest's exit status")
    parser.add_argument("--tests-xml", required=True, help="pytest's --junitxml file")
    parser.add_argument("--bench-rc", type=int, required=True, help="the table's exit status")
    parser.add_argument("--bench-file", default="", help="the table's results file")
    args = parser.parse_args(argv)
    bench_text = None
    if args.bench_file and os.path.exists(args.bench_file):
        with open(args.bench_file) as f:
            bench_text = f.read()
    lines, ok = summarise(args.tests_rc, read_junit(args.tests_xml), args.bench_rc, bench_text)
    print("\n".join(lines))
    if args.bench_file:
        print(f"results file: {args.bench_file}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
