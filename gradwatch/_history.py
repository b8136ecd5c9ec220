"""A small host-side history of per-step statistics, bounded whatever the run length."""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from gradwatch._measure import record as record_module
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

    def state_dict(self) -> dict[str, Any]:
        """The kept records as plain data for a checkpoint: Python numbers, strings,
        tuples, dicts and CPU tensors only, so ``torch.load(weights_only=True)`` (the
        default of torch and of Lightning) reads it back. Values are copied."""
        return {
            "steps_seen": self.steps_seen,
            "records": [_plain(record) for record in self._records],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the kept records with those of :meth:`state_dict`, in place (sinks
        hold this object). Keeps the newest ``maxlen`` when more were saved; a field the
        record no longer has is dropped and a new one gets its default, so a checkpoint
        of another gradwatch version still loads."""
        records = [_record(fields) for fields in state["records"]]
        self._records.clear()
        self.steps_seen = 0
        for column in self._columns.values():
            column.fill(np.nan)
        for record in records:
            self.append(record)
        # The count of every step ever seen, not only of those kept.
        seen = int(state.get("steps_seen", 0))
        if seen > self.steps_seen:
            kept = {name: self.series(name) for name in self.COLUMNS}
            self.steps_seen = seen
            for name, values in kept.items():
                column = self._columns[name]
                column.fill(np.nan)
                for offset, value in enumerate(values):
                    # Where series() reads the kept values, given the whole run's count.
                    slot = (seen - len(values) + offset) % self._maxlen
                    column[slot] = column[slot + self._maxlen] = value

    def matrix(self, field: str, n: int | None = None) -> np.ndarray:
        """A per-layer field stacked as ``[steps, layers]`` over the last ``n`` steps."""
        records = self.last(n) if n is not None else list(self._records)
        rows = [getattr(r, field) for r in records if getattr(r, field) is not None]
        if not rows:
            return np.zeros((0, 0))
        return np.stack(rows)


# Checkpoint form of a StepRecord ------------------------------------------------
# Arrays become CPU tensors and nested records (OutputLogits, NonfiniteOrigin) tagged
# dicts: the types torch's weights-only unpickler accepts. Fields are read from the
# dataclass itself, so a field added to StepRecord is saved without a change here.
#

_NESTED = "__record_type__"


def _plain(record: StepRecord) -> dict[str, Any]:
    return {
        field.name: _to_plain(getattr(record, field.name))
        for field in dataclasses.fields(record)
        if field.name != "derived"  # a cache, recomputed on demand
    }


def _to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_NESTED: type(value).__name__, **fields}
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        fields = {key: _from_plain(item) for key, item in value.items() if key != _NESTED}
        kind = value.get(_NESTED)
        if kind is None:
            return fields
        cls = getattr(record_module, str(kind))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: item for key, item in fields.items() if key in known})
    if isinstance(value, (tuple, list)):
        return type(value)(_from_plain(item) for item in value)
    return value


def _record(fields: Mapping[str, Any]) -> StepRecord:
    known = {f.name for f in dataclasses.fields(StepRecord) if f.name != "derived"}
    return StepRecord(**{key: _from_plain(v) for key, v in fields.items() if key in known})
