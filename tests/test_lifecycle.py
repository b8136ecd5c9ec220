"""A watcher in its process: fork, threads, SIGTERM (issue 20 item 8), with real
processes, threads and signals.

* a forked child must not write the parent's buffered steps into the parent's event
  file a second time (it used to, at its exit: steps 85-99 twice);
* one watcher stepped from several threads: steps are serialised, the history stays in
  step order, and a step that overlaps another thread's open step is refused clearly;
* SIGTERM (how schedulers stop jobs) flushes the buffered steps (135 of 150 used to be
  lost), then does what was there before: the user's handler, or death by SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._lifecycle import _on_sigterm

from .helpers import make_mlp, regression_batches, train_steps

REPO = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _skip_if_autograd_cannot_fork() -> None:
    """torch refuses ``backward()`` in a child forked after the parent ran autograd on a
    GPU (its device threads do not survive fork: "Unable to handle autograd's threading
    in combination with fork-based multiprocessing"), with or without gradwatch. In a
    full run on a GPU machine, earlier CUDA tests leave the process in that state."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("torch cannot run backward() in a child forked after CUDA autograd")


def _steps(logdir: Path, tag: str = "total/loss") -> list[int]:
    return [step for step, _ in read_run(logdir).scalars[tag]]


def _fork(child) -> int:
    """Fork; the child runs ``child()`` and leaves with os._exit; returns its status."""
    with warnings.catch_warnings():  # "multi-threaded, fork() may deadlock": the point
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 0
        try:
            # As DataLoader workers do: the parent's OpenMP thread pool does not survive
            # fork(), and a multi-threaded kernel in the child would wait for it forever.
            torch.set_num_threads(1)
            child()
        except BaseException:
            traceback.print_exc()  # the child's failure, on the test's captured stderr
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ------------------------------------------------------------------------------ fork


@posix_only
def test_a_forked_child_closing_its_watcher_writes_nothing_into_the_parents_file(tmp_path):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, logdir=tmp_path, flush_secs=600) as gw:
        train_steps(model, optimizer, regression_batches(40), gw)  # buffered, not flushed

        def child() -> None:  # what a normal exit does: atexit closes the open watchers
            gw.close()

        assert _fork(child) == 0
        train_steps(model, optimizer, regression_batches(10), gw)
    assert _steps(tmp_path) == list(range(50))  # each step once, in order
    assert len(read_run(tmp_path).runs) == 1


@posix_only
def test_a_forked_child_that_trains_on_logs_nothing_into_the_parents_file(tmp_path, caplog):
    _skip_if_autograd_cannot_fork()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    read_back, write_end = os.pipe()
    with gradwatch.watch(model, optimizer, logdir=tmp_path, flush_secs=600) as gw:
        train_steps(model, optimizer, regression_batches(5), gw)

        def child() -> None:
            with caplog.at_level(logging.WARNING, logger="gradwatch"):
                train_steps(model, optimizer, regression_batches(5), gw)
                gw.close()
            told = [r.getMessage() for r in caplog.records if "was forked from" in r.getMessage()]
            os.write(write_end, f"{len(gw.history)} {len(told)}".encode())

        # Closed by the with block even when this fails: an open watcher keeps its
        # SIGTERM handler installed for the tests after this one.
        assert _fork(child) == 0
        # The child measured its own 5 steps in memory, and was told once where they went.
        assert os.read(read_back, 100).decode() == "10 1"
    assert _steps(tmp_path) == list(range(5))


