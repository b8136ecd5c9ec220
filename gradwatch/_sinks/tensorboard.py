"""TensorBoard sink: scalars laid out so the first screen is the gradient flow, alerts
as text, the gradient-flow picture as an image.

Statistics have canonical names (``grad_norm/<layer>``, ``total/loss``); the tags in the
event files are spelled by :func:`gradwatch._names.tensorboard_tag` (``2_grad_norm/03-fc1``),
the one owner of both spellings, so that TensorBoard, which lists tag groups and tags by
name, shows the totals and the gradient norms first and layers in depth order. They are
public (dashboards and ``gradwatch report`` read them); ``gradwatch report`` also reads
the spelling of earlier versions.

What is written is what can say something: a per-layer statistic only where it applies,
``act_nonfinite`` only when it is not zero, and the Custom Scalars layout holds a chart
only once a statistic for it has been written (the clip coefficient only with clipping,
the activation charts only when activations are sampled): :class:`LayoutTracker`.

Scalars of one step go out as one ``Summary`` event holding every tag, instead of one
event per tag: one protobuf and one queue put per step keeps the training thread's cost
flat as layers grow. Summaries are built with ``torch.utils.tensorboard.summary`` and
framed as TensorBoard's ``RecordWriter`` frames them (:mod:`.records`, with a CRC computed
in C); :mod:`.eventfile` does the disk work on its own thread and reports its failures
back instead of dying with a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwatch._alerts import Alert
from gradwatch._history import History
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord
from gradwatch._names import tag_of, tensorboard_tag

if TYPE_CHECKING:
    from gradwatch._sinks.flowplot import FlowData

logger = logging.getLogger(__name__)

#: Image tag of the gradient-flow picture (layers x steps heat map + depth profile).
FLOW_IMAGE_TAG = "gradient_flow"

#: Per-layer statistics: the Custom Scalars chart each one gets, by canonical prefix.
#: The log10 views come first: on one axis, a layer at 1e-4 beside one at 0.2 shows.
GRADIENT_FLOW_CHARTS: dict[str, str] = {
    "log10/grad_norm": "log10 gradient L2 norm per layer (input side first)",
    "log10/update_ratio": "log10 update ratio ||dw||/||w|| per layer",
}
TOTAL_CHARTS: dict[str, str] = {
    "total/loss": "loss",
    "total/grad_norm": "total gradient norm (before clipping)",
    "total/clip_coef": "clip coefficient (1 = not clipped)",
}
LAYER_CHARTS: dict[str, str] = {
    "grad_norm": "gradient L2 norm per layer",
    "update_ratio": "update ratio ||dw||/||w|| per layer",
    "weight_norm": "weight L2 norm per layer",
}
#: Activation statistics (``act_<name>/<layer>``, sampled steps only).
ACTIVATION_CHARTS: dict[str, str] = {
    "act_std": "activation std per layer",
    "act_batch_std": "activation std across the batch per layer",
    "act_mean": "activation mean per layer",
    "act_saturated": "saturated fraction per layer",
    "act_dead": "dead-unit fraction per layer",
    "act_nonfinite": "non-finite fraction per layer",
}
#: Charts in the layout from the start (a statistic every run writes).
ALWAYS_CHARTS: frozenset[str] = frozenset({"log10/grad_norm", "total/grad_norm", "weight_norm"})
#: Category titles start with this (``gradwatch report`` recognises gradwatch's layout by it).
CATEGORY_PREFIX = "gradwatch: "


def chart_key(canonical: str) -> str:
    """Which chart a statistic goes in: ``total/loss``, ``log10/grad_norm``, ``act_std``."""
    stat, _, rest = canonical.partition("/")
    if stat == "total":
        return canonical
    if stat == "log10":
        return f"log10/{rest.partition('/')[0]}"
    return stat


def _group_regex(key: str) -> str:
    """The regex of a per-layer chart: its statistic's tag group, in either spelling
    (``^(?:2_grad_norm|grad_norm)/``): gradwatch's own event files carry the TensorBoard
    tags, a trainer's loggers (Lightning's TensorBoardLogger) the canonical names."""
    group = tensorboard_tag(f"{key}/x", 0, 1).rpartition("/")[0]
    return f"^(?:{re.escape(group)}|{re.escape(key)})/"


def _total_regex(key: str) -> str:
    """The regex of a totals chart, in either spelling (``^(?:1_total/loss|total/loss)$``)."""
    return f"^(?:{re.escape(tensorboard_tag(key))}|{re.escape(key)})$"


def custom_scalars_layout(
    present: Iterable[str] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """Multi-line charts holding every layer, one per statistic in ``present`` (chart keys,
    see :func:`chart_key`; None: every chart, for a writer that cannot tell which
    statistics will come, such as a trainer's logger); categories in reading order.

    Custom Scalars charts every run that matches; pick runs on the left to compare them.
    """
    every = (GRADIENT_FLOW_CHARTS, TOTAL_CHARTS, LAYER_CHARTS, ACTIVATION_CHARTS)
    shown = set(present) if present is not None else {key for d in every for key in d}

    def charts(titles: dict[str, str], regex: Any) -> dict[str, list[Any]]:
        return {title: ["Multiline", [regex(key)]] for key, title in titles.items() if key in shown}

    layout = {
        f"{CATEGORY_PREFIX}gradient flow (log10, all layers)": charts(
            GRADIENT_FLOW_CHARTS, _group_regex
        ),
        f"{CATEGORY_PREFIX}totals": charts(TOTAL_CHARTS, _total_regex),
        f"{CATEGORY_PREFIX}layers (linear scale)": charts(LAYER_CHARTS, _group_regex),
        f"{CATEGORY_PREFIX}activations (sampled steps)": charts(ACTIVATION_CHARTS, _group_regex),
    }
    return {title: content for title, content in layout.items() if content}


#: Categories that start closed (activation internals come after the gradient flow).
CLOSED_CATEGORIES: frozenset[str] = frozenset(
    {f"{CATEGORY_PREFIX}layers (linear scale)", f"{CATEGORY_PREFIX}activations (sampled steps)"}
)


def layout_summary(present: Iterable[str] | None = ALWAYS_CHARTS) -> Any:
    """The custom-scalars ``Summary`` of :func:`custom_scalars_layout`."""
    from torch.utils.tensorboard import summary as summaries

    summary = summaries.custom_scalars(custom_scalars_layout(present))
    # torch's helper has no "closed" flag: set it on the layout proto it serialised.
    from tensorboard.plugins.custom_scalar import layout_pb2

    value = summary.value[0]
    layout = layout_pb2.Layout.FromString(value.tensor.string_val[0])
    for category in layout.category:
        category.closed = category.title in CLOSED_CATEGORIES
    del value.tensor.string_val[:]
    value.tensor.string_val.append(layout.SerializeToString())
    return summary


def step_scalars(record: StepRecord, index: LayerIndex) -> Iterable[tuple[str, float]]:
    """Every (canonical name, value) pair a step produces.

    Left out: layers without a gradient, weight norms on steps that did not measure
    them, activation statistics that do not apply to a module (NaN), a zero
    ``act_nonfinite`` (the reader restores it), and log10 views of norms that are zero
    or not finite (the plain value is there).
    """
    # tolist(): one conversion per array instead of a numpy scalar read per layer.
    has_grad = record.has_grad.tolist()
    names = _layer_names(index.tags)
    ratio = record.update_ratio
    for stat, values, when in (
        ("grad_norm", record.grad_norm, has_grad),
        ("weight_norm", record.weight_norm if record.weight_norm_measured else None, None),
        ("update_ratio", ratio, has_grad),
    ):
        if values is None:  # weights not read this step (not carried values), no ratio
            continue
        plain = values.tolist()
        for layer, name in enumerate(names[stat]):
            if when is None or when[layer]:
                yield name, plain[layer]
    for stat, values in (("grad_norm", record.grad_norm), ("update_ratio", ratio)):
        if values is None:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(values.astype(np.float64))
        shown = (np.isfinite(logs) & record.has_grad).tolist()
        log_values = logs.tolist()
        for layer, name in enumerate(names[f"log10/{stat}"]):
            if shown[layer]:  # zero or non-finite norms have no log10 view
                yield name, log_values[layer]
    if record.activations:
        for stat, values in record.activations.items():
            sparse = stat == "nonfinite"  # almost always 0: written when it is not
            for layer_name, value in zip(record.activation_layers or (), values):
                if value == value and not (sparse and value == 0.0):  # NaN: does not apply
                    yield f"act_{stat}/{tag_of(layer_name)}", float(value)
    yield "total/grad_norm", record.total_grad_norm
    if record.loss is not None:
        yield "total/loss", record.loss
    if record.clip_coef is not None:
        yield "total/clip_coef", record.clip_coef


@functools.lru_cache(maxsize=8)
def _layer_names(tags: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Every per-layer statistic's canonical names, built once per set of layers rather
    than formatted again at every step."""
    stats = ("grad_norm", "weight_norm", "update_ratio", "log10/grad_norm", "log10/update_ratio")
    return {stat: tuple(f"{stat}/{tag}" for tag in tags) for stat in stats}


class TagSpeller:
    """Spells canonical names as TensorBoard tags, with each layer's depth index.

    Layers are numbered in :class:`LayerIndex` order (input side first); activation
    modules in the order they were first measured. Built once per index: a tag is
    spelled once per distinct set of tags (see :class:`SummaryTemplates`), not per step.
    """

    def __init__(self, index: LayerIndex, *, ordered: bool = True) -> None:
        self.index = index
        #: False: write the canonical names themselves (``tensorboard_tags="stable"``).
        self.ordered = ordered
        self._layers = {tag: depth for depth, tag in enumerate(index.tags)}
        self._modules: dict[str, int] = {}

    def add_modules(self, names: Iterable[str]) -> bool:
        """Number activation modules not seen before; True if any was new."""
        before = len(self._modules)
        for name in names:
            self._modules.setdefault(tag_of(name), len(self._modules))
        return len(self._modules) != before

    def __call__(self, canonical: str) -> str:
        if not self.ordered:
            return canonical
        stat, _, rest = canonical.partition("/")
        if stat == "total":
            return tensorboard_tag(canonical)
        layer = rest.partition("/")[2] if stat == "log10" else rest
        if stat.startswith("act_"):
            depth = self._modules.get(layer)
            count = max(len(self._modules), 1)
        else:
            depth = self._layers.get(layer)
            count = max(len(self._layers), 1)
        return tensorboard_tag(canonical, depth, count)


#: Text tag of the diagnoses (the causes): "0_" sorts it before "alerts", their evidence.
DIAGNOSIS_TAG = "0_diagnosis"


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

    def __init__(self, summary_cls: Any, spell: Callable[[str], str] | None = None) -> None:
        """``spell`` turns a name into the tag written (once per template)."""
        self._summary_cls = summary_cls
        self._templates: dict[tuple[str, ...], Any] = {}
        self.spell: Callable[[str], str] = spell or (lambda name: name)

    def clear(self) -> None:
        """Forget every template (the spelling changed)."""
        self._templates.clear()

    def pack(self, scalars: Iterable[tuple[str, float]]) -> Any:
        pairs = list(scalars)
        tags = tuple(tag for tag, _ in pairs)
        summary = self._templates.get(tags)
        if summary is None:
            if len(self._templates) >= self.MAX_TEMPLATES:
                self._templates.clear()
            value_cls = self._summary_cls.Value
            summary = self._summary_cls(value=[value_cls(tag=self.spell(tag)) for tag in tags])
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
    (no matplotlib, no Pillow), on the event writer's thread (see
    :meth:`write_flow_image`); the newest ``history`` steps are drawn.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        flush_secs: float = 30.0,
        history: History | None = None,
        flow_image_every: int = 0,
        events: Any | None = None,
        ordered_tags: bool = False,
    ) -> None:
        """``events``: where to write instead of a new event file under ``logdir``, any
        object with ``add_summary(summary, step)``, ``flush()`` and ``close()`` (the
        user's own SummaryWriter, :mod:`gradwatch._sinks.user_writer`); it gets the
        layout first, at step 0.

        ``ordered_tags``: spell tags for the first screen (``2_grad_norm/03-fc1``,
        ``tensorboard_tags="ordered"``) instead of the stable canonical names
        (``grad_norm/fc1``, the default)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        from gradwatch._sinks.eventfile import EventFileWriter

        self._summary_cls = Summary
        self._templates = SummaryTemplates(Summary)
        self.logdir = os.fspath(logdir)
        # The layout is the file's header: written again first if the file must be
        # replaced (deleted mid-run, see EventFileWriter), so every file has its charts.
        self._charts = set(ALWAYS_CHARTS)
        self._speller: TagSpeller | None = None
        self._ordered_tags = ordered_tags
        self._last_summary: Any = None
        layout = layout_summary(self._charts)
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
        speller = self._speller
        if speller is None or speller.index is not index:
            speller = self._speller = TagSpeller(index, ordered=self._ordered_tags)
            self._templates.spell = speller
            self._templates.clear()
        if record.activation_layers and speller.add_modules(record.activation_layers):
            self._templates.clear()  # module numbers are part of the tags
        pairs = list(step_scalars(record, index))
        # The writer copies the summary into its Event at once, so the template is reusable.
        summary = self._templates.pack(pairs)
        if summary is not self._last_summary:  # a new set of tags: perhaps a new chart
            self._last_summary = summary
            self._add_charts(pairs, record.step)
        self._file_writer.add_summary(summary, record.step)
        self._index = index
        # Read once: the writer thread sets it to 0 when a picture fails to draw.
        every = self._flow_every
        if every and record.step >= self._next_image_step:
            # The first logged step at or past each multiple of flow_image_every (with
            # log_every > 1 the multiple itself may not be logged).
            self._next_image_step = (record.step // every + 1) * every
            self.write_flow_image()

    def _add_charts(self, pairs: Iterable[tuple[str, float]], step: int) -> None:
        """Write the layout again when a statistic without a chart appears (clipping,
        sampled activations, a first non-finite activation). TensorBoard shows the
        newest layout; ``gradwatch report`` tells it from a new run's by its step (a
        run's first layout is at step 0, before any statistic)."""
        charts = {chart_key(name) for name, _ in pairs} - self._charts
        if not charts:
            return
        self._charts |= charts
        self._file_writer.add_summary(layout_summary(self._charts), max(step, 1))

    def write_flow_image(self) -> None:
        """Draw the gradient-flow heat map of the history so far, at the latest step.

        The training thread only gathers the picture's numbers (a fraction of a
        millisecond); drawing it and compressing the PNG (tens of milliseconds) happen on
        the event writer's thread when the sink writes its own event file, and here when
        it writes into a user's SummaryWriter. A failure to draw switches only the
        picture off (one warning in the log); the scalars and alerts keep flowing.
        """
        index = self._index
        if self._history is None or index is None or not len(self._history):
            return
        if not index.num_layers:
            return
        from gradwatch._sinks.flowplot import flow_from_history

        records = list(self._history)
        step = records[-1].step
        self._last_image_step = step
        try:
            data = flow_from_history(records, index.tags)
        except Exception:
            self._picture_failed()
            return
        later = getattr(self._file_writer, "add_summary_later", None)
        if later is not None:
            later(lambda: self._flow_image_summary(data, step), step)
            return
        summary = self._flow_image_summary(data, step)
        if summary is not None:
            self._file_writer.add_summary(summary, step)

    def _flow_image_summary(self, data: FlowData, step: int) -> Any:
        """The picture of ``data`` as an image ``Summary``; None (and the picture off
        for the rest of the run) if drawing it failed. Runs on the event writer's thread
        (on the caller's with a user's SummaryWriter)."""
        from gradwatch._sinks.flowplot import flow_picture_rgb
        from gradwatch._sinks.png import encode_png

        if not self._flow_every:  # an earlier picture, queued before, failed: off
            return None
        try:
            image = flow_picture_rgb(data, title=f"gradient flow at step {step}")
            png = encode_png(image)
            picture = self._summary_cls.Image(
                height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=png
            )
            value = self._summary_cls.Value(tag=FLOW_IMAGE_TAG, image=picture)
        except Exception:
            self._picture_failed()
            return None
        return self._summary_cls(value=[value])

    def _picture_failed(self) -> None:
        """Switch the picture off for the rest of the run, saying why once (called in
        an ``except`` block: the traceback is logged)."""
        logger.warning(
            "gradwatch: drawing the gradient-flow image failed; it is off for the rest "
            "of this run (scalars and alerts are unaffected).",
            exc_info=True,
        )
        self._flow_every = 0

    def write_alert(self, alert: Alert) -> None:
        self._check_logdir()
        self._file_writer.add_summary(text_summary("alerts", alert_markdown(alert)), alert.step)
        # An alert is on disk as soon as it is raised, so a killed process keeps it.
        self._file_writer.flush()

    def write_diagnosis(self, step: int, markdown: str) -> None:
        """The causes so far under the ``0_diagnosis`` text tag, first in the Text tab
        (tags sort by name), written again at each step where they change."""
        self._check_logdir()
        self._file_writer.add_summary(text_summary(DIAGNOSIS_TAG, markdown), step)
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
