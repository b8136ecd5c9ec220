"""``gradwatch report LOGDIR``: the real console script on real log directories."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import gradwatch
from gradwatch._cli import _report
from gradwatch._cli._output import Output
from gradwatch._cli.logreader import read_run
from gradwatch._cli.runsummary import summarize

from .cli_helpers import run_cli, run_main
from .helpers import make_mlp, regression_batches, watched_run


def write_run(logdir: Path, *, nan_at: int | None = None, steps: int = 6) -> gradwatch.Watcher:
    gw, _ = watched_run(
        make_mlp(depth=3),
        regression_batches(steps),
        nan_at=nan_at,
        logdir=logdir,
        flow_image_every=0,
    )
    return gw


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("logs")
    write_run(root / "healthy")
    write_run(root / "unstable", nan_at=2)
    from torch.utils.tensorboard import SummaryWriter

    other = root / "not_gradwatch"
    with SummaryWriter(str(other)) as writer:
        writer.add_scalar("accuracy", 0.5, 0)
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("hello")
    return {
        "healthy": root / "healthy",
        "unstable": root / "unstable",
        "not_gradwatch": other,
        "empty": root / "empty",
        "missing": root / "missing",
        "file": root / "a_file.txt",
        "parent": root,
    }


def test_summary_matches_what_was_measured(tmp_path: Path) -> None:
    gw = write_run(tmp_path, nan_at=4)
    summary = summarize(read_run(tmp_path))
    assert [layer["name"] for layer in summary["layers"]] == list(gw.index.names)
    first = summary["layers"][0]["grad_norm"]
    grads = np.array([record.grad_norm[0] for record in gw.history])
    finite = np.isfinite(grads)
    assert first["nonfinite"] == (~finite).sum() >= 1  # NaN at step 4 and after (SGD)
    assert first["max"] == pytest.approx(grads[finite].max(), rel=1e-6)
    assert first["max_step"] == int(np.flatnonzero(finite)[np.argmax(grads[finite])])
    assert first["first"] == pytest.approx(grads[0], rel=1e-6) and first["first_step"] == 0
    assert first["final"] == "nan" and first["final_step"] == 5
    assert summary["steps"] == {"count": 6, "first": 0, "last": 5}
    assert summary["totals"]["loss"]["nonfinite"] == 2
    (alert,) = summary["alerts"]
    expected = gw.alerts[0]
    assert (alert["kind"], alert["severity"], alert["step"]) == ("nonfinite", "error", 4)
    assert alert["layer"] == expected.where and alert["remedy"] == expected.remedy
    assert alert["message"] == expected.message
    json.dumps(summary, allow_nan=False)  # JSON-safe: nan became "nan"


@pytest.mark.slow
def test_report_prints_layers_and_alerts(logs: dict[str, Path]) -> None:
    result = run_cli("report", str(logs["unstable"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # piped: plain text, no colour codes
    for layer in ("0", "2", "4", "6"):
        assert f"\n{layer} " in out
    assert "grad final" in out and "weight max" in out
    assert "[error] nonfinite at step 2 in 0" in out
    assert "Try: " in out
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_report_json_and_plot(logs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "flow.png"
    result = run_cli("report", str(logs["healthy"]), "--json", "--plot", str(picture))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [layer["name"] for layer in summary["layers"]] == ["0", "2", "4", "6"]
    assert summary["alerts"] == [] and summary["steps"]["count"] == 6
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 10_000
    assert "wrote the gradient-flow picture" in result.stderr


BAD_DIRS = [
    ("missing", ["does not exist"]),
    ("empty", ["no TensorBoard event files"]),
    ("file", ["is a file"]),
    ("not_gradwatch", ["none written by gradwatch", "accuracy"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("which", "words"), [BAD_DIRS[0], BAD_DIRS[3]])
def test_console_script_on_bad_log_dirs_exits_2(
    logs: dict[str, Path], which: str, words: list[str]
) -> None:
    result = run_cli("report", str(logs[which]))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("gradwatch report: error: cannot report on")
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("which", "words"), BAD_DIRS)
def test_report_on_bad_log_dirs_is_a_usage_error(
    logs: dict[str, Path], capsys: pytest.CaptureFixture[str], which: str, words: list[str]
) -> None:
    status, out, err = run_main(["report", str(logs[which])], capsys)
    assert status == 2 and out == ""
    assert err.startswith("gradwatch report: error: cannot report on")
    for word in words:
        assert word in err


def test_plot_into_missing_directory_is_a_usage_error(
    logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no" / "x.png")
    status, _, err = run_main(["report", str(logs["healthy"]), "--plot", missing], capsys)
    assert status == 2 and "does not exist" in err


def test_colour_rendering_with_rich(tmp_path: Path) -> None:
    """On a terminal the same summary is drawn with rich, in colour."""
    pytest.importorskip("rich")
    write_run(tmp_path, nan_at=1, steps=3)
    stream = io.StringIO()
    output = Output(stream, color=True, force_terminal=True)  # a StringIO is no TTY
    _report.render(summarize(read_run(tmp_path)), output)
    text = stream.getvalue()
    assert "\x1b[" in text  # ANSI colour codes
    assert "nonfinite at step 1" in text


def test_no_color_and_pipes_get_plain_text() -> None:
    from gradwatch._cli._output import wants_color

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    pytest.importorskip("rich")
    assert wants_color(Terminal(), {"TERM": "xterm"})
    assert not wants_color(Terminal(), {"TERM": "xterm", "NO_COLOR": "1"})
    assert not wants_color(Terminal(), {"TERM": "dumb"})
    assert not wants_color(io.StringIO(), {"TERM": "xterm"})


# ---------------------------------------------------------------- issue 19: CLI fixes


def test_a_directory_of_runs_gets_one_summary_per_run(
    logs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """TensorBoard's layout (runs/exp1, runs/exp2): each run summarised, none merged."""
    status, out, err = run_main(["report", str(logs["parent"])], capsys)
    assert status == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "steps 0-5 (6 logged)" in lines["healthy"] and "0/0/0" in lines["healthy"]
    assert "1/0/0" in lines["unstable"] and "non-finite" in lines["unstable"]
    assert "not a gradwatch run" in lines["not_gradwatch"]
    assert "unstable: alerts (1)" in out and "[error] nonfinite at step 2" in out
    assert "--run NAME" in out


