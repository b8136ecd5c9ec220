"""An event-file writer whose disk work happens on a background thread.

TensorBoard's own pieces do the format: ``RecordWriter`` frames records (length + CRC)
and ``event_pb2.Event`` is the payload; ``torch.utils.tensorboard.summary`` builds the
summaries. What this module owns is the thread: the training thread only puts events
on a bounded queue, and a failure on disk (full disk, vanished directory) is kept and
re-raised on the caller's next call, where the sink guard turns it into one warning,
instead of escaping the thread as a traceback.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import threading
import time
from typing import Any

_counter = itertools.count()


class _Flush:
    """Queue marker: flush the file, then signal ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class EventFileWriter:
    """Appends ``Event`` protos to one new event file under ``logdir``.

    The training thread appends to a deque (no lock hand-off, no thread wake-up per
    event); the writer thread wakes every ``poll_secs``, or at once for a flush, a close
    or a full buffer, and writes what has piled up.
    """

    def __init__(
        self,
        logdir: str,
        *,
        flush_secs: float = 30.0,
        max_pending: int = 2048,
        poll_secs: float = 0.25,
    ) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_cls = Event
        name = (
            f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_counter)}.gradwatch"
        )
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._records = RecordWriter(self._file)
        self._flush_secs = flush_secs
        self._poll_secs = poll_secs
        self._max_pending = max_pending
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self.error: BaseException | None = None
        self._closed = False
        version = Event(wall_time=time.time(), file_version="brain.Event:2")
        self._records.write(version.SerializeToString())
        self._file.flush()
        self._thread = threading.Thread(
            target=self._run, name="gradwatch-event-writer", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------ training thread
    def add_summary(self, summary: Any, step: int) -> None:
        """Queue a ``Summary`` for ``step``; raises a failure the writer thread met."""
        self._raise_if_failed()
        self._pending.append(
            self._event_cls(wall_time=time.time(), step=int(step), summary=summary)
        )
        if len(self._pending) >= self._max_pending:
            # Back-pressure rather than unbounded memory or dropped data.
            self._wait_for(self._push(_Flush()), 30.0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is written to the OS (survives a kill)."""
        self._raise_if_failed()
        self._wait_for(self._push(_Flush()), timeout)
        self._raise_if_failed()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the file. Never waits longer than ``timeout``."""
        if self._closed:
            return
        self._closed = True
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

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            self._wake.wait(self._poll_secs)
            self._wake.clear()
            while self._pending:
                item = self._pending.popleft()
                try:
                    if isinstance(item, self._event_cls):
                        if self.error is None:
                            self._records.write(item.SerializeToString())
                        continue
                    self._file.flush()  # a _Flush marker or _STOP
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
                    self._file.flush()
                except Exception as error:
                    if self.error is None:
                        self.error = error
                last_flush = time.monotonic()
