"""TensorBoard sink: scalars under stable tags, alerts as text.

The tags below are public (dashboards and ``gradwatch report`` read them): never rename
one.

Scalars of one step go out as one ``Summary`` event holding every tag, instead of one
event per tag: one protobuf and one queue put per step keeps the training thread's cost
flat as layers grow. Summaries are built with ``torch.utils.tensorboard.summary`` and
framed by TensorBoard's ``RecordWriter``; :mod:`.eventfile` does the disk work on its own
thread and reports its failures back instead of dying with a traceback.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from gradwatch._alerts import Alert
from gradwatch._history import History
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord
from gradwatch._names import tag_of

logger = logging.getLogger(__name__)

#: Image tag of the gradient-flow picture (layers x steps heat map + depth profile).
FLOW_IMAGE_TAG = "gradient_flow"

#: Per-layer statistics and the chart titles they get in the custom-scalars layout.
LAYER_STATS: dict[str, str] = {
    "grad_norm": "gradient L2 norm per layer",
    "weight_norm": "weight L2 norm per layer",
    "update_ratio": "update ratio ||dw||/||w|| per layer",
}
#: Activation statistics (``act_<name>/<layer>``), charted the same way.
ACTIVATION_STATS: dict[str, str] = {
    "act_mean": "activation mean per layer",
    "act_std": "activation std per layer",
    "act_batch_std": "activation std across the batch per layer",
    "act_saturated": "saturated fraction per layer",
    "act_dead": "dead-unit fraction per layer",
    "act_nonfinite": "non-finite fraction per layer",
}
TOTAL_TAGS: dict[str, str] = {
    "total/grad_norm": "total gradient norm (before clipping)",
    "total/loss": "loss",
    "total/clip_coef": "clip coefficient",
}


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """One multi-line chart per statistic, holding every layer (gradient flow at a glance)."""
    layers: dict[str, list[Any]] = {
        title: ["Multiline", [rf"^{stat}/"]] for stat, title in LAYER_STATS.items()
    }
    activations: dict[str, list[Any]] = {
        title: ["Multiline", [rf"^{stat}/"]] for stat, title in ACTIVATION_STATS.items()
    }
    totals: dict[str, list[Any]] = {
        title: ["Multiline", [rf"^{tag}$"]] for tag, title in TOTAL_TAGS.items()
    }
    return {
        "gradwatch: layers": layers,
        "gradwatch: activations": activations,
        "gradwatch: totals": totals,
    }


def step_scalars(record: StepRecord, index: LayerIndex) -> Iterable[tuple[str, float]]:
    """Every (tag, value) pair a step produces; layers without a gradient are left out."""
    # tolist(): one conversion per array instead of a numpy scalar read per layer.
    has_grad = record.has_grad.tolist()
    grad_norm = record.grad_norm.tolist()
    weight_norm = record.weight_norm.tolist()
    ratio = record.update_ratio.tolist() if record.update_ratio is not None else None
    for layer, tag in enumerate(index.tags):
        if has_grad[layer]:
            yield f"grad_norm/{tag}", grad_norm[layer]
        if record.weight_norm_measured:  # not the carried value of an unread step
            yield f"weight_norm/{tag}", weight_norm[layer]
        if ratio is not None and has_grad[layer]:
            yield f"update_ratio/{tag}", ratio[layer]
    if record.activations:
        for stat, values in record.activations.items():
            for layer_name, value in zip(record.activation_layers or (), values):
                if value == value:  # NaN: the statistic does not apply to this module
                    yield f"act_{stat}/{tag_of(layer_name)}", float(value)
    yield "total/grad_norm", record.total_grad_norm
    if record.loss is not None:
        yield "total/loss", record.loss
    if record.clip_coef is not None:
        yield "total/clip_coef", record.clip_coef


def alert_markdown(alert: Alert) -> str:
    value = "" if alert.value is None else f" value `{alert.value:.4g}`"
    threshold = "" if alert.threshold is None else f", threshold `{alert.threshold:.4g}`"
    return (
        f"**{alert.severity.upper()}** `{alert.kind}` at step {alert.step} in "
        f"`{alert.where}`:{value}{threshold}\n\n{alert.message}\n\n*Try:* {alert.remedy}"
    )


_ALERT_MARKDOWN = re.compile(
    r"^\*\*(?P<severity>[A-Z]+)\*\* `(?P<kind>[^`]+)` at step (?P<step>\d+) in "
    r"`(?P<where>[^`]*)`:(?: value `(?P<value>[^`]+)`)?(?:, threshold `(?P<threshold>[^`]+)`)?"
    r"\n\n(?P<message>.*?)\n\n\*Try:\* (?P<remedy>.*)$",
    re.DOTALL,
)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_alert_markdown(text: str, step: int) -> dict[str, Any]:
    """Read back what :func:`alert_markdown` wrote (for ``gradwatch report``).

    Values come back rounded to the 4 significant digits they were written with.
    ``layer`` is the display form (``(model)`` for a whole-model alert). Text in
    another format is kept whole under ``text`` with the other fields None.
    """
    match = _ALERT_MARKDOWN.match(text)
    if match is None:
        return {
            "kind": None, "severity": None, "step": step, "layer": None, "message": text,
            "value": None, "threshold": None, "remedy": None, "text": text,
        }  # fmt: skip
    return {
        "kind": match["kind"],
        "severity": match["severity"].lower(),
        "step": int(match["step"]),
        "layer": match["where"],
        "message": match["message"],
        "value": _number(match["value"]),
        "threshold": _number(match["threshold"]),
        "remedy": match["remedy"],
        "text": text,
    }


def text_summary(tag: str, text: str) -> Any:
    """A text-plugin summary under exactly ``tag`` (``add_text`` would append a suffix)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


