"""Reading a gradwatch TensorBoard log directory back, one run at a time.

Event files are parsed record by record (:mod:`gradwatch._cli.eventrecords` frames them,
TensorBoard's ``Event`` protobuf is the payload); nothing read from a log directory is
unpickled or executed, and only regular files are opened (a FIFO named like an event file
would block forever).

A directory can hold several runs: re-running a job with the same ``logdir`` adds one
event file per run, and a file can even hold two runs one after the other. They are never
merged: each gradwatch event file is a run, and so is every stretch of one where the
per-layer steps start again (or a new custom-scalars layout begins, which gradwatch writes
first thing in every run). Event files written by someone else in the same directory
(Lightning's or the Hugging Face Trainer's own scalars) belong to the gradwatch run they
overlap in time. :func:`read_run` returns the newest run unless told which, and says how
many there are.

Damaged records are skipped and counted, never fatal (see :class:`FileDamage`).

Series are keyed by the statistics' canonical names (``grad_norm/<layer>``,
``total/loss``; :func:`gradwatch._names.canonical_tag`), whichever spelling the file
carries: this version's TensorBoard tags (``2_grad_norm/03-<layer>``) or the earlier ones.
``act_nonfinite`` is written only when it is not zero; the zeros are put back here (see
:func:`restore_sparse_zeros`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from gradwatch._cli.eventrecords import FileDamage, read_records
from gradwatch._names import canonical_tag
from gradwatch._sinks.flowplot import FlowData
from gradwatch._sinks.tensorboard import parse_alert_markdown

#: Canonical prefixes only gradwatch writes; a run holding none is not a gradwatch run.
GRADWATCH_PREFIXES: tuple[str, ...] = ("grad_norm/", "weight_norm/", "update_ratio/")
#: The tag TensorBoard's custom-scalars plugin stores its layout under.
LAYOUT_TAG = "custom_scalars__config__"
#: The tag gradwatch writes its alerts under (markdown text, one per alert).
ALERT_TAG = "alerts"


class NotAGradwatchLog(ValueError):
    """The directory is missing, empty, or was not written by gradwatch."""


class NoSuchRun(ValueError):
    """The run asked for (``gradwatch report --run N``) is not in the directory."""


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One run of a log directory, as listed by ``gradwatch report``.

    Attributes:
        index: its number, 1 for the oldest (what ``--run`` takes).
        file: the event file it was read from (no directory).
        started: the wall time (seconds since the epoch) of its first record.
        first_step: its first per-layer step, or None when it logged none.
        last_step: its last per-layer step, or None.
        steps: how many distinct steps it logged.
        alerts: how many alerts it holds.
    """

    index: int
    file: str
    started: float
    first_step: int | None
    last_step: int | None
    steps: int
    alerts: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunLog:
    """What one run of a log directory holds: scalar series by tag, alerts, image tags.

    Attributes:
        logdir: the directory read.
        scalars: ``(step, value)`` series by canonical name, steps increasing.
        alerts: ``(step, markdown text)`` of every alert, in step order.
        has_layout: whether the custom-scalars layout is there.
        images: tags of image summaries (e.g. ``gradient_flow``).
        layout_categories: titles of the custom-scalars layout's categories.
        run: which run of the directory this is (None when it holds no gradwatch run).
        runs: every gradwatch run of the directory, oldest first.
        damage: per event file with damaged records, what was skipped.
        skipped_files: event files not read at all, each with why (``name (reason)``).
    """

    scalars: dict[str, list[tuple[int, float]]]
    alerts: list[tuple[int, str]]
    has_layout: bool
    logdir: str = ""
    images: tuple[str, ...] = ()
    layout_categories: tuple[str, ...] = ()
    run: RunInfo | None = None
    runs: tuple[RunInfo, ...] = ()
    damage: tuple[FileDamage, ...] = ()
    skipped_files: tuple[str, ...] = ()

    @property
    def written_by_gradwatch(self) -> bool:
        """gradwatch's per-layer scalars, or its custom-scalars layout, are there."""
        return any(tag.startswith(GRADWATCH_PREFIXES) for tag in self.scalars) or any(
            title.startswith("gradwatch") for title in self.layout_categories
        )

    def layers(self, stat: str = "grad_norm") -> list[str]:
        """Layer tags that have a ``<stat>/<layer>`` series, in the order first written.

        The sink writes every layer's ``weight_norm`` at every logged step in model order,
        so ``layers("weight_norm")`` is the model's layer order.
        """
        prefix = stat + "/"
        return [tag[len(prefix) :] for tag in self.scalars if tag.startswith(prefix)]

    def layer_order(self) -> list[str]:
        """Every layer, input side first: weight-norm order, then any layer seen only
        through another statistic."""
        order = self.layers("weight_norm")
        for stat in ("grad_norm", "update_ratio"):
            order += [name for name in self.layers(stat) if name not in order]
        return order

    def steps(self) -> list[int]:
        """Every step at which a per-layer statistic was logged, increasing."""
        seen: set[int] = set()
        for tag, series in self.scalars.items():
            if tag.startswith(GRADWATCH_PREFIXES):
                seen.update(step for step, _ in series)
        return sorted(seen)

    def matrix(self, stat: str, layers: list[str], steps: list[int]) -> np.ndarray:
        """``[layers, steps]`` of ``<stat>/<layer>``; NaN where nothing was logged."""
        column = {step: i for i, step in enumerate(steps)}
        out = np.full((len(layers), len(steps)), np.nan)
        for row, layer in enumerate(layers):
            for step, value in self.scalars.get(f"{stat}/{layer}", ()):
                if step in column:
                    out[row, column[step]] = value
        return out

    def flow_data(self) -> FlowData:
        """The gradient-flow picture's data (layers x steps)."""
        layers = self.layer_order()
        steps = self.steps()
        return FlowData(
            tuple(layers),
            np.asarray(steps, dtype=np.int64),
            self.matrix("grad_norm", layers, steps),
            self.matrix("weight_norm", layers, steps),
        )

    def parsed_alerts(self) -> list[dict[str, Any]]:
        """Alerts as dicts (kind, severity, step, layer, message, remedy, value,
        threshold, text); fields that cannot be parsed back are None."""
        return [parse_alert_markdown(text, step) for step, text in self.alerts]


