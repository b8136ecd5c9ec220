"""A watcher's life in its process: several threads, a fork, SIGTERM (issue 20 item 8).

* **Threads.** :class:`StepGuard` serialises a watcher's step paths (the optimizer hooks,
  ``Watcher.step()``, the host side that consumes finished steps, ``close()``): two
  threads never consume steps at once, so the history stays in step order. One step,
  from the optimizer's pre-hook to its post-hook, belongs to one thread: a step that
  begins in another thread while it is open (two threads calling ``optimizer.step()``
  at once on one watched optimizer, itself a data race in torch) is refused with a
  ``RuntimeError`` that says so. Steps from different threads one after the other are
  fine (a training loop moved to a worker thread, a notebook's second run).
* **Fork.** A forked child must not write into the parent's event file
  (:mod:`gradwatch._sinks.eventfile` makes its writers inert there); the guards' locks,
  which a parent's thread may have held at the fork, are new in the child.
* **SIGTERM** (how schedulers stop jobs) kills a process without running ``atexit``: the
  steps still buffered would be lost. :func:`flush_on_sigterm` installs, from the main
  thread only, a handler that flushes every registered watcher, then does what was
  there before: calls the user's own handler, or, if the default was in place, restores
  it and sends SIGTERM again, so the process still ends as killed by SIGTERM. An ignored
  SIGTERM, or a handler set from C, is left alone. When the last watcher is released,
  the previous handler is restored, unless someone replaced ours in between.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class StepGuard:
    """A watcher's lock, and which thread's optimizer step is open (pre- to post-hook)."""

    def __init__(self, owner: str) -> None:
        self._owner = owner  # how errors name the watcher, e.g. "the Watcher of MyModel"
        self._reset()
        _GUARDS.add(self)

    def _reset(self) -> None:
        self._lock = threading.RLock()
        self._holder: int | None = None  # ident of the thread holding the lock
        self._depth = 0
        self._step_thread: threading.Thread | None = None

    def held(self) -> StepGuard:
        """``with guard.held():`` holds the watcher's lock (re-entrant: a step path may
        call another). The guard is its own context manager: no generator per step."""
        return self

    def __enter__(self) -> None:
        self._lock.acquire()
        self._holder = threading.get_ident()
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._holder = None
        self._lock.release()

    @contextlib.contextmanager
    def tried(self, timeout: float) -> Iterator[bool]:
        """Hold the lock if it comes within ``timeout`` seconds; yields whether it did."""
        if not self._lock.acquire(timeout=timeout):
            yield False
            return
        try:
            with self.held():
                yield True
        finally:
            self._lock.release()

    def held_here(self) -> bool:
        """Whether this thread is inside a step path (a signal handler interrupted it)."""
        return self._holder == threading.get_ident()

    def open_step(self) -> None:
        """A step begins in this thread (call under :meth:`held`); refuses an overlap."""
        current = threading.current_thread()
        other = self._step_thread
        if other is not None and other is not current and other.is_alive():
            raise RuntimeError(
                f"gradwatch: optimizer.step() began in thread {current.name!r} while the "
                f"step of thread {other.name!r} was still running ({self._owner} measures "
                "one step at a time, from the optimizer's pre-hook to its post-hook). Two "
                "threads stepping one optimizer at once also race on its state. Step from "
                "one thread at a time (e.g. hold a threading.Lock around optimizer.step()), "
                "or give each thread its own model, optimizer and gradwatch.watch()."
            )
        self._step_thread = current

    def close_step(self) -> None:
        """The open step was sealed (post-hook, or the next step of the same thread)."""
        self._step_thread = None


#: Every guard of this process (weakly held): new locks in a forked child.
_GUARDS: weakref.WeakSet[StepGuard] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for guard in list(_GUARDS):
        guard._reset()  # a lock held by a parent's thread would never be released here


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------------- SIGTERM
class Flushable(Protocol):
    def _flush_on_signal(self, *, final: bool) -> None: ...


#: Watchers to flush on SIGTERM (weakly held: registering keeps nothing alive).
_FLUSHED: weakref.WeakSet[Any] = weakref.WeakSet()
#: The SIGTERM handler ours replaced (SIG_DFL, or the user's callable); None when ours
#: is not installed.
_previous: Any = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """Flush every watcher, then do what the handler we replaced would have done."""
    previous = _previous
    final = previous in (signal.SIG_DFL, None)  # the process ends right after
    for watcher in list(_FLUSHED):
        try:
            watcher._flush_on_signal(final=final)
        except Exception:  # never stand between the scheduler and the process's end
            logger.debug("gradwatch: flushing on SIGTERM failed", exc_info=True)
    if callable(previous):
        previous(signum, frame)  # the user's own handler decides what comes next
        return
    # The default action: end the process as killed by SIGTERM, as without gradwatch.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def flush_on_sigterm(watcher: Flushable) -> bool:
    """Flush ``watcher`` when SIGTERM arrives; whether it will be (see the docstring)."""
    global _previous
    sigterm = getattr(signal, "SIGTERM", None)
    if sigterm is None:
        return False
    if signal.getsignal(sigterm) is not _on_sigterm:
        if threading.current_thread() is not threading.main_thread():
            return False  # signal.signal() works from the main thread only
        current = signal.getsignal(sigterm)
        if current in (signal.SIG_IGN, None):
            return False  # ignored on purpose, or a handler set from C: not ours to wrap
        _previous = current
        signal.signal(sigterm, _on_sigterm)
    _FLUSHED.add(watcher)
    return True


def release_sigterm(watcher: Flushable) -> None:
    """``watcher`` is closed: once none is left, put the previous handler back."""
    global _previous
    _FLUSHED.discard(watcher)
    if _FLUSHED or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm and _previous is not None:
        signal.signal(signal.SIGTERM, _previous)
        _previous = None
