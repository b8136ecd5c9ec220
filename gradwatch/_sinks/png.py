"""A minimal PNG encoder for RGB images, so TensorBoard pictures need neither Pillow nor
matplotlib in the training process.

PNG (ISO/IEC 15948) is a signature followed by chunks (length, type, data, CRC-32); an
8-bit RGB image is one IHDR chunk, the zlib-compressed scanlines (each prefixed with
filter type 0, "none") in IDAT, and IEND. Heat maps of flat colour compress well even
without PNG's row filters.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(rgb: np.ndarray, *, level: int = 6) -> bytes:
    """``rgb`` (``[height, width, 3]`` uint8) as the bytes of a PNG file."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: filter "none"
    rows[:, 1:] = rgb.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            _chunk(b"IEND", b""),
        ]
    )