@pytest.mark.slow  # a fresh interpreter
@posix_only
def test_a_forked_child_exiting_normally_leaves_the_parents_file_as_it_was(tmp_path) -> None:
    """The reported case itself: the child ends through sys.exit, atexit and finalizers."""
    script = f"""
        import os, sys, warnings, torch
        from torch import nn
        import gradwatch
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        gw = gradwatch.watch(model, optimizer, logdir={str(tmp_path)!r}, flush_secs=600)
        for _ in range(100):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward(); gw.record_loss(loss); optimizer.step(); optimizer.zero_grad()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a normal exit: atexit handlers, then the interpreter's teardown
        os.waitpid(pid, 0)
        gw.close()
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert _steps(tmp_path) == list(range(100))


# ---------------------------------------------------------------------------- threads


def test_a_step_overlapping_another_threads_step_is_refused_clearly() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gw = gradwatch.watch(model, optimizer)
    a_inside, b_done = threading.Event(), threading.Event()

    def hold_a_inside(optimizer, args, kwargs) -> None:  # runs after gradwatch's pre-hook
        if threading.current_thread().name == "A":
            a_inside.set()
            b_done.wait(60)

    optimizer.register_step_pre_hook(hold_a_inside)
    errors: dict[str, BaseException] = {}

    def a() -> None:
        train_steps(model, optimizer, regression_batches(1), gw)

    def b() -> None:
        a_inside.wait(60)
        try:
            optimizer.step()  # A's step is open: between its pre- and post-hook
        except RuntimeError as error:
            errors["B"] = error
        finally:
            b_done.set()

    threads = [threading.Thread(target=a, name="A"), threading.Thread(target=b, name="B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert "B" in errors, "the overlapping step was not refused"
    assert str(errors["B"]).startswith(
        "gradwatch: optimizer.step() began in thread 'B' while the step of thread 'A' was "
        "still running"
    )
    assert "threading.Lock around optimizer.step()" in str(errors["B"])
    train_steps(model, optimizer, regression_batches(2), gw)  # the watcher carries on
    gw.close()
    assert [r.step for r in gw.history] == [0, 1, 2]


def test_steps_from_several_threads_keep_the_history_in_order(caplog) -> None:
    """Four threads step one watched optimizer at once, unsynchronised: every step either
    is measured (in order) or refused with gradwatch's error; no detector trips over an
    out-of-order history. (The gradients are computed once, up front: a backward in one
    thread while another updates the weights in place is autograd's own error.)"""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    gw = gradwatch.watch(model, optimizer, activation_every=2)
    x, y = regression_batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    outcomes: list[str] = []

    def loop(seed: int) -> None:
        for _ in range(15):
            gw.record_loss(float(seed))
            try:
                optimizer.step()
                outcomes.append("stepped")
            except RuntimeError as error:
                outcomes.append("refused" if "began in thread" in str(error) else repr(error))
            _ = gw.alerts  # a reader in every thread too (it consumes finished steps)

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=loop, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        gw.close()
    assert set(outcomes) <= {"stepped", "refused"}, outcomes
    steps = [record.step for record in gw.history]
    assert steps == list(range(outcomes.count("stepped")))
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


def test_threads_taking_turns_are_fine() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gw = gradwatch.watch(model, optimizer)
    for name in ("first", "second"):
        thread = threading.Thread(
            target=train_steps, args=(model, optimizer, regression_batches(4), gw), name=name
        )
        thread.start()
        thread.join(120)
    gw.close()
    assert [r.step for r in gw.history] == list(range(8))


# ---------------------------------------------------------------------------- SIGTERM


def test_sigterm_flushes_the_buffered_steps_then_calls_the_users_handler(tmp_path) -> None:
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        model = make_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        gw = gradwatch.watch(model, optimizer, logdir=tmp_path, flush_secs=600)
        train_steps(model, optimizer, regression_batches(20), gw)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread, at once
        assert caught == [signal.SIGTERM]  # the user's handler still runs
        assert _steps(tmp_path) == list(range(20))  # on disk while the watcher is open
        train_steps(model, optimizer, regression_batches(3), gw)  # not closed by it
        gw.close()
        assert _steps(tmp_path) == list(range(23))
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_sigterm_handler_is_installed_from_the_main_thread_and_restored_at_close():
    def users(signum, frame) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, users)
    try:
        model = make_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        first = gradwatch.watch(model, optimizer)
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm
        other = make_mlp(seed=1)
        second = gradwatch.watch(other, torch.optim.SGD(other.parameters(), lr=0.01))
        first.close()
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm  # the second is still open
        second.close()
        assert signal.getsignal(signal.SIGTERM) is users
        # From another thread signal.signal() is not allowed: nothing is installed.
        in_thread: list[object] = []

        def watch_in_a_thread() -> None:
            with gradwatch.watch(model, optimizer):
                in_thread.append(signal.getsignal(signal.SIGTERM))

        thread = threading.Thread(target=watch_in_a_thread)
        thread.start()
        thread.join(60)
        assert in_thread == [users]
        # An ignored SIGTERM stays ignored.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with gradwatch.watch(model, optimizer):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # a fresh interpreter, killed
@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX")
def test_sigterm_with_the_default_action_flushes_then_dies_of_sigterm(tmp_path) -> None:
    script = f"""
        import os, signal, torch
        from torch import nn
        import gradwatch
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        gw = gradwatch.watch(model, optimizer, logdir={str(tmp_path)!r}, flush_secs=600)
        for _ in range(150):
            loss = model(torch.randn(4, 8)).square().mean()
            loss.backward(); gw.record_loss(loss); optimizer.step(); optimizer.zero_grad()
        os.kill(os.getpid(), signal.SIGTERM)
        print("survived")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == -signal.SIGTERM, result.stderr  # as without gradwatch
    assert "survived" not in result.stdout
    assert _steps(tmp_path) == list(range(150))
