"""The records of one event file, read past damage instead of stopping at it.

An event file is a sequence of TFRecord frames: ``uint64 length``, ``uint32`` masked
CRC-32C of the length, ``length`` bytes of payload (a serialised ``Event``), ``uint32``
masked CRC-32C of the payload. TensorBoard's own reader stops at the first frame that
fails its checks, so one flipped byte silently drops the rest of the run, and a length
field that claims petabytes makes it allocate them (``MemoryError``). This reader checks
a length against the bytes that are really there before using it, skips a frame whose
payload fails its CRC, and after a damaged stretch looks for the next frame whose two
CRCs match, counting every damaged stretch it skipped. The CRC is the one gradwatch's
writer frames with (:func:`gradwatch._sinks.records.masked_crc32c`: TensorBoard's values,
computed in C, so a long run's file is not read at a pure-Python loop's 0.3 ms per KB).

A frame cut short at the very end of the file, with a sound header and nothing readable
after it, is not damage: it is the record a live writer (or one that was killed) had not
finished; it is reported apart (``incomplete_tail``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from gradwatch._sinks.records import CRC, LENGTH, masked_crc32c

#: ``uint64`` length and its ``uint32`` CRC.
HEADER_BYTES = LENGTH.size + CRC.size
#: The payload's ``uint32`` CRC.
FOOTER_BYTES = CRC.size


@dataclasses.dataclass
class FileDamage:
    """What could not be read from one event file.

    Attributes:
        file: the file's name (no directory).
        records: damaged records skipped or repaired (a damaged stretch spanning
            several frames counts once: where one frame ends inside it is unknowable).
        bytes: bytes skipped inside damaged stretches and frames.
        repaired: of ``records``, those kept with undecodable text shown as U+FFFD.
        incomplete_tail: the file ends inside a record (still being written, or its
            writer was killed mid-write); that record is not counted as damage.
    """

    file: str
    records: int = 0
    bytes: int = 0
    repaired: int = 0
    incomplete_tail: bool = False

    def skipped(self, size: int) -> None:
        self.records += 1
        self.bytes += size


def _frame_at(data: bytes, pos: int) -> tuple[str, int]:
    """``(verdict, end)`` of the frame starting at ``pos``.

    ``verdict`` is ``"ok"``; ``"bad payload"`` (sound header, payload CRC wrong: ``end``
    is where the frame ends, so it can be stepped over); ``"cut"`` (sound header whose
    frame runs past the end of the file); or ``"bad header"``.
    """
    size = len(data)
    if size - pos < HEADER_BYTES:
        return "cut", size
    (length,) = LENGTH.unpack_from(data, pos)
    (length_crc,) = CRC.unpack_from(data, pos + 8)
    # The length is checked against the bytes really left before it is trusted.
    fits = length <= size - pos - HEADER_BYTES - FOOTER_BYTES
    if masked_crc32c(data[pos : pos + 8]) != length_crc:
        return "bad header", size
    if not fits:
        return "cut", size
    start = pos + HEADER_BYTES
    end = start + length + FOOTER_BYTES
    (payload_crc,) = CRC.unpack_from(data, start + length)
    if masked_crc32c(data[start : start + length]) != payload_crc:
        return "bad payload", end
    return "ok", end


_ZERO_HEADER = bytes(HEADER_BYTES)
_NONZERO = re.compile(rb"[^\x00]")


def _next_frame(data: bytes, pos: int) -> int | None:
    """The first offset at or after ``pos`` where a whole, sound frame starts.

    Runs at C speed over what cannot be a frame: in a file under 4 GiB a frame's length
    has four zero high bytes (``bytes.find`` jumps to the next such place), and twelve
    zero bytes are no frame header (the CRC of a zero length is not zero), so a
    zero-filled hole (what a crash can leave on disk) is stepped over in one search.
    """
    size = len(data)
    last = size - HEADER_BYTES - FOOTER_BYTES
    small = size < 1 << 32
    candidate = pos
    while candidate <= last:
        if small:
            high = data.find(b"\0\0\0\0", candidate + 4, last + 8)
            if high < 0:
                return None
            candidate = high - 4
        if data[candidate : candidate + HEADER_BYTES] == _ZERO_HEADER:
            nonzero = _NONZERO.search(data, candidate)
            if nonzero is None:
                return None
            candidate = max(candidate + 1, nonzero.start() - HEADER_BYTES + 1)
            continue
        if _frame_at(data, candidate)[0] == "ok":
            return candidate
        candidate += 1
    return None


def read_records(data: bytes, damage: FileDamage) -> Iterator[bytes]:
    """The payloads of every sound frame of ``data``, in order; damage goes to ``damage``."""
    pos = 0
    size = len(data)
    while pos < size:
        verdict, end = _frame_at(data, pos)
        if verdict == "ok":
            yield data[pos + HEADER_BYTES : end - FOOTER_BYTES]
            pos = end
            continue
        if verdict == "bad payload":
            damage.skipped(end - pos)
            pos = end
            continue
        following = _next_frame(data, pos + 1)
        if following is None:
            if verdict == "cut":
                damage.incomplete_tail = True
            else:
                damage.skipped(size - pos)
            return
        damage.skipped(following - pos)
        pos = following
