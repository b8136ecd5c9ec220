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
    ("parent", ["run(s) in subdirectories", "healthy", "pass one of them"]),
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
