"""An event-file writer whose disk work happens on a background thread.

TensorBoard's own pieces do the format: ``event_pb2.Event`` is the payload and
``torch.utils.tensorboard.summary`` builds the summaries; :mod:`.records` frames each
record as TensorBoard's ``RecordWriter`` does (length + CRC), with its CRC computed in C.
What this module owns is the thread: the training thread only puts events
on a bounded queue, and a failure on disk (full disk, vanished directory) is kept and
re-raised on the caller's next call, where the sink guard turns it into one warning,
instead of escaping the thread as a traceback. A summary that is costly to make (a
picture: drawing it and compressing the PNG take tens of milliseconds) can be queued as
a function that the writer thread calls (:meth:`EventFileWriter.add_summary_later`), so
the training thread only gathers its data.

It also notices when its file is deleted or replaced under it (``rm`` of the file,
``rm -rf dir; mkdir dir``): writes would go on into an unlinked file and be lost without
a word. After every flush, the writer thread compares the open file with what the path
names now (one ``fstat`` and one ``stat``); if they differ it opens a new event file in
the same directory, writes the header again and every record since the last flush that
was confirmed on disk, and logs one warning. Records are kept for this only between two
flushes, and a flush comes at least every :attr:`EventFileWriter.REWRITE_BYTES` (8 KiB),
so the memory held stays a few KiB.

The framed records wait in the writer's own buffer (an in-memory ``BytesIO``), and the
file is opened unbuffered: a flush writes that buffer with plain ``write`` calls. So a
process forked while a run was writing (``os.fork()``, a multiprocessing worker) holds
no file-object buffer that its exit would flush into the parent's file a second time;
in the child, every writer becomes inert (``os.register_at_fork``): it drops what it
held and writes nothing, and the parent goes on writing its file alone.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from gradwatch._sinks.records import frame

logger = logging.getLogger(__name__)

_counter = itertools.count()


class _Flush:
    """Queue marker: flush the file, then signal ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Later:
    """Queue item: a summary that the writer thread makes (``make()``), for ``step``."""

    def __init__(self, make: Callable[[], Any], step: int, wall_time: float) -> None:
        self.make = make
        self.step = step
        self.wall_time = wall_time


_STOP = object()


def _new_path(logdir: str) -> str:
    name = (
        f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
        f"{os.getpid()}.{next(_counter)}.gradwatch"
    )
    return os.path.join(logdir, name)


#: What a write fails with when the disk (or the process's file-size limit) is full.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def unwritable_logdir(logdir: str, error: OSError) -> OSError:
    """The error for an event file that cannot be started: it names the directory, the
    cause and the fix (the raw ``[Errno 28]`` names neither the directory nor gradwatch).
    It keeps ``errno``, so code that handles ``OSError`` by its number still can."""
    full = error.errno in _FULL
    cause = "the disk is full" if full else "writing there failed"
    message = (
        f"gradwatch cannot write its event file in logdir {logdir!r}: {cause} "
        f"({error.strerror or error}). "
        + (
            "Free space on that disk (or raise its quota), pass a logdir on another disk, "
            if full
            else "Pass a directory you can write to, "
        )
        + "or logdir=None to log nothing to disk."
    )
    return OSError(error.errno, message)


def _close_quietly(file: io.IOBase) -> None:
    try:
        file.close()
    except OSError:
        logger.debug("closing an event file that could not be written failed", exc_info=True)