def test_run_name_picks_one_run_of_a_directory_of_runs(
    logs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(["report", str(logs["parent"]), "--run", "unstable"], capsys)
    assert status == 0
    assert "Layers (input side first" in out and "[error] nonfinite at step 2 in 0" in out
    status, _, err = run_main(["report", str(logs["parent"]), "--run", "exp9"], capsys)
    assert status == 2 and "no run named 'exp9'" in err and "healthy" in err
    status, out, _ = run_main(["report", str(logs["parent"]), "--json"], capsys)
    entries = {entry["name"]: entry for entry in json.loads(out)["directories"]}
    assert entries["healthy"]["summary"]["steps"]["count"] == 6
    assert "none written by gradwatch" in entries["not_gradwatch"]["error"]
    # A directory holding its runs itself still takes a number, and says so for a name.
    status, _, err = run_main(["report", str(logs["healthy"]), "--run", "exp1"], capsys)
    assert status == 2 and "takes their number" in err


def test_ignore_does_not_swallow_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gradwatch check --ignore not_learning models.py:healthy` checks models.py:healthy."""
    (tmp_path / "models.py").write_text(HEALTHY_TARGET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    argv = ["check", "--ignore", "not_learning", "models.py:healthy", "--steps", "3"]
    status, out, err = run_main(argv, capsys)
    assert status == 0, (out, err)
    assert "gradwatch check models.py:healthy: HEALTHY" in out and "ignoring not_learning" in out
    from gradwatch._cli import build_parser

    args = build_parser().parse_args(
        ["check", "--ignore", "vanishing,exploding", "--ignore", "not_learning", "m.py:f"]
    )
    assert args.target == "m.py:f" and args.ignore == ["vanishing,exploding", "not_learning"]


HEALTHY_TARGET = """
import torch
from torch import nn


def healthy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(16, 4)
    return model, [(x, x[:, :1])], nn.functional.mse_loss
"""


def test_plot_without_matplotlib_still_prints_the_report(
    logs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # not installed
    picture = tmp_path / "flow.png"
    status, out, err = run_main(["report", str(logs["unstable"]), "--plot", str(picture)], capsys)
    assert status == 0  # the report's own status: the picture is an extra
    assert "Layers (input side first" in out and "[error] nonfinite" in out
    assert "--plot skipped" in err and "pip install" in err and "matplotlib" in err
    assert not picture.exists()


def test_layer_table_marks_vanishing_and_non_finite_layers(tmp_path: Path) -> None:
    from .unstable_models import mse, regression, sigmoid_normal_mlp

    gradwatch.check(sigmoid_normal_mlp(), regression(4), mse, steps=12, logdir=tmp_path / "v")
    summary = summarize(read_run(tmp_path / "v"))
    assert any(alert["kind"] == "vanishing" for alert in summary["alerts"])
    flags = {layer["name"]: layer["flag"] for layer in summary["layers"]}
    assert flags["0"] == "vanishing"  # the input side
    assert flags["40"] is None  # the output layer is the reference, never below itself
    text = io.StringIO()
    _report.render(summary, Output(text, color=False))
    row = next(line for line in text.getvalue().splitlines() if line.startswith("0 "))
    assert row.endswith("<< vanishing")

    write_run(tmp_path / "nan", nan_at=2)
    nan_flags = {
        layer["name"]: layer["flag"] for layer in summarize(read_run(tmp_path / "nan"))["layers"]
    }
    assert set(nan_flags.values()) == {"non-finite"}  # SGD spreads the NaN to every layer


def test_healthy_runs_get_no_marks(logs: dict[str, Path]) -> None:
    summary = summarize(read_run(logs["healthy"]))
    assert [layer["flag"] for layer in summary["layers"]] == [None] * 4


def test_alerts_are_short_with_the_remedy_once_on_its_own_line() -> None:
    remedy = "lower the learning rate."
    alert = {"kind": "exploding", "severity": "warning", "layer": "fc1", "remedy": remedy}
    long_message = "The gradient grew 1000x in 10 steps. " + "Evidence follows here. " * 20
    alerts = [
        {**alert, "step": 3, "message": long_message},
        {**alert, "step": 4, "message": "Short."},
    ]
    text = io.StringIO()
    _report.render_alerts(alerts, Output(text, color=False))
    lines = text.getvalue().splitlines()
    first = next(line for line in lines if "at step 3" in line)
    assert "The gradient grew 1000x in 10 steps." in first and len(first) < 240
    assert first.count("Evidence follows here.") < 20  # cut: --json has it whole
    assert lines[lines.index(first) + 1] == f"    Try: {remedy}"
    assert [line.strip() for line in lines].count(f"Try: {remedy}") == 1
    assert _report.short_message(long_message).startswith("The gradient grew 1000x in 10 steps.")
    assert len(_report.short_message("x" * 400)) == _report.ALERT_CHARS


def test_plot_of_a_directory_of_runs_draws_each_run(
    logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    status, _, err = run_main(
        ["report", str(logs["parent"]), "--plot", str(tmp_path / "f.png")], capsys
    )
    assert status == 0, err
    for name in ("healthy", "unstable"):
        assert (tmp_path / f"f-{name}.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "f-not_gradwatch.png").exists()
