"""pytest plugin: smoke-check models in a test suite in one line.

Installed with gradwatch (entry point ``pytest11``), so any project that has gradwatch
installed can write::

    def test_model_trains(gradwatch_check):
        gradwatch_check(build_model(), batches, torch.nn.functional.cross_entropy)

The fixture runs :func:`gradwatch.check` and fails the test with the report as the
message when an alert at or above ``fail_on`` (default ``"warning"``) was raised: the
causes first (each in one line, what to change, the evidence), then the alerts and the
per-layer norms, wrapped at :data:`WIDTH` columns. The alerts appear there once: the
check's own alert log lines are kept out of pytest's "Captured log call".
:func:`assert_healthy` does the same for a report you made yourself.
``pytest --gradwatch-logdir DIR`` also writes each check's TensorBoard logs under
``DIR/<test name>`` for a look after a red CI run.

pytest loads this plugin in every environment where gradwatch is installed. Loading it
imports neither torch nor the rest of gradwatch (``import gradwatch`` is lazy): they are
imported when a test first calls the fixture. ``pytest -p no:gradwatch`` switches it off.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gradwatch._report import Report

__all__ = ["assert_healthy", "failure_message"]

#: The failure message's lines are wrapped at this many columns.
WIDTH = 100


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradwatch", "gradwatch model smoke checks")
    group.addoption(
        "--gradwatch-logdir",
        metavar="DIR",
        default=None,
        help="write the TensorBoard logs of each gradwatch_check under DIR/<test name>",
    )


def failure_message(
    report: Report, *, fail_on: str = "warning", ignore: Sequence[str] = ()
) -> str | None:
    """The failure text for ``report`` under these rules, or None when it passes."""
    from gradwatch._alerts import failing_alerts, validate_ignore

    kinds = validate_ignore(ignore)
    failing = failing_alerts(report.alerts, fail_on=fail_on, ignore=kinds)
    if not failing:
        return None
    found = ", ".join(sorted({f"{a.kind} ({a.severity})" for a in failing}))
    rules = f"fail_on={fail_on!r}" + (f", ignore={list(kinds)!r}" if kinds else "")
    failing_ids = {id(a) for a in failing}
    causes = [d.cause for d in report.diagnoses if any(id(a) in failing_ids for a in d.evidence)]
    head = f"gradwatch found {len(failing)} problem(s) [{rules}]: {found}"
    if causes:
        head += f"; {len(causes)} cause(s): {', '.join(causes)}"
    return f"{head}\n\n{report.summary(width=WIDTH)}"


def assert_healthy(report: Report, *, fail_on: str = "warning", ignore: Iterable[str] = ()) -> None:
    """Fail the current test (``pytest.fail``) with the report when it is not healthy.

    Args:
        report: what :func:`gradwatch.check` returned.
        fail_on: the lowest severity that fails: ``"info"``, ``"warning"`` or ``"error"``.
        ignore: alert kinds that never fail (e.g. ``["not_learning"]``).
    """
    message = failure_message(report, fail_on=fail_on, ignore=tuple(ignore))
    if message is not None:
        pytest.fail(message, pytrace=False)


def _test_dirname(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:150] or "test"


@pytest.fixture
def gradwatch_check(request: pytest.FixtureRequest) -> Callable[..., Report]:
    """A callable that runs :func:`gradwatch.check` and fails the test if unhealthy.

    Call it as ``gradwatch_check(model, data, loss_fn=None, *, optimizer=None, steps=20,
    fail_on="warning", ignore=(), **options)``; ``options`` go to ``check()``
    (``baseline=True``, ``try_fixes=True``, ``logdir=...``, any ``watch()`` option).
    ``loss_fn=None`` uses a Hugging Face model's own loss. It returns the
    :class:`gradwatch.Report` when the check passes.
    """
    root = request.config.getoption("--gradwatch-logdir")
    calls = 0

    def run(
        model: Any,
        data: Any,
        loss_fn: Any = None,
        *,
        optimizer: Any = None,
        steps: int = 20,
        fail_on: str = "warning",
        ignore: Iterable[str] = (),
        **options: Any,
    ) -> Report:
        nonlocal calls
        import gradwatch
        from gradwatch._alerts import validate_fail_on, validate_ignore
        from gradwatch._check import quiet_alert_log

        validate_fail_on(fail_on)
        kinds = validate_ignore(tuple(ignore))
        if root is not None and "logdir" not in options:
            name = _test_dirname(request.node.nodeid) + (f"-{calls}" if calls else "")
            options["logdir"] = os.path.join(root, name)
        calls += 1
        # The report (the failure message) shows every alert; the log would show them again.
        with quiet_alert_log():
            report = gradwatch.check(
                model, data, loss_fn, optimizer=optimizer, steps=steps, **options
            )
        assert_healthy(report, fail_on=fail_on, ignore=kinds)
        return report

    return run
