"""TFRecord framing, the format of TensorBoard's event files, with a CRC-32C computed in C.

An event file is a sequence of frames: ``uint64`` payload length, ``uint32`` masked
CRC-32C of those 8 bytes, the payload (a serialised ``Event``), ``uint32`` masked CRC-32C
of the payload. TensorBoard's own ``RecordWriter`` (which ``torch.utils.tensorboard``
writes through) always takes its CRC from ``tensorboard.compat.tensorflow_stub``, a
pure-Python loop: about 0.8 ms for the 3 KB event of one step of a 28-layer model, all of
it holding the GIL on the writer thread, so the training thread, back from a kernel,
waits for it. ``google-crc32c`` (Google's C implementation, a dependency) computes the same
value in under a microsecond. Where its C extension is missing it would fall back to
Python itself; TensorBoard's own function is used then (same values, same speed).

One owner for both directions: the event writer frames with :func:`frame`, and
``gradwatch report``'s damage-tolerant reader checks frames with :func:`masked_crc32c`.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: ``uint64`` little-endian payload length, and a ``uint32`` CRC.
LENGTH = struct.Struct("<Q")
CRC = struct.Struct("<I")
#: What TFRecord adds to the rotated CRC ("masking": a CRC of data holding CRCs).
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _c_crc32c() -> Callable[[bytes], int] | None:
    """google-crc32c's C function, or None where only its pure-Python fallback exists."""
    try:
        with warnings.catch_warnings():
            # Without its C extension it warns at import (once per process) and runs in
            # Python: not worth a warning here, TensorBoard's function serves as well.
            warnings.simplefilter("ignore", RuntimeWarning)
            import google_crc32c
    except ImportError:
        return None
    if google_crc32c.implementation != "c":
        return None
    value: Callable[[bytes], int] = google_crc32c.value
    return value


_crc32c = _c_crc32c()
if _crc32c is None:
    logger.info(
        "gradwatch: google-crc32c is missing or has no C extension here; event-file "
        "checksums are computed in Python (about 0.3 ms per KB, on the event writer's "
        "thread). Reinstall google-crc32c from a wheel for this platform (or build it "
        "with a C compiler) to compute them in C."
    )
#: Whether CRCs are computed in C (``google-crc32c``) rather than in Python.
IN_C = _crc32c is not None


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data`` (TensorBoard's ``masked_crc32c``).

    ``data`` must be ``bytes``: the C function refuses ``bytearray`` and ``memoryview``.
    """
    if _crc32c is None:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
            masked_crc32c as python_masked_crc32c,
        )

        return int(python_masked_crc32c(data))
    crc = _crc32c(data)
    return (((crc >> 15) | ((crc << 17) & _U32)) + _MASK_DELTA) & _U32


def frame(payload: bytes) -> bytes:
    """``payload`` as one TFRecord frame, byte for byte what ``RecordWriter`` writes."""
    header = LENGTH.pack(len(payload))
    return b"".join(
        (header, CRC.pack(masked_crc32c(header)), payload, CRC.pack(masked_crc32c(payload)))
    )
