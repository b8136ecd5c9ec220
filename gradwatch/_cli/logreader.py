"""Reading a gradwatch TensorBoard log directory back, with TensorBoard's own reader.

Only event files are parsed (protobuf records, through TensorBoard's
``EventAccumulator``); nothing read from a log directory is unpickled or executed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from gradwatch._sinks.flowplot import FlowData
from gradwatch._sinks.tensorboard import parse_alert_markdown

#: Tag prefixes only gradwatch writes; a run holding none of them is not a gradwatch run.
GRADWATCH_PREFIXES: tuple[str, ...] = ("grad_norm/", "weight_norm/", "update_ratio/")
#: The tag TensorBoard's custom-scalars plugin stores its layout under.
LAYOUT_TAG = "custom_scalars__config__"


class NotAGradwatchLog(ValueError):
    """The directory is missing, empty, or was not written by gradwatch."""


@dataclasses.dataclass
class RunLog:
    """What a log directory holds: scalar series by tag, alert texts and image tags.

    Attributes:
        logdir: the directory read.
        scalars: ``(step, value)`` series by tag, steps increasing.
        alerts: ``(step, markdown text)`` of every alert, in step order.
        has_layout: whether the custom-scalars layout is there.
        images: tags of image summaries (e.g. ``gradient_flow``).
    """

    scalars: dict[str, list[tuple[int, float]]]
    alerts: list[tuple[int, str]]
    has_layout: bool
    logdir: str = ""
    images: tuple[str, ...] = ()
    layout_categories: tuple[str, ...] = ()

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


def read_run(logdir: str | os.PathLike[str]) -> RunLog:
    """Read the event files of one gradwatch run in ``logdir`` into a :class:`RunLog`.

    Raises:
        NotAGradwatchLog: the directory is missing or not a directory, holds no event
            files, holds several runs in subdirectories (the message lists them), or its
            events were not written by gradwatch.
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
    run = _accumulate(path)
    if not run.written_by_gradwatch:
        found = ", ".join(sorted(run.scalars)[:5]) or "no scalars"
        raise NotAGradwatchLog(
            f"{path!r} holds TensorBoard events but none written by gradwatch (no "
            f"grad_norm/<layer> or weight_norm/<layer> scalars; found: {found})"
        )
    return run


def _accumulate(path: str) -> RunLog:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        path,
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.TENSORS: 0,
            event_accumulator.IMAGES: 1,
        },
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {
        tag: [(event.step, float(event.value)) for event in accumulator.Scalars(tag)]
        for tag in tags.get("scalars", [])
    }
    alerts: list[tuple[int, str]] = []
    tensor_tags = tags.get("tensors", [])
    if "alerts" in tensor_tags:
        for event in accumulator.Tensors("alerts"):
            array = np.asarray(tensor_util.make_ndarray(event.tensor_proto)).reshape(-1)
            for item in array:
                text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
                alerts.append((event.step, text))
    categories: tuple[str, ...] = ()
    if LAYOUT_TAG in tensor_tags:
        categories = _layout_categories(accumulator.Tensors(LAYOUT_TAG))
    return RunLog(
        scalars=scalars,
        alerts=sorted(alerts, key=lambda a: a[0]),
        has_layout=LAYOUT_TAG in tensor_tags,
        logdir=path,
        images=tuple(tags.get("images", [])),
        layout_categories=categories,
    )


def _layout_categories(events: Any) -> tuple[str, ...]:
    """Titles of the custom-scalars layout's categories (a protobuf, parsed, not run)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    titles: list[str] = []
    for event in events:
        for raw in event.tensor_proto.string_val:
            layout = layout_pb2.Layout()
            try:
                layout.ParseFromString(raw)
            except Exception:  # a damaged layout record: ignore it, keep reading the run
                continue
            titles += [category.title for category in layout.category]
    return tuple(titles)