def run_directories(path: str) -> list[str]:
    """Directories under ``path`` (itself included) that hold event files, sorted."""
    found = []
    for directory, _, files in os.walk(path):
        if any("tfevents" in name for name in files):
            found.append(directory)
    return sorted(found)


def read_run(logdir: str | os.PathLike[str], run: int | None = None) -> RunLog:
    """Read one gradwatch run of ``logdir`` into a :class:`RunLog`.

    Args:
        logdir: the directory given to gradwatch.
        run: which run when the directory holds several: 1 for the oldest, ``-1`` (or
            None, the default) for the newest; ``RunLog.runs`` lists them all.

    Raises:
        NotAGradwatchLog: the directory is missing or not a directory, holds no event
            files, holds several runs in subdirectories (the message lists them), or its
            events were not written by gradwatch.
        NoSuchRun: ``run`` is not the number of one of its runs.
    """
    path = os.fspath(logdir)
    if not os.path.exists(path):
        raise NotAGradwatchLog(f"log directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise NotAGradwatchLog(f"{path!r} is a file, not a log directory")
    runs = run_directories(path)
    if not runs:
        raise NotAGradwatchLog(
            f"{path!r} holds no TensorBoard event files (events.out.tfevents.*); "
            "pass the logdir given to gradwatch.watch() or `gradwatch check --logdir`"
        )
    if os.path.normpath(runs[0]) != os.path.normpath(path):
        names = [os.path.relpath(run, path) for run in runs]
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise NotAGradwatchLog(
            f"{path!r} holds no event files itself but {len(runs)} run(s) in "
            f"subdirectories ({shown}); pass one of them, e.g. "
            f"{os.path.join(path, names[0])!r}"
        )
    files, skipped = _event_files(path)
    if not files:
        raise NotAGradwatchLog(
            f"{path!r} holds no readable event files (skipped: {', '.join(skipped)})"
        )
    parts: list[_Part] = []
    damage: list[FileDamage] = []
    for name in files:
        file_damage = FileDamage(name)
        try:
            parts += _read_file(os.path.join(path, name), file_damage)
        except OSError as error:  # unreadable (permissions, vanished): say so, read the rest
            skipped.append(f"{name} ({error.strerror or error})")
            continue
        if file_damage.records or file_damage.incomplete_tail:
            damage.append(file_damage)
    found = _runs(parts)
    common = {"logdir": path, "damage": tuple(damage), "skipped_files": tuple(skipped)}
    if not found:
        log = _merge(parts, **common)
        found_tags = ", ".join(sorted(log.scalars)[:5]) or "no scalars"
        lost = sum(d.records for d in damage)
        note = f"; {lost} damaged record(s) were skipped" if lost else ""
        if skipped:
            note += f"; files not read: {', '.join(skipped)}"
        raise NotAGradwatchLog(
            f"{path!r} holds TensorBoard events but none written by gradwatch (no "
            f"grad_norm/<layer> or weight_norm/<layer> scalars; found: {found_tags}){note}"
        )
    infos = tuple(_info(i + 1, own) for i, (own, _) in enumerate(found))
    chosen = _choose(run, len(found))
    own, companions = found[chosen]
    return _merge([own, *companions], run=infos[chosen], runs=infos, **common)


def _choose(run: int | None, count: int) -> int:
    """The list position of run number ``run`` (1-based; negative from the newest)."""
    if run is None:
        return count - 1
    if 1 <= run <= count:
        return run - 1
    if -count <= run <= -1:
        return count + run
    raise NoSuchRun(
        f"there is no run {run}: the directory holds {count} run(s); pick 1 to {count} "
        "(1 is the oldest; -1 the newest)"
    )


def _event_files(path: str) -> tuple[list[str], list[str]]:
    """Names of the regular event files in ``path`` (sorted), and the others skipped."""
    files, skipped = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if "tfevents" not in entry.name or entry.is_dir():
                continue
            if entry.is_file():  # follows a symlink; a FIFO, socket or device is not a file
                files.append(entry.name)
            else:
                skipped.append(f"{entry.name} (not a regular file)")
    return sorted(files), sorted(skipped)


@dataclasses.dataclass
class _Part:
    """The records of one run found in one event file (or a whole file of another writer)."""

    file: str
    log: RunLog = dataclasses.field(
        default_factory=lambda: RunLog(scalars={}, alerts=[], has_layout=False)
    )
    started: float | None = None
    ended: float = 0.0
    #: The last step of each per-layer tag: a tag seen again at that step or an earlier
    #: one means the steps restarted (one writer writes all its tags at once; a trainer's
    #: logger such as Lightning's writes one event per tag, several at the same step).
    last_tag_step: dict[str, int] = dataclasses.field(default_factory=dict)
    order: int = 0

    def span(self) -> tuple[float, float]:
        start = self.started if self.started is not None else self.ended
        return start, self.ended

    @property
    def empty(self) -> bool:
        log = self.log
        return not (log.scalars or log.alerts or log.has_layout or log.images)


def _read_file(path: str, damage: FileDamage) -> list[_Part]:
    """The runs (and other writers' records) of one event file, in file order."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    with open(path, "rb") as handle:
        data = handle.read()
    name = os.path.basename(path)
    parts = [_Part(name)]
    names: dict[str, str] = {}  # tag -> canonical name, spelled out once per tag
    for payload in read_records(data, damage):
        try:
            event = Event.FromString(payload)
        except DecodeError:  # a sound frame around a broken Event (e.g. a non-UTF-8 tag)
            damage.skipped(len(payload))
            continue
        part = parts[-1]
        if event.WhichOneof("what") == "summary":
            values = event.summary.value
            # A run's layout comes first, at step 0; one at a later step only adds charts.
            starts_run = event.step == 0 and any(v.tag == LAYOUT_TAG for v in values)
            # One per-layer tag of the event says whether the steps restarted.
            tag = next(
                (v.tag for v in values if _canonical(v.tag, names).startswith(GRADWATCH_PREFIXES)),
                None,
            )
            last = part.last_tag_step.get(tag, -1) if tag is not None else -1
            if part.last_tag_step and (starts_run or event.step <= last):
                part = _Part(name, order=len(parts))  # the steps restarted: a new run
                parts.append(part)
            _add_summary(part, event, damage, names)
            if tag is not None:
                part.last_tag_step[tag] = event.step
        if part.started is None:
            part.started = event.wall_time
        part.ended = max(part.ended, event.wall_time)
    return [part for part in parts if not part.empty]


def _canonical(tag: str, names: dict[str, str]) -> str:
    name = names.get(tag)
    if name is None:
        name = names[tag] = canonical_tag(tag)
    return name


def _add_summary(part: _Part, event: Any, damage: FileDamage, names: dict[str, str]) -> None:
    log = part.log
    step = int(event.step)
    for value in event.summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            series = log.scalars.setdefault(_canonical(value.tag, names), [])
            series.append((step, float(value.simple_value)))
        elif kind == "image":
            if value.tag not in log.images:
                log.images += (value.tag,)
        elif kind == "tensor" and value.tag == ALERT_TAG:
            for raw in value.tensor.string_val:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # keep the alert; show what cannot be decoded
                    text = raw.decode("utf-8", errors="replace")
                    damage.records += 1
                    damage.repaired += 1
                log.alerts.append((step, text))
        elif kind == "tensor" and value.tag == LAYOUT_TAG:
            log.has_layout = True
            log.layout_categories += _layout_categories(value.tensor.string_val)


def _layout_categories(raws: Iterable[bytes]) -> tuple[str, ...]:
    """Titles of the custom-scalars layout's categories (a protobuf, parsed, not run)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    titles: list[str] = []
    for raw in raws:
        layout = layout_pb2.Layout()
        try:
            layout.ParseFromString(raw)
        except Exception:  # a damaged layout record: ignore it, keep reading the run
            continue
        titles += [category.title for category in layout.category]
    return tuple(titles)


def _runs(parts: list[_Part]) -> list[tuple[_Part, list[_Part]]]:
    """The gradwatch runs, oldest first, each with the other writers' parts it overlaps."""
    own = sorted(
        (part for part in parts if part.log.written_by_gradwatch),
        key=lambda part: (part.span()[0], part.file, part.order),
    )
    found: list[tuple[_Part, list[_Part]]] = [(part, []) for part in own]
    if not found:
        return []
    for other in (part for part in parts if not part.log.written_by_gradwatch):
        best = max(
            range(len(found)),
            key=lambda i: (_overlap(other.span(), found[i][0].span()), i),  # ties: newer
        )
        found[best][1].append(other)
    return found


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """How long two time spans overlap; negative: the gap between them."""
    return min(a[1], b[1]) - max(a[0], b[0])


def _info(index: int, part: _Part) -> RunInfo:
    steps = part.log.steps()
    return RunInfo(
        index=index,
        file=part.file,
        started=part.span()[0],
        first_step=steps[0] if steps else None,
        last_step=steps[-1] if steps else None,
        steps=len(steps),
        alerts=len(part.log.alerts),
    )


def _merge(parts: list[_Part], **fields: Any) -> RunLog:
    """One :class:`RunLog` of ``parts`` (a run and its companions), series step-sorted."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    alerts: list[tuple[int, str]] = []
    images: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_layout = False
    for part in parts:
        for tag, series in part.log.scalars.items():
            scalars.setdefault(tag, []).extend(series)
        alerts += part.log.alerts
        images += tuple(tag for tag in part.log.images if tag not in images)
        categories += part.log.layout_categories
        has_layout = has_layout or part.log.has_layout
    for series in scalars.values():
        series.sort(key=lambda item: item[0])  # stable: a step's order of writing is kept
    restore_sparse_zeros(scalars)
    return RunLog(
        scalars=scalars,
        alerts=sorted(alerts, key=lambda alert: alert[0]),
        has_layout=has_layout,
        images=images,
        layout_categories=categories,
        **fields,
    )


#: Activation statistics written only when not zero: ``act_<stat>`` names.
SPARSE_ACTIVATION_STATS: tuple[str, ...] = ("act_nonfinite",)


def restore_sparse_zeros(scalars: dict[str, list[tuple[int, float]]]) -> None:
    """Put back the zeros of :data:`SPARSE_ACTIVATION_STATS`: on every step where a module
    has another activation statistic but not this one, it was zero (the sink leaves
    zeros out so that TensorBoard shows no chart of flat zeros)."""
    sampled: dict[str, set[int]] = {}
    for name, series in scalars.items():
        stat, _, module = name.partition("/")
        if stat.startswith("act_") and stat not in SPARSE_ACTIVATION_STATS:
            sampled.setdefault(module, set()).update(step for step, _ in series)
    for stat in SPARSE_ACTIVATION_STATS:
        for module, steps in sampled.items():
            name = f"{stat}/{module}"
            series = scalars.get(name, [])
            missing = steps - {step for step, _ in series}
            if missing:
                merged = series + [(step, 0.0) for step in missing]
                scalars[name] = sorted(merged, key=lambda item: item[0])
