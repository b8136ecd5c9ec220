"""Sink faults never hurt training: one warning, training goes on, nothing recorded is lost."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._sinks import SinkFailureWarning

from .helpers import make_mlp, regression_batches, train_steps


class DiskFullBuffer:
    """Stands in for the event writer's record buffer on a full disk: every write raises
    ENOSPC (the writer thread frames each record into it as it writes the record)."""

    def write(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def getvalue(self) -> bytes:
        return b""

    def seek(self, position: int) -> int:
        return 0

    def truncate(self, size: int | None = None) -> int:
        return 0


def _tensorboard_sink(gw: gradwatch.Watcher):
    (guarded,) = [s for s in gw._sinks if s.name == "TensorBoard"]
    return guarded.sink


def test_disk_full_writer_gives_one_warning_and_training_continues(tmp_path) -> None:
    twin = make_mlp(seed=5)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    model = make_mlp(seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = regression_batches(10)
    with gradwatch.watch(model, optimizer, logdir=tmp_path) as gw:
        train_steps(model, optimizer, batches[:3], gw)
        sink = _tensorboard_sink(gw)
        sink.flush()  # what was written before the disk filled up must survive
        sink._file_writer._buffer = DiskFullBuffer()
        with pytest.warns(SinkFailureWarning, match="No space left") as caught:
            train_steps(model, optimizer, batches[3:], gw, nan_at=4)
    assert len(caught) == 1
    with gradwatch.watch(twin, twin_opt) as twin_gw:
        train_steps(twin, twin_opt, batches[:3], twin_gw)
        train_steps(twin, twin_opt, batches[3:], twin_gw, nan_at=4)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    # The in-memory record is complete, and what reached disk before the fault is intact.
    assert [r.step for r in gw.history] == list(range(10))
    assert [a.step for a in gw.alerts if a.kind == "nonfinite"] == [7]
    run = read_run(tmp_path)
    assert [s for s, _ in run.scalars["total/grad_norm"]] == [0, 1, 2]


def test_log_directory_removed_mid_run_warns_once(tmp_path) -> None:
    logdir = tmp_path / "run"
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, logdir=logdir) as gw:
        train_steps(model, optimizer, regression_batches(5), gw)
        shutil.rmtree(logdir)
        with pytest.warns(SinkFailureWarning, match="was removed") as caught:
            train_steps(model, optimizer, regression_batches(60), gw)
            gw.close()
    assert len(caught) == 1
    assert gw.history.steps_seen == 65


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 96 KiB tmpfs (a real full disk); skipped where mounting is not permitted."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_real_full_disk_is_survived(tiny_tmpfs) -> None:
    # A wide model so that a few hundred steps of scalars overflow 96 KiB.
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(40)])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = [(torch.randn(4, 8), torch.randn(4, 8)) for _ in range(400)]
    with (
        pytest.warns(SinkFailureWarning) as caught,
        gradwatch.watch(model, optimizer, logdir=tiny_tmpfs, flush_secs=1) as gw,
    ):
        train_steps(model, optimizer, batches)
        gw.close()
    assert len(caught) == 1
    assert gw.history.steps_seen == 400


def _run_script(code: str, tmp_path, timeout: float = 120) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_alert_survives_a_killed_process(tmp_path) -> None:
    logdir = tmp_path / "run"
    result = _run_script(
        f"""
        import os, signal, torch
        from torch import nn
        import gradwatch
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        gw = gradwatch.watch(model, optimizer, logdir={str(logdir)!r})
        x = torch.randn(8, 4)
        x[0, 0] = float("nan")
        model(x).sum().backward()
        optimizer.step()
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        tmp_path,
    )
    assert result.returncode == -9, result.stderr
    run = read_run(logdir)
    assert run.alerts and run.alerts[0][0] == 0 and "nonfinite" in run.alerts[0][1]


@pytest.mark.slow
def test_interpreter_exit_flushes_an_unclosed_watcher_without_hanging(tmp_path) -> None:
    logdir = tmp_path / "run"
    result = _run_script(
        f"""
        import torch
        from torch import nn
        import gradwatch
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        gradwatch.watch(model, optimizer, logdir={str(logdir)!r}, flush_secs=600)
        for _ in range(5):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        """,
        tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [s for s, _ in read_run(logdir).scalars["total/grad_norm"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("how", ["unlink the event file", "rm -rf dir; mkdir dir"])
def test_event_file_deleted_mid_run_is_reopened_with_one_warning(
    tmp_path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Alerts and steps after the deletion go to a new event file, not to the unlinked one."""
    logdir = tmp_path / "run"
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = regression_batches(40)
    with gradwatch.watch(model, optimizer, logdir=logdir, flow_image_every=0) as gw:
        train_steps(model, optimizer, batches[:5], gw)
        if how == "unlink the event file":
            (event_file,) = logdir.glob("*tfevents*")
            event_file.unlink()
        else:
            shutil.rmtree(logdir)
            logdir.mkdir()
        with caplog.at_level(logging.WARNING, logger="gradwatch"):
            train_steps(model, optimizer, batches[5:], gw, nan_at=20)  # an alert at step 25
            gw.close()
    reopened = [r for r in caplog.records if "deleted or replaced" in r.getMessage()]
    assert len(reopened) == 1, [r.getMessage() for r in caplog.records]
    run = read_run(logdir)
    assert [a.step for a in gw.alerts if a.kind == "nonfinite"] == [25]
    assert [step for step, text in run.alerts if "nonfinite" in text] == [25]
    steps = [s for s, _ in run.scalars["total/grad_norm"]]
    assert steps[-35:] == list(range(5, 40))  # every step after the deletion is on disk
    assert run.has_layout and len(run.runs) == 1


def test_a_summary_made_on_the_writer_thread_lands_at_its_step_and_a_failing_one_is_skipped(
    tmp_path, caplog
) -> None:
    """``add_summary_later``: the writer thread makes the summary and writes it at the
    step and wall time it was queued with; a maker that raises is logged and skipped,
    and the records around it are written (the writer is not marked failed)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto.summary_pb2 import Summary

    from gradwatch._sinks.eventfile import EventFileWriter

    def scalar(value: float) -> Summary:
        return Summary(value=[Summary.Value(tag="x", simple_value=value)])

    def broken() -> Summary:
        raise ValueError("cannot make it")

    def slow() -> Summary:
        time.sleep(0.5)  # made well after it was queued
        return scalar(2.0)

    writer = EventFileWriter(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        writer.add_summary(scalar(1.0), 1)
        queued = time.time()
        writer.add_summary_later(slow, 2)
        writer.add_summary_later(broken, 3)
        writer.add_summary_later(lambda: None, 4)  # nothing to write
        writer.add_summary(scalar(5.0), 5)
        writer.close()
    assert writer.error is None
    assert [r.getMessage() for r in caplog.records] == [
        "gradwatch: making a summary for step 3 failed; it is not written"
    ]
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    events = accumulator.Scalars("x")
    assert [(e.step, e.value) for e in events] == [(1, 1.0), (2, 2.0), (5, 5.0)]
    assert abs(events[1].wall_time - queued) < 0.25  # when queued, not when made