class SummaryTemplates:
    """Builds one step's scalar ``Summary`` by refilling a cached one with the same tags.

    Step after step the tags are the same, so instead of a new ``Summary.Value`` message
    per scalar (the bulk of the training thread's cost per step, growing with layers),
    the values are written into the cached message: about 5x less time at 100 layers.
    The writer copies the summary into its ``Event`` right away, so reuse is safe.
    """

    #: Distinct tag sets kept (layers gaining or losing gradients change the set).
    MAX_TEMPLATES = 8

    def __init__(self, summary_cls: Any) -> None:
        self._summary_cls = summary_cls
        self._templates: dict[tuple[str, ...], Any] = {}

    def pack(self, scalars: Iterable[tuple[str, float]]) -> Any:
        pairs = list(scalars)
        tags = tuple(tag for tag, _ in pairs)
        summary = self._templates.get(tags)
        if summary is None:
            if len(self._templates) >= self.MAX_TEMPLATES:
                self._templates.clear()
            value_cls = self._summary_cls.Value
            summary = self._summary_cls(value=[value_cls(tag=tag) for tag in tags])
            self._templates[tags] = summary
        for slot, (_, value) in zip(summary.value, pairs):
            slot.simple_value = value
        return summary


class TensorBoardSink:
    """Writes a gradwatch run into ``logdir`` as TensorBoard event files.

    With ``history`` and ``flow_image_every > 0`` it also draws the gradient-flow picture
    (:mod:`gradwatch._sinks.flowplot`) from the host history under the image tag
    ``gradient_flow``: at every step that is a multiple of ``flow_image_every`` and
    once more at ``close()`` if steps came since, so a short run still gets one. Drawing
    happens on the host, from numbers already there (no device sync), with numpy alone
    (no matplotlib, no Pillow) in a few milliseconds; the newest ``history`` steps are
    drawn.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        flush_secs: float = 30.0,
        history: History | None = None,
        flow_image_every: int = 0,
        events: Any | None = None,
    ) -> None:
        """``events``: where to write instead of a new event file under ``logdir``, any
        object with ``add_summary(summary, step)``, ``flush()`` and ``close()`` (the
        user's own SummaryWriter, :mod:`gradwatch._sinks.user_writer`); it gets the
        layout first, at step 0."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import summary as summaries

        from gradwatch._sinks.eventfile import EventFileWriter

        self._summary_cls = Summary
        self._templates = SummaryTemplates(Summary)
        self.logdir = os.fspath(logdir)
        # The layout is the file's header: written again first if the file must be
        # replaced (deleted mid-run, see EventFileWriter), so every file has its charts.
        layout = summaries.custom_scalars(custom_scalars_layout())
        if events is None:
            events = EventFileWriter(self.logdir, flush_secs=flush_secs, header=[layout])
        else:
            events.add_summary(layout, 0)
        self._file_writer: Any = events
        self._steps_written = 0
        self._history: History | None = history
        self._flow_every: int = flow_image_every if history is not None else 0
        self._index: LayerIndex | None = None
        self._next_image_step: int = self._flow_every
        self._last_image_step: int | None = None

    #: How often (in written steps) to check that the log directory still exists.
    CHECK_EVERY = 50

    def _check_logdir(self) -> None:
        """Raise if the log directory vanished: writes would go to an unlinked file."""
        if not os.path.isdir(self.logdir):
            raise FileNotFoundError(f"the log directory {self.logdir!r} was removed")

    def write_step(self, record: StepRecord, index: LayerIndex) -> None:
        self._steps_written += 1
        if self._steps_written % self.CHECK_EVERY == 0:
            self._check_logdir()
        # The writer copies the summary into its Event at once, so the template is reusable.
        summary = self._templates.pack(step_scalars(record, index))
        self._file_writer.add_summary(summary, record.step)
        self._index = index
        if self._flow_every and record.step >= self._next_image_step:
            # The first logged step at or past each multiple of flow_image_every (with
            # log_every > 1 the multiple itself may not be logged).
            self._next_image_step = (record.step // self._flow_every + 1) * self._flow_every
            self.write_flow_image()

    def write_flow_image(self) -> None:
        """Draw the gradient-flow heat map of the history so far, at the latest step.

        A failure to draw switches only the picture off (one warning in the log); the
        scalars and alerts keep flowing.
        """
        index = self._index
        if self._history is None or index is None or not len(self._history):
            return
        if not index.num_layers:
            return
        from gradwatch._sinks.flowplot import flow_from_history, flow_heatmap_rgb
        from gradwatch._sinks.png import encode_png

        records = list(self._history)
        step = records[-1].step
        self._last_image_step = step
        try:
            data = flow_from_history(records, index.tags)
            image, _ = flow_heatmap_rgb(data)
            png = encode_png(image)
        except Exception:
            logger.warning(
                "gradwatch: drawing the gradient-flow image failed; it is off for the rest "
                "of this run (scalars and alerts are unaffected).",
                exc_info=True,
            )
            self._flow_every = 0
            return
        picture = self._summary_cls.Image(
            height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=png
        )
        summary = self._summary_cls(
            value=[self._summary_cls.Value(tag=FLOW_IMAGE_TAG, image=picture)]
        )
        self._file_writer.add_summary(summary, step)

    def write_alert(self, alert: Alert) -> None:
        self._check_logdir()
        self._file_writer.add_summary(text_summary("alerts", alert_markdown(alert)), alert.step)
        # An alert is on disk as soon as it is raised, so a killed process keeps it.
        self._file_writer.flush()

    def flush(self) -> None:
        self._check_logdir()
        self._file_writer.flush()

    def close(self) -> None:
        try:
            latest = self._history.latest if self._history is not None else None
            if (
                self._flow_every
                and latest is not None
                and (self._last_image_step is None or latest.step > self._last_image_step)
            ):
                self.write_flow_image()
        finally:
            self._file_writer.close()
        self._check_logdir()  # after closing: say so if what was written went nowhere
