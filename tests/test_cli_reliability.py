"""``gradwatch report`` and ``gradwatch check`` on hostile inputs: several runs in one log
directory, user code that exits or writes to file descriptor 1, damaged event files.

Every log here is written by gradwatch itself (or copied/damaged from one it wrote), and
the CLI runs as the real console script where the point is what a CI job would see.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
from pathlib import Path

import pytest

from gradwatch._cli.logreader import read_run
from gradwatch._cli.runsummary import summarize

from .cli_helpers import run_cli, run_main
from .helpers import framed, make_mlp, regression_batches, watched_run


def write_run(logdir: Path, steps: int, *, nan_at: int | None = None, seed: int = 0) -> None:
    watched_run(
        make_mlp(depth=2, seed=seed),
        regression_batches(steps),
        nan_at=nan_at,
        logdir=logdir,
        flow_image_every=0,
    )


def event_files(logdir: Path) -> list[Path]:
    return sorted(path for path in logdir.iterdir() if "tfevents" in path.name)


# ---------------------------------------------------------------- 1. several runs, one dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's CI recipe run twice: a NaN run, then a healthy re-run, one logdir."""
    logdir = tmp_path_factory.mktemp("rerun")
    write_run(logdir, 6, nan_at=2)
    write_run(logdir, 4, seed=1)
    assert len(event_files(logdir)) == 2
    return logdir


def test_several_runs_in_one_directory_are_never_merged(two_runs: Path) -> None:
    summary = summarize(read_run(two_runs))
    # The newest run (the healthy re-run) alone: its 4 steps, its losses, no alert of run 1.
    assert summary["steps"] == {"count": 4, "first": 0, "last": 3}
    assert summary["alerts"] == []
    assert summary["totals"]["loss"]["nonfinite"] == 0
    assert summary["run"]["index"] == 2 and summary["run"]["count"] == 2
    assert [run["steps"] for run in summary["runs"]] == [6, 4]
    older = summarize(read_run(two_runs, run=1))
    assert older["steps"] == {"count": 6, "first": 0, "last": 5}
    assert [alert["kind"] for alert in older["alerts"]] == ["nonfinite"]


