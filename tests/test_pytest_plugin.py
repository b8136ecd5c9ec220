"""The pytest plugin, run for real: pytester runs test files that use the fixture."""

from __future__ import annotations

import textwrap

import pytest

import gradwatch
from gradwatch.pytest_plugin import WIDTH, assert_healthy, failure_message

from .helpers import make_mlp, regression_batches

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    def batches():
        torch.manual_seed(0)
        x = torch.randn(32, 8)
        return [(x, x.sum(dim=1, keepdim=True))]


    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


    def nan_loss(output, target):
        return nn.functional.mse_loss(output, target) * float("nan")
    """
)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(models=MODELS)
    pytester.syspathinsert()
    return pytester


@pytest.mark.slow
def test_fixture_passes_healthy_fails_unhealthy_and_writes_logs(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_smoke=textwrap.dedent(
            """
            from torch import nn

            from models import batches, mlp, nan_loss


            def test_healthy(gradwatch_check):
                report = gradwatch_check(mlp(), batches(), nn.functional.mse_loss, steps=5)
                assert report.ok and report.steps == 5
                gradwatch_check(mlp(), batches(), nn.functional.mse_loss, steps=2)


            def test_nan(gradwatch_check):
                gradwatch_check(mlp(), batches(), nan_loss, steps=3)


            def test_nan_ignored(gradwatch_check):
                gradwatch_check(mlp(), batches(), nan_loss, steps=3, ignore=["nonfinite"])
            """
        )
    )
    logs = project.path / "gw-logs"
    # A subprocess: torch cannot be imported afresh inside this process (pytester's
    # in-process runs unload the modules a run imported).
    result = project.runpytest_subprocess("-p", "no:cacheprovider", f"--gradwatch-logdir={logs}")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_nan _*",
            "gradwatch found 1 problem(s) [[]fail_on='warning'[]]: nonfinite (error); "
            "1 cause(s): *",
            "gradwatch check: UNHEALTHY after 3 step(s)*",
            "1 problem(s): 1 cause(s).",
            "Cause 1: *",
        ]
    )
    out = result.stdout.str()
    assert "Try: lower the learning rate" in out  # the remedy is in the message
    assert "Per-layer norms" in out
    assert "Traceback" not in out  # pytrace=False: the report, not gradwatch's internals
    # the cause, what to change and the evidence come before the alerts
    message = out[out.index("_ test_nan _") : out.index("short test summary")]
    assert message.index("Cause 1:") < message.index("Change:") < message.index("Evidence:")
    assert message.index("Evidence:") < message.index("Alerts (the evidence):")
    # each alert once: not again under "Captured log call"; lines wrapped
    assert "Captured log" not in out
    assert message.count("[error] nonfinite at step 0") == 1
    assert max(len(line) for line in message.splitlines()) <= WIDTH

    from gradwatch._cli.logreader import read_run

    runs = sorted(path.name for path in logs.iterdir())
    assert runs == [
        "test_smoke.py_test_healthy",
        "test_smoke.py_test_healthy-1",
        "test_smoke.py_test_nan",
        "test_smoke.py_test_nan_ignored",
    ]
    assert read_run(logs / runs[0]).steps() == list(range(5))
    assert read_run(logs / runs[1]).steps() == [0, 1]
    assert "nonfinite" in read_run(logs / runs[2]).alerts[0][1]


def test_loading_the_plugin_imports_no_torch(project: pytest.Pytester) -> None:
    """pytest loads the plugin in every run where gradwatch is installed: that must not
    import torch (seconds) until a test uses the fixture. A fresh interpreter shows it."""
    project.makepyfile(
        test_light=textwrap.dedent(
            """
            import sys


            def test_plugin_loaded_without_torch(request):
                assert request.config.pluginmanager.has_plugin("gradwatch")
                loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
                assert loaded == [], loaded
                assert "gradwatch.pytest_plugin" in sys.modules
            """
        )
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_plugin_can_be_switched_off(project: pytest.Pytester) -> None:
    project.makepyfile(test_off="def test_x(gradwatch_check):\n    pass\n")
    result = project.runpytest("-p", "no:gradwatch", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'gradwatch_check' not found*"])


def _nan_report() -> gradwatch.Report:
    def nan_loss(output, target):
        return (output - target).pow(2).mean() * float("nan")

    return gradwatch.check(make_mlp(), regression_batches(1), nan_loss, steps=2)


def test_assert_healthy_rules() -> None:
    report = _nan_report()
    assert not report.ok
    with pytest.raises(pytest.fail.Exception, match="nonfinite"):
        assert_healthy(report)
    with pytest.raises(pytest.fail.Exception):
        assert_healthy(report, fail_on="error")
    assert_healthy(report, ignore=["nonfinite"])
    assert failure_message(report, ignore=("nonfinite",)) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"fail_on": "fatal"}, ValueError, ["fail_on", "'warning'", "'fatal'"]),
        ({"ignore": ["vanishng"]}, ValueError, ["vanishng", "Did you mean 'vanishing'"]),
        ({"ignore": [3]}, ValueError, ["unknown alert kind 3"]),
    ],
)
def test_assert_healthy_bad_input(kwargs: dict, error: type, words: list[str]) -> None:
    report = gradwatch.check(make_mlp(), regression_batches(1), _mse, steps=1)
    with pytest.raises(error) as info:
        assert_healthy(report, **kwargs)
    for word in words:
        assert word in str(info.value)


def _mse(output, target):
    import torch

    return torch.nn.functional.mse_loss(output, target)
