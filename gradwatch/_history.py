"""A small host-side history of per-step statistics, bounded whatever the run length."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator

import numpy as np

from gradwatch._measure.record import StepRecord


class History:
    """Ring buffer of the last ``maxlen`` :class:`StepRecord` objects.

    The scalar series detectors read every step (loss, total gradient norm, whether the
    step updated the weights) are also kept column-wise in numpy arrays, so
    :meth:`series` of the last ``n`` steps is one slice, not a walk over ``n`` records.
    Each value is written twice, at ``i`` and ``i + maxlen`` of a ``2 * maxlen`` array,
    so the newest ``n`` values are always contiguous.
    """

    #: Scalar fields kept column-wise (``"taken"``: the step updated the weights, i.e.
    #: neither a policy nor the GradScaler skipped it; 1.0 or 0.0).
    COLUMNS = ("loss", "total_grad_norm", "taken")

    def __init__(self, maxlen: int) -> None:
        self._records: collections.deque[StepRecord] = collections.deque(maxlen=maxlen)
        self.steps_seen = 0
        self._maxlen = maxlen
        self._columns = {name: np.full(2 * maxlen, np.nan) for name in self.COLUMNS}

    def append(self, record: StepRecord) -> None:
        self._records.append(record)
        slot = self.steps_seen % self._maxlen
        self.steps_seen += 1
        values = (
            np.nan if record.loss is None else record.loss,
            record.total_grad_norm,
            0.0 if record.skipped or record.amp_skipped else 1.0,
        )
        for name, value in zip(self.COLUMNS, values):
            column = self._columns[name]
            column[slot] = column[slot + self._maxlen] = value

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self._records)

    def __reversed__(self) -> Iterator[StepRecord]:
        """Newest first, without copying the buffer."""
        return reversed(self._records)

    def __getitem__(self, index: int) -> StepRecord:
        return self._records[index]

    @property
    def latest(self) -> StepRecord | None:
        return self._records[-1] if self._records else None

    def last(self, n: int) -> list[StepRecord]:
        """The last ``n`` records, oldest first."""
        if n <= 0:
            return []
        # From the right end: O(n), not O(history), since detectors ask every step.
        newest_first = list(itertools.islice(reversed(self), n))
        newest_first.reverse()
        return newest_first

    def series(self, field: str, n: int | None = None) -> np.ndarray:
        """A scalar field (``"loss"``, ``"total_grad_norm"``, ``"taken"``, or any other
        numeric :class:`StepRecord` attribute) over the last ``n`` steps, oldest first.

        Missing values (a step with no recorded loss) are NaN. Returns a new array.
        """
        count = len(self._records) if n is None else max(0, min(n, len(self._records)))
        column = self._columns.get(field)
        if column is not None:
            end = (self.steps_seen - 1) % self._maxlen + self._maxlen + 1
            return column[end - count : end].copy()
        values = [getattr(r, field) for r in self.last(count)]
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def matrix(self, field: str, n: int | None = None) -> np.ndarray:
        """A per-layer field stacked as ``[steps, layers]`` over the last ``n`` steps."""
        records = self.last(n) if n is not None else list(self._records)
        rows = [getattr(r, field) for r in records if getattr(r, field) is not None]
        if not rows:
            return np.zeros((0, 0))
        return np.stack(rows)
