"""The records of one event file, read past damage instead of stopping at it.

An event file is a sequence of TFRecord frames: ``uint64 length``, ``uint32`` masked
CRC-32C of the length, ``length`` bytes of payload (a serialised ``Event``), ``uint32``
masked CRC-32C of the payload. TensorBoard's own reader stops at the first frame that
fails its checks, so one flipped byte silently drops the rest of the run, and a length
field that claims petabytes makes it allocate them (``MemoryError``). This reader checks
a length against the bytes that are really there before using it, skips a frame whose
payload fails its CRC, and after a damaged stretch looks for the next frame whose two
CRCs match, counting every damaged stretch it skipped. The CRC is TensorBoard's own
(:func:`masked_crc32c`), the one its writer uses.

A frame cut short at the very end of the file, with a sound header and nothing readable
after it, is not damage: it is the record a live writer (or one that was killed) had not
finished; it is reported apart (``incomplete_tail``).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

#: ``uint64`` length and its ``uint32`` CRC.
HEADER_BYTES = 12
#: The payload's ``uint32`` CRC.
FOOTER_BYTES = 4
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


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
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    size = len(data)
    if size - pos < HEADER_BYTES:
        return "cut", size
    (length,) = _LENGTH.unpack_from(data, pos)
    (length_crc,) = _CRC.unpack_from(data, pos + 8)
    # The length is checked against the bytes really left before it is trusted, and
    # before any CRC (this is also what makes resynchronising cheap: almost every
    # misaligned 8 bytes read as a length far beyond the file).
    fits = length <= size - pos - HEADER_BYTES - FOOTER_BYTES
    if masked_crc32c(data[pos : pos + 8]) != length_crc:
        return "bad header", size
    if not fits:
        return "cut", size
    start = pos + HEADER_BYTES
    end = start + length + FOOTER_BYTES
    (payload_crc,) = _CRC.unpack_from(data, start + length)
    if masked_crc32c(data[start : start + length]) != payload_crc:
        return "bad payload", end
    return "ok", end


def _plausible_length(data: bytes, pos: int) -> bool:
    """Could a frame start at ``pos``? Its length must fit in what is left (no CRC yet)."""
    if len(data) - pos < HEADER_BYTES + FOOTER_BYTES:
        return False
    (length,) = _LENGTH.unpack_from(data, pos)
    return bool(length <= len(data) - pos - HEADER_BYTES - FOOTER_BYTES)


def _next_frame(data: bytes, pos: int) -> int | None:
    """The first offset at or after ``pos`` where a whole, sound frame starts."""
    for candidate in range(pos, len(data) - HEADER_BYTES - FOOTER_BYTES + 1):
        if _plausible_length(data, candidate) and _frame_at(data, candidate)[0] == "ok":
            return candidate
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
