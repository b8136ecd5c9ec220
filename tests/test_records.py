"""TFRecord framing with the CRC computed in C: byte for byte TensorBoard's own.

TensorBoard's ``RecordWriter`` and its pure-Python ``masked_crc32c`` are the reference;
the event files gradwatch writes are read back by TensorBoard's reader elsewhere
(test_sinks, test_cli_*), which checks every CRC.
"""

from __future__ import annotations

import random

import pytest
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
    masked_crc32c as tensorboard_masked_crc32c,
)

from gradwatch._sinks import records
from gradwatch._sinks.records import frame, masked_crc32c

from .helpers import framed

#: Payload sizes around the ones that matter: empty, tiny, CRC-table boundaries, a step.
SIZES = [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 255, 256, 1023, 3000, 65_537]


def _payloads() -> list[bytes]:
    rng = random.Random(0)
    out = [bytes(rng.getrandbits(8) for _ in range(size)) for size in SIZES]
    out += [b"\x00" * 64, b"\xff" * 64, bytes(range(256))]
    return out


def test_the_crc_is_computed_in_c_here() -> None:
    """The dev set-up installs google-crc32c with its C extension (a dependency)."""
    assert records.IN_C


@pytest.mark.parametrize("payload", _payloads(), ids=lambda p: f"{len(p)}B")
def test_masked_crc_is_tensorboards(payload: bytes) -> None:
    assert masked_crc32c(payload) == tensorboard_masked_crc32c(payload)


@pytest.mark.parametrize("payload", _payloads(), ids=lambda p: f"{len(p)}B")
def test_a_frame_is_byte_for_byte_tensorboards(payload: bytes) -> None:
    assert frame(payload) == framed(payload)


@pytest.mark.parametrize("installed", ["without its C extension", "not at all"])
def test_google_crc32c_in_python_or_missing_is_not_used(
    installed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """google-crc32c running its own pure-Python fallback, or no google-crc32c at all:
    records takes TensorBoard's function instead, and says nothing as a warning."""
    import sys
    import types
    import warnings

    if installed == "not at all":
        monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import raises ImportError
    else:
        stub = types.ModuleType("google_crc32c")
        stub.implementation = "python"  # type: ignore[attr-defined]
        stub.value = lambda data: 0  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "google_crc32c", stub)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert records._c_crc32c() is None


def test_without_the_c_extension_tensorboards_function_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where google-crc32c has no C extension (or is missing), the values stay the same."""
    monkeypatch.setattr(records, "_crc32c", None)
    for payload in _payloads():
        assert masked_crc32c(payload) == tensorboard_masked_crc32c(payload)
        assert frame(payload) == framed(payload)