def test_report_says_which_run_it_shows_and_how_to_pick(
    two_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(["report", str(two_runs)], capsys)
    assert status == 0
    assert "2 runs" in out and "--run 1" in out and "newest" in out
    assert "steps 0-3 (4 logged)" in out
    status, out, _ = run_main(["report", str(two_runs), "--run", "1"], capsys)
    assert status == 0 and "steps 0-5 (6 logged)" in out
    assert "[error] nonfinite at step 2" in out
    status, _, err = run_main(["report", str(two_runs), "--run", "3"], capsys)
    assert status == 2 and "--run 3" in err and "1 to 2" in err


@pytest.mark.slow
def test_report_console_script_on_a_rerun_directory(two_runs: Path) -> None:
    result = run_cli("report", str(two_runs), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"]["count"] == 4 and summary["alerts"] == []
    assert summary["run"]["count"] == 2
    assert "2 runs" in result.stderr  # said where a JSON reader's log shows it


def test_two_hundred_runs_are_counted_not_collapsed(two_runs: Path, tmp_path: Path) -> None:
    """Copies of real runs with their own names, as a job re-run 200 times leaves them."""
    older, newer = event_files(two_runs)
    for i in range(200):
        source = newer if i == 199 else older
        shutil.copy(source, tmp_path / f"events.out.tfevents.{1000 + i}.host.{i}.0.gradwatch")
    summary = summarize(read_run(tmp_path))
    assert summary["run"] == {**summary["run"], "index": 200, "count": 200}
    assert summary["steps"] == {"count": 4, "first": 0, "last": 3}
    assert len(summary["runs"]) == 200


def test_steps_that_restart_within_one_file_are_separate_runs(
    two_runs: Path, tmp_path: Path
) -> None:
    """Two runs' records in one file (one appended to the other): steps restart at 0."""
    older, newer = event_files(two_runs)
    joined = tmp_path / "events.out.tfevents.1.host.1.0.gradwatch"
    joined.write_bytes(older.read_bytes() + newer.read_bytes())
    summary = summarize(read_run(tmp_path))
    assert summary["run"]["count"] == 2
    assert summary["steps"] == {"count": 4, "first": 0, "last": 3}
    assert summarize(read_run(tmp_path, run=1))["steps"]["count"] == 6


# ------------------------------------------------ 2. and 3. user code during `check`

EXITS_WHILE_TRAINING = """
import sys
import torch
from torch import nn

CODE = {code}


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(16, 8)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if len(calls) == 3:
            sys.exit(CODE)  # the user's training code gives up
        return nn.functional.mse_loss(out, y)

    return model, [(x, x.sum(dim=1, keepdim=True))], loss_fn
"""


@pytest.mark.parametrize("code", [0, 5, None])
def test_sys_exit_in_training_code_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code
) -> None:
    """A CI gate must not pass because the user's code called sys.exit(0) mid-check."""
    (tmp_path / "exits.py").write_text(EXITS_WHILE_TRAINING.format(code=code))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    status, out, err = run_main(["check", "exits.py:build", "--steps", "5"], capsys)
    assert status == 2, (out, err)
    assert out == ""
    assert "SystemExit" in err and f"sys.exit({code})" in err
    assert "after 2 of 5 steps" in err or "step 3" in err


@pytest.mark.slow
def test_sys_exit_0_console_script_exits_2(tmp_path: Path) -> None:
    (tmp_path / "exits.py").write_text(EXITS_WHILE_TRAINING.format(code=0))
    result = run_cli("check", "exits.py:build", "--steps", "5", "--json", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "gradwatch check: error: " in result.stderr and "SystemExit" in result.stderr


NOISY = """
import logging
import os
import sys
import threading
import time

import torch
from torch import nn


def _chatter():
    while True:  # a logger thread that outlives the report
        print("thread: still printing")
        sys.stdout.flush()
        time.sleep(0.001)


def build():
    torch.manual_seed(0)
    logging.basicConfig(stream=sys.__stdout__, level=logging.INFO, force=True)
    print("to sys.__stdout__", file=sys.__stdout__, flush=True)
    os.write(1, b"os.write to fd 1, as a C extension does\\n")
    threading.Thread(target=_chatter, daemon=True).start()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(64, 8)

    def loss_fn(out, y):
        os.write(1, b"loss_fn writes to fd 1\\n")
        return nn.functional.mse_loss(out, y)

    data = [(x, 10 * x.sum(dim=1, keepdim=True))]
    # Diverges: gradwatch logs its alerts through `logging`, i.e. to sys.__stdout__ here.
    return model, data, loss_fn, torch.optim.SGD(model.parameters(), lr=0.5)
"""


@pytest.mark.slow
def test_json_parses_whatever_the_target_writes_to_file_descriptor_1(tmp_path: Path) -> None:
    (tmp_path / "noisy.py").write_text(NOISY)
    result = run_cli("check", "noisy.py:build", "--steps", "8", "--json", cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    data = json.loads(result.stdout)  # nothing but the report on stdout
    assert data["cli"]["exit_status"] == 1 and data["alerts"]
    for line in ("to sys.__stdout__", "os.write to fd 1", "loss_fn writes", "thread: still"):
        assert line in result.stderr
    assert "gradwatch" in result.stderr  # the library's own log lines, sent to stderr
    text = run_cli("check", "noisy.py:build", "--steps", "8", cwd=tmp_path)
    assert text.stdout.startswith("gradwatch check noisy.py:build: UNHEALTHY")
    assert "thread: still" not in text.stdout and "fd 1" not in text.stdout


# ---------------------------------------------------------------- 6. damaged event files


def frames(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every TFRecord frame of a sound event file."""
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        out.append((pos, end))
        pos = end
    return out


def scalar_event(tag: bytes, step: int) -> bytes:
    """A serialised Event holding one scalar under ``tag`` (bytes: may be bad UTF-8)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    good = Event(step=step, summary=Summary(value=[Summary.Value(tag="x" * len(tag))]))
    return good.SerializeToString().replace(b"x" * len(tag), tag)


STEPS = 30


@pytest.fixture(scope="module")
def sound_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logdir = tmp_path_factory.mktemp("sound")
    write_run(logdir, STEPS, nan_at=STEPS - 5)  # one alert, near the end
    return event_files(logdir)[0]


def damaged_copy(sound_run: Path, tmp_path: Path, damage) -> Path:
    data = sound_run.read_bytes()
    logdir = tmp_path / "damaged"
    logdir.mkdir()
    (logdir / sound_run.name).write_bytes(damage(data, frames(data)))
    return logdir


def middle(spans: list[tuple[int, int]]) -> tuple[int, int]:
    return spans[len(spans) // 2]


def huge_length(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """A record whose length header (with a correct CRC) claims 2**60 bytes."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    header = struct.pack("<Q", 1 << 60)
    bogus = header + struct.pack("<I", masked_crc32c(header)) + b"\0" * 64
    start, _ = middle(spans)
    return data[:start] + bogus + data[start:]


def flipped_byte(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """One byte flipped inside a step's record in the middle of the file."""
    start, end = middle(spans)
    at = (start + end) // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def smashed_header(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """A record's length header overwritten: no frame boundary to step over."""
    start, _ = middle(spans)
    return data[:start] + b"\xde\xad\xbe\xef" * 3 + data[start + 12 :]


def bad_utf8_tag(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    start, _ = middle(spans)
    return data[:start] + framed(scalar_event(b"grad_norm/\xff\xfe", 3)) + data[start:]


def bad_utf8_alert(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    from tensorboard.compat.proto.event_pb2 import Event

    from gradwatch._sinks.tensorboard import text_summary

    summary = text_summary("alerts", "**ERROR** `nonfinite` at step 7 in `0`: x\n\ny\n\n*Try:* z")
    summary.value[0].tensor.string_val[0] = b"**ERROR** `nonfinite` at step 7 \xff\xfe"
    start, _ = middle(spans)
    return data[:start] + framed(Event(step=7, summary=summary).SerializeToString()) + data[start:]


@pytest.mark.parametrize(
    ("damage", "lost_steps"),
    [
        (huge_length, 0),
        (flipped_byte, 1),
        (smashed_header, 1),
        (bad_utf8_tag, 0),
        (bad_utf8_alert, 0),
    ],
)
def test_damaged_records_are_skipped_counted_and_reported(
    sound_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, lost_steps: int
) -> None:
    logdir = damaged_copy(sound_run, tmp_path, damage)
    summary = summarize(read_run(logdir))
    # Everything around the damage was read: the steps after it and the final alert too.
    assert summary["steps"]["count"] == STEPS - lost_steps
    assert summary["steps"]["last"] == STEPS - 1
    assert "nonfinite" in [alert["kind"] for alert in summary["alerts"]]
    assert summary["damaged"]["records"] == 1
    assert summary["damaged"]["files"][0]["file"] == sound_run.name
    status, out, err = run_main(["report", str(logdir)], capsys)
    assert status == 0, err  # a readable run keeps its exit status
    assert "skipped 1 damaged record(s)" in out
    status, out, err = run_main(["report", str(logdir), "--json"], capsys)
    assert status == 0 and json.loads(out)["damaged"]["records"] == 1
    assert "skipped 1 damaged record(s)" in err


def test_an_alert_with_invalid_utf8_is_kept_readable(sound_run: Path, tmp_path: Path) -> None:
    logdir = damaged_copy(sound_run, tmp_path, bad_utf8_alert)
    texts = [text for step, text in read_run(logdir).alerts if step == 7]
    assert texts == ["**ERROR** `nonfinite` at step 7 \ufffd\ufffd"]


def test_a_file_cut_mid_record_is_not_damage(sound_run: Path, tmp_path: Path) -> None:
    """A live (or killed) writer leaves its last record unfinished: that is no damage."""
    logdir = damaged_copy(sound_run, tmp_path, lambda data, spans: data[: spans[-1][1] - 5])
    run = read_run(logdir)
    assert run.damage[0].records == 0 and run.damage[0].incomplete_tail
    assert summarize(run)["damaged"]["records"] == 0


@pytest.mark.slow
def test_a_fifo_named_like_an_event_file_never_hangs_report(
    sound_run: Path, tmp_path: Path
) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    shutil.copy(sound_run, logdir / sound_run.name)
    os.mkfifo(logdir / "events.out.tfevents.0.fifo")
    result = run_cli("report", str(logdir), timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"steps 0-{STEPS - 1}" in result.stdout
    assert "not read: events.out.tfevents.0.fifo (not a regular file)" in result.stdout


@pytest.mark.parametrize(
    "hole",
    [bytes(16 << 20), random.Random(0).randbytes(1 << 20)],
    ids=["16 MiB of zeros", "1 MiB of noise"],
)
def test_a_large_hole_is_stepped_over_quickly(sound_run: Path, tmp_path: Path, hole) -> None:
    """A zero-filled block (what a crash can leave) or garbage between two records: the
    search for the next sound record runs at C speed, not one CRC per byte (about 2 s
    per MiB, minutes here)."""

    def with_hole(data: bytes, spans: list[tuple[int, int]]) -> bytes:
        start, _ = middle(spans)
        return data[:start] + hole + data[start:]

    logdir = damaged_copy(sound_run, tmp_path, with_hole)
    began = time.perf_counter()
    run = read_run(logdir)
    assert time.perf_counter() - began < 20
    assert len(run.steps()) == STEPS
    assert (run.damage[0].records, run.damage[0].bytes) == (1, len(hole))