class EventFileWriter:
    """Appends ``Event`` protos to one new event file under ``logdir``.

    The training thread appends to a deque (no lock hand-off, no thread wake-up per
    event); the writer thread wakes every ``poll_secs``, or at once for a flush, a close
    or a full buffer, and writes what has piled up. ``header`` summaries (the
    custom-scalars layout) are written at step 0 first in the file, and again first in
    any file opened to replace a deleted one.
    """

    #: Records written since the last flush are kept (to write again if the file turns
    #: out deleted); past this many bytes the writer thread flushes, i.e. writes its
    #: buffer to the OS in one call (the size a buffered file object would write at):
    #: the kept records stay a few KiB, one write per 8 KiB.
    REWRITE_BYTES = io.DEFAULT_BUFFER_SIZE

    def __init__(
        self,
        logdir: str,
        *,
        flush_secs: float = 30.0,
        max_pending: int = 2048,
        poll_secs: float = 0.25,
        header: Sequence[Any] = (),
    ) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._event_cls = Event
        self.logdir = logdir
        self._header = tuple(header)
        self._flush_secs = flush_secs
        self._poll_secs = poll_secs
        self._max_pending = max_pending
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self.error: BaseException | None = None
        self._closed = False
        # Serialised records written since the last flush, and their size.
        self._unflushed: list[bytes] = []
        self._unflushed_bytes = 0
        self._forked = False  # True in a process forked from the one that opened the file
        self._told_forked = False
        try:
            self._open(_new_path(logdir))
        except OSError as error:  # at attach: say which directory, and what to do
            raise unwritable_logdir(logdir, error) from error
        self._thread = threading.Thread(
            target=self._run, name="gradwatch-event-writer", daemon=True
        )
        self._thread.start()
        _WRITERS.add(self)

    def _open(self, path: str) -> None:
        """Start a new event file: the version record and the header, flushed."""
        self.path = path
        # Unbuffered: records wait in self._buffer, which only the writer thread writes
        # out (see the module's docstring: nothing for a forked child to flush).
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        try:
            self._buffer = io.BytesIO()
            now = time.time()
            version = self._event_cls(wall_time=now, file_version="brain.Event:2")
            self._buffer.write(frame(version.SerializeToString()))
            for summary in self._header:
                event = self._event_cls(wall_time=now, step=0, summary=summary)
                self._buffer.write(frame(event.SerializeToString()))
            self._write_out()
        except OSError:
            _close_quietly(self._file)  # its buffer cannot reach the disk either
            with contextlib.suppress(OSError):
                os.remove(path)  # an event file without its header is no run
            raise

    # ------------------------------------------------------------ training thread
    def add_summary(self, summary: Any, step: int) -> None:
        """Queue a ``Summary`` for ``step``; raises a failure the writer thread met."""
        self._queue(self._event_cls(wall_time=time.time(), step=int(step), summary=summary))

    def add_summary_later(self, make: Callable[[], Any], step: int) -> None:
        """Queue a ``Summary`` for ``step`` that the writer thread makes by calling
        ``make()`` (``None``: nothing to write). ``make`` must not raise; if it does, the
        exception is logged and nothing is written (the file and the other records are
        unaffected). Its wall time is now, when it was queued."""
        self._queue(_Later(make, int(step), time.time()))

    def _queue(self, item: Any) -> None:
        if self._forked:
            self._say_forked()
            return
        self._raise_if_failed()
        self._pending.append(item)
        if len(self._pending) >= self._max_pending:
            # Back-pressure rather than unbounded memory or dropped data.
            self._wait_for(self._push(_Flush()), 30.0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is written to the OS (survives a kill)."""
        if self._forked:
            return
        self._raise_if_failed()
        self._wait_for(self._push(_Flush()), timeout)
        self._raise_if_failed()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the file. Never waits longer than ``timeout``."""
        if self._closed:
            return
        self._closed = True
        if self._forked:
            return  # the parent closes its file; the child's copy of the descriptor is gone
        self._push(_STOP)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._file.close()
        self._raise_if_failed()

    def _push(self, marker: Any) -> Any:
        self._pending.append(marker)
        self._wake.set()
        return marker

    def _wait_for(self, marker: _Flush, timeout: float) -> None:
        if self._thread.is_alive():
            marker.done.wait(timeout)

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    # ------------------------------------------------------------ a forked child
    def _become_inert(self) -> None:
        """In a forked child: drop what was queued or buffered, write nothing from now on.

        Runs right after ``fork()`` in the child, where the writer thread does not exist
        and the open descriptor shares its file offset with the parent's: anything the
        child wrote would land in the parent's file (steps written twice, or torn
        records). The queue's lock-free deque and buffer are replaced, not emptied, and
        no lock is taken: the parent's writer thread may have held one at the fork.
        """
        self._forked = True
        self._pending = collections.deque()
        self._buffer = io.BytesIO()
        self._unflushed = []
        with contextlib.suppress(OSError, ValueError):
            self._file.close()  # the child's copy of the descriptor; unbuffered: no write

    def _say_forked(self) -> None:
        if not self._told_forked:
            self._told_forked = True  # once per writer
            logger.warning(
                "gradwatch: this process (pid %d) was forked from the one writing %s; its "
                "steps are not written there (the parent keeps writing that file alone). "
                "To log the child, close this watcher in it and start a new "
                "gradwatch.watch() with a logdir of its own.",
                os.getpid(),
                self.path,
            )

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            self._wake.wait(self._poll_secs)
            self._wake.clear()
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, _Later):  # made here; not at all once writing failed
                    item = self._made(item) if self.error is None else None
                    if item is None:
                        continue
                try:
                    if not isinstance(item, self._event_cls):  # a _Flush marker or _STOP
                        self._flush_file()
                        last_flush = time.monotonic()
                    elif self.error is None:
                        self._write(item.SerializeToString())
                        if self._unflushed_bytes >= self.REWRITE_BYTES:
                            self._flush_file()  # bounds what is kept for a rewrite
                            last_flush = time.monotonic()
                except Exception as error:  # kept for the training thread to report once
                    if self.error is None:
                        self.error = error
                finally:
                    if isinstance(item, _Flush):
                        item.done.set()
                if item is _STOP:
                    return
            if time.monotonic() - last_flush >= self._flush_secs:
                try:
                    self._flush_file()
                except Exception as error:
                    if self.error is None:
                        self.error = error
                last_flush = time.monotonic()

    def _made(self, later: _Later) -> Any:
        """The event of a summary queued with :meth:`add_summary_later`, or None."""
        try:
            summary = later.make()
        except Exception:  # its maker's fault, not the file's: the writer goes on
            logger.warning(
                "gradwatch: making a summary for step %d failed; it is not written",
                later.step,
                exc_info=True,
            )
            return None
        if summary is None:
            return None
        return self._event_cls(wall_time=later.wall_time, step=later.step, summary=summary)

    def _write(self, record: bytes) -> None:
        self._buffer.write(frame(record))
        self._unflushed.append(record)
        self._unflushed_bytes += len(record)

    def _write_out(self) -> None:
        """Write the buffered records to the file (the OS), emptying the buffer."""
        data = memoryview(self._buffer.getvalue())
        while data:
            written = self._file.write(data)
            data = data[written or 0 :]
        self._buffer.seek(0)
        self._buffer.truncate()

    def _flush_file(self) -> None:
        """Flush, then make sure the flushed records are in the file the path names."""
        self._write_out()
        if self._file_replaced():
            self._reopen()
        self._unflushed.clear()
        self._unflushed_bytes = 0

    def _file_replaced(self) -> bool:
        """Is the open file no longer the one at ``self.path`` (deleted or replaced)?"""
        try:
            opened = os.fstat(self._file.fileno())
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        except (OSError, ValueError):  # cannot tell (permissions, closed): carry on
            return False
        return opened.st_nlink == 0 or (opened.st_dev, opened.st_ino) != (
            current.st_dev,
            current.st_ino,
        )

    def _reopen(self) -> None:
        """Continue in a new event file: header, then the records since the last flush."""
        if not os.path.isdir(self.logdir):
            raise FileNotFoundError(f"the log directory {self.logdir!r} was removed")
        old_path = self.path
        self._file.close()
        self._open(_new_path(self.logdir))
        for record in self._unflushed:
            self._buffer.write(frame(record))
        self._write_out()
        logger.warning(
            "gradwatch: the event file %s was deleted or replaced while this run was "
            "writing it; continuing in a new event file, %s (the %d record(s) written "
            "since the last flush were written there again; what the deleted file held "
            "is gone with it).",
            old_path,
            os.path.basename(self.path),
            len(self._unflushed),
        )


#: Every writer of this process still open (weakly held), made inert in a forked child.
_WRITERS: weakref.WeakSet[EventFileWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._become_inert()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
