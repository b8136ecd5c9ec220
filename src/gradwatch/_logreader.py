"""Reading a gradwatch TensorBoard log directory back, with TensorBoard's own reader.

Only event files are parsed (protobuf records); nothing read from a log directory is
unpickled or executed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class RunLog:
    """What a log directory holds: scalar series by tag, and alert texts."""

    scalars: dict[str, list[tuple[int, float]]]
    alerts: list[tuple[int, str]]
    has_layout: bool

    def layers(self, stat: str = "grad_norm") -> list[str]:
        prefix = stat + "/"
        return [tag[len(prefix) :] for tag in self.scalars if tag.startswith(prefix)]


class NotAGradwatchLog(ValueError):
    """The directory is missing, empty, or was not written by gradwatch."""


def read_run(logdir: str | os.PathLike[str]) -> RunLog:
    """Read every event file under ``logdir`` (one run) into a :class:`RunLog`."""
    from tensorboard.backend.event_processing import event_accumulator

    path = os.fspath(logdir)
    if not os.path.isdir(path):
        raise NotAGradwatchLog(f"{path!r} is not a directory")
    if not any("tfevents" in name for _, _, files in os.walk(path) for name in files):
        raise NotAGradwatchLog(f"{path!r} holds no TensorBoard event files")
    accumulator = event_accumulator.EventAccumulator(
        path,
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.TENSORS: 0,
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
    for tag in tensor_tags:
        if tag != "alerts":
            continue
        from tensorboard.util import tensor_util

        for event in accumulator.Tensors(tag):
            array = np.asarray(tensor_util.make_ndarray(event.tensor_proto)).reshape(-1)
            for item in array:
                text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
                alerts.append((event.step, text))
    has_layout = "custom_scalars__config__" in tensor_tags
    return RunLog(scalars=scalars, alerts=sorted(alerts, key=lambda a: a[0]), has_layout=has_layout)
