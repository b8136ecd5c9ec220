"""The gradient-flow picture: layers x steps heat map of log10 gradient norm, plus the
norms across depth at a few chosen steps.

One picture answers "where along the depth, and when, did the gradient vanish or
explode?": a vanishing stack shows as a dark band at the input side, an exploding one
as a bright band that grows with time. Two renderings:

* :func:`flow_figure` / :func:`save_flow_png`: the full picture with axes, layer names,
  a colour bar and the norms-across-depth panel, for ``gradwatch report --plot``.
  matplotlib is optional (the ``cli`` extra): it is imported here, lazily, and only its
  object-oriented API is used (``Figure`` + the Agg canvas), never ``pyplot``.
* :func:`flow_picture_rgb`: the heat map with layer names, step numbers and a colour bar,
  drawn with numpy (and a 5x7 pixel font, :mod:`.pixelfont`) in about 10 ms, for the
  TensorBoard image a training process writes every ``flow_image_every`` steps (on the
  event writer's thread, where the PNG's compression, twice that, runs without the
  GIL); :func:`flow_heatmap_rgb` is its bare heat map.
  A matplotlib figure costs about a second of the training thread's time (and holds the
  GIL, so a background thread would stall training just the same); this costs little
  and imports nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

#: At most this many layer names are written on the heat map's axis (deep models
#: would otherwise print an unreadable column of labels).
MAX_LAYER_LABELS = 24

#: The colour scale of every gradient-flow picture, in log10 of the gradient L2 norm:
#: 1e-8 (and below, and exact zeros) at the dark end, 1e2 (and above) at the bright end.
#: Fixed, not fitted to each run, so that pictures of two runs can be compared: a healthy
#: run's layers sit around 1e-3..1e0 (green), a vanishing stack's input side at 1e-6
#: and below (purple), an exploding run's at 1e2 and above (yellow).
LOG10_RANGE: tuple[float, float] = (-8.0, 2.0)


class MatplotlibMissing(ImportError):
    """matplotlib is not installed; the picture needs it (``pip install gradwatch[cli]``)."""


@dataclasses.dataclass(frozen=True)
class FlowData:
    """Per-layer series on a common step axis.

    Attributes:
        layers: layer names, input side first (as in ``model.named_modules()``).
        steps: the optimizer steps, increasing, one per column.
        grad_norm: ``[layers, steps]``; NaN where a layer had no gradient or the step
            was not logged for it.
        weight_norm: ``[layers, steps]`` like ``grad_norm``, or None.
    """

    layers: tuple[str, ...]
    steps: np.ndarray
    grad_norm: np.ndarray
    weight_norm: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.steps))
        if self.grad_norm.shape != shape:
            raise ValueError(f"grad_norm has shape {self.grad_norm.shape}, expected {shape}")
        if self.weight_norm is not None and self.weight_norm.shape != shape:
            raise ValueError(f"weight_norm has shape {self.weight_norm.shape}, expected {shape}")


def chosen_steps(num_steps: int) -> list[int]:
    """Column indices of the first, middle and last steps (fewer if there are fewer)."""
    if num_steps <= 0:
        return []
    return sorted({0, (num_steps - 1) // 2, num_steps - 1})


def layer_label(depth: int, name: str, count: int) -> str:
    """How a picture names a layer: its zero-padded depth and its name (``03 fc1``), the
    same on every axis and as in the TensorBoard tags."""
    from gradwatch._names import depth_width, display_name

    return f"{depth:0{depth_width(count)}d} {display_name(name)}"


def _log10(values: np.ndarray) -> np.ndarray:
    """log10 of norms; zeros become -inf (shown at the bottom of the colour scale),
    NaN stays NaN (shown as "no gradient")."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.where(np.isfinite(values), values, np.nan))


def _import_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MatplotlibMissing(
            "the gradient-flow picture needs matplotlib: pip install 'gradwatch[cli]' "
            "(or pip install matplotlib)"
        ) from error
    return Figure, FigureCanvasAgg, matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")


def flow_figure(data: FlowData, *, title: str = "gradient flow", dpi: int = 100) -> Any:
    """Build the picture as a matplotlib ``Figure`` on an Agg canvas (no pyplot).

    Left: the heat map (layers x steps, colour on the fixed :data:`LOG10_RANGE`). Right:
    the norms of each layer at the first, middle and last step, on the same layer axis
    (one row per layer, labelled once, as in the heat map), with the legend below it.
    """
    figure_cls, canvas_cls, cmap = _import_matplotlib()
    num_layers, num_steps = data.grad_norm.shape
    height = min(12.0, max(3.6, 0.2 * num_layers + 2.2))
    figure = figure_cls(figsize=(12.0, height), dpi=dpi, layout="constrained")
    canvas_cls(figure)
    heat_ax, depth_ax = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    low, high = LOG10_RANGE
    logs = _log10(data.grad_norm)
    shown = np.where(np.isneginf(logs), low, logs)
    masked = np.ma.masked_invalid(shown)
    image = heat_ax.imshow(
        masked, aspect="auto", interpolation="nearest", cmap=cmap, vmin=low, vmax=high
    )
    colorbar = figure.colorbar(
        image, ax=heat_ax, location="bottom", fraction=0.05, pad=0.02, extend="both"
    )
    colorbar.set_label("log10 gradient L2 norm (fixed scale)")
    heat_ax.set_title(f"{title}: gradient norm per layer (grey: no gradient / non-finite)")
    heat_ax.set_xlabel("optimizer step")
    label_every = max(1, int(np.ceil(num_layers / MAX_LAYER_LABELS)))
    rows = list(range(0, num_layers, label_every))
    labels = [layer_label(i, data.layers[i], num_layers) for i in rows]
    heat_ax.set_yticks(rows, labels, fontsize=7)
    columns = np.unique(np.linspace(0, max(num_steps - 1, 0), num=min(num_steps, 8)).astype(int))
    heat_ax.set_xticks(columns, [str(int(data.steps[c])) for c in columns])

    depth = np.arange(num_layers)
    for column in chosen_steps(num_steps):
        step = int(data.steps[column])
        line = depth_ax.plot(
            data.grad_norm[:, column], depth, marker="o", ms=3, label=f"gradient, step {step}"
        )
        if data.weight_norm is not None and np.isfinite(data.weight_norm[:, column]).any():
            depth_ax.plot(
                data.weight_norm[:, column],
                depth,
                linestyle="--",
                color=line[0].get_color(),
                alpha=0.6,
                label=f"weight, step {step}",
            )
    positive = data.grad_norm[np.isfinite(data.grad_norm) & (data.grad_norm > 0)]
    if positive.size:
        depth_ax.set_xscale("log")
    # No x label: the legend goes right under the tick labels.
    depth_ax.set_title("L2 norms per layer at the first, middle and last step", fontsize=10)
    # The same layer axis and names as the heat map, written again at the right edge.
    depth_ax.yaxis.set_tick_params(labelleft=False, labelright=True, labelsize=7)
    depth_ax.grid(True, which="major", alpha=0.3)
    if num_steps:
        # Below the axes, never over the lines.
        depth_ax.legend(
            fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False
        )
    heat_ax.set_ylim(num_layers - 0.5, -0.5)  # input side at the top, in both panels
    return figure


def save_flow_png(
    data: FlowData, path: str | os.PathLike[str], *, title: str = "gradient flow"
) -> None:
    """Write the picture to ``path`` as a PNG."""
    figure = flow_figure(data, title=title, dpi=110)
    figure.savefig(os.fspath(path), format="png")


#: Ten evenly spaced colours of matplotlib's "viridis" map, low to high; the heat map
#: interpolates between them (dark purple = smallest gradient, yellow = largest).
VIRIDIS_ANCHORS = np.array(
    [
        (68, 1, 84),
        (72, 36, 117),
        (65, 68, 135),
        (53, 95, 141),
        (42, 120, 142),
        (33, 145, 140),
        (34, 168, 132),
        (68, 191, 112),
        (122, 209, 81),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
#: Cells with no gradient (frozen, unused this step) or a non-finite norm.
NO_GRADIENT_RGB = (211, 211, 211)
#: Width in pixels of the colour scale drawn at the right edge (smallest at the bottom).
SCALE_WIDTH = 12


def colour_map(fraction: np.ndarray) -> np.ndarray:
    """Viridis colours (uint8 RGB, shape ``fraction.shape + (3,)``) for values in [0, 1].

    NaN takes the lowest colour; callers paint such cells themselves."""
    positions = np.linspace(0.0, 1.0, len(VIRIDIS_ANCHORS))
    clipped = np.clip(np.nan_to_num(fraction, nan=0.0), 0.0, 1.0)
    channels = [np.interp(clipped, positions, VIRIDIS_ANCHORS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def flow_heatmap_rgb(
    data: FlowData,
    *,
    width: int = 512,
    height: int = 256,
    log_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The heat map as ``[H, W, 3]`` uint8 with numpy alone, and its log10 norm range.

    Rows are layers (input side at the top), columns optimizer steps (oldest at the
    left); colour is log10 of the gradient norm scaled between ``log_range`` (default:
    the smallest and largest finite value shown; returned), an exact zero takes the
    lowest colour, grey marks no gradient. Each cell is an integer number of pixels, about
    ``width`` x ``height`` in all (at least one pixel per layer and step); a colour scale
    runs up the right edge.
    """
    logs = _log10(data.grad_norm)
    finite = logs[np.isfinite(logs)]
    if log_range is not None:
        low, high = log_range
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low if high - low > 1e-9 else 1.0
    shown = np.where(np.isneginf(logs), low, logs)
    cells = colour_map((shown - low) / span)
    cells[~np.isfinite(shown)] = NO_GRADIENT_RGB
    num_layers, num_steps = logs.shape
    cell_h = max(1, height // max(num_layers, 1))
    cell_w = max(1, (width - SCALE_WIDTH) // max(num_steps, 1))
    heat = np.repeat(np.repeat(cells, cell_h, axis=0), cell_w, axis=1)
    rows = heat.shape[0]
    scale = colour_map(np.linspace(1.0, 0.0, rows))[:, None, :]  # largest at the top
    gap = np.full((rows, 2, 3), 255, dtype=np.uint8)
    image = np.concatenate([heat, gap, np.repeat(scale, SCALE_WIDTH - 2, axis=1)], axis=1)
    return np.ascontiguousarray(image), (low, low + span)


#: Geometry of :func:`flow_picture_rgb`, in pixels: the font scale (5x7 glyphs drawn
#: 2x), the heat map's largest size, the tallest row (unless the heat map would be lower
#: than its smallest height), and the widest layer label.
FONT_SCALE = 2
HEAT_WIDTH = 640
HEAT_HEIGHT = 600
MAX_ROW_HEIGHT = 18
MIN_HEAT_HEIGHT = 220
LABEL_WIDTH = 300
INK = (40, 40, 40)
BAR_WIDTH = 18


def _paint_text(canvas: np.ndarray, text: str, x: int, y: int, *, align: str = "left") -> None:
    """Write ``text`` with its top at ``y``; ``x`` is its left, right or centre edge."""
    from gradwatch._sinks import pixelfont

    mask = pixelfont.render(text, FONT_SCALE)
    height, width = mask.shape
    if align == "right":
        x -= width
    elif align == "center":
        x -= width // 2
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + height, canvas.shape[0]), min(x + width, canvas.shape[1])
    if bottom <= top or right <= left:
        return
    region = mask[top - y : bottom - y, left - x : right - x]
    canvas[top:bottom, left:right][region] = INK


def _sample(count: int, most: int) -> np.ndarray:
    """At most ``most`` indices out of ``count``, evenly spread, first and last kept."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, num=most).round().astype(int))


def flow_picture_rgb(
    data: FlowData, *, title: str = "gradient flow", log_range: tuple[float, float] = LOG10_RANGE
) -> np.ndarray:
    """The TensorBoard gradient-flow image: ``[H, W, 3]`` uint8, numpy alone.

    The heat map of :func:`flow_heatmap_rgb` on the fixed ``log_range`` (so pictures of
    different runs and steps compare), with the layers named on the left (``03 fc1``, as
    in :func:`layer_label`; every k-th one when rows are too thin to hold them all), step
    numbers below, and a colour bar with its log10 values on the right. Deep models and
    long histories are shown at most :data:`HEAT_HEIGHT` x :data:`HEAT_WIDTH` pixels (rows
    and columns sampled evenly beyond that).
    """
    from gradwatch._sinks import pixelfont

    num_layers, num_steps = data.grad_norm.shape
    rows = _sample(num_layers, HEAT_HEIGHT)
    columns = _sample(num_steps, HEAT_WIDTH)
    sampled = FlowData(
        tuple(data.layers[i] for i in rows), data.steps[columns], data.grad_norm[rows][:, columns]
    )
    row_h = int(np.clip(HEAT_HEIGHT // max(len(rows), 1), 1, MAX_ROW_HEIGHT))
    # A few layers get taller rows, so that the colour bar has room for its values.
    row_h = max(row_h, -(-MIN_HEAT_HEIGHT // max(len(rows), 1)))
    cell_w = max(1, HEAT_WIDTH // max(len(columns), 1))
    heat, _ = flow_heatmap_rgb(
        sampled, width=cell_w * len(columns) + SCALE_WIDTH, height=row_h * len(rows),
        log_range=log_range,
    )  # fmt: skip
    heat = heat[:, : cell_w * len(columns)]  # its own thin scale is replaced by the bar
    heat_h, heat_w = heat.shape[:2]

    text_h = pixelfont.GLYPH_H * FONT_SCALE
    # Layer names ("03 fc1"): every k-th row so that labels never overlap; a long name
    # keeps its end (the layer's own name), the depth always shows.
    every = max(1, int(np.ceil((text_h + 2) / row_h)))
    labels: list[tuple[int, str]] = []
    for position in range(0, len(rows), every):
        depth = int(rows[position])
        index, _, name = layer_label(depth, data.layers[depth], num_layers).partition(" ")
        room = LABEL_WIDTH - pixelfont.text_width(index + " ", FONT_SCALE)
        labels.append((position, f"{index} {pixelfont.fit(name, room, FONT_SCALE)}"))
    label_w = max((pixelfont.text_width(label, FONT_SCALE) for _, label in labels), default=0)

    top = 2 * text_h + 8  # title line and a gap
    left = label_w + 14
    bar_left = left + heat_w + 14
    width = bar_left + BAR_WIDTH + 6 + pixelfont.text_width("1e-10", FONT_SCALE) + 8
    height = top + heat_h + 2 * text_h + 16
    canvas = np.full((height, max(width, 480), 3), 255, dtype=np.uint8)
    canvas[top : top + heat_h, left : left + heat_w] = heat

    low, high = log_range
    caption = f"{title}: gradient L2 norm per layer (grey: no gradient)"
    _paint_text(canvas, pixelfont.fit(caption, canvas.shape[1] - 8, FONT_SCALE), 4, 4)
    for position, label in labels:
        y = top + position * row_h + (row_h - text_h) // 2
        _paint_text(canvas, label, left - 6, y, align="right")

    # Steps: up to six ticks under the heat map.
    tick_y = top + heat_h
    for position in _sample(len(columns), 6):
        x = left + int(position) * cell_w + cell_w // 2
        canvas[tick_y : tick_y + 4, max(x - 1, 0) : x + 1] = INK
        _paint_text(canvas, str(int(sampled.steps[position])), x, tick_y + 6, align="center")
    _paint_text(canvas, "optimizer step", left + heat_w // 2, tick_y + text_h + 10,
                align="center")  # fmt: skip

    # Colour bar: the largest value at the top; a label every decade that fits.
    bar = colour_map(np.linspace(1.0, 0.0, heat_h))[:, None, :]
    canvas[top : top + heat_h, bar_left : bar_left + BAR_WIDTH] = bar
    decades = np.arange(np.ceil(low), np.floor(high) + 1)
    step = max(1, int(np.ceil(len(decades) * (text_h + 4) / max(heat_h, 1))))
    for value in decades[::-1][::step]:
        y = top + round(float((high - value) / (high - low) * (heat_h - 1)))
        canvas[y, bar_left + BAR_WIDTH : bar_left + BAR_WIDTH + 4] = INK
        text_y = int(np.clip(y - text_h // 2, top - text_h // 2, top + heat_h - text_h // 2))
        _paint_text(canvas, f"1e{int(value)}", bar_left + BAR_WIDTH + 6, text_y)
    return canvas


def flow_from_history(records: Sequence[Any], layers: Sequence[str]) -> FlowData:
    """FlowData from host :class:`~gradwatch._history.StepRecord` objects (oldest first)."""
    if not records:
        empty = np.zeros((len(layers), 0))
        return FlowData(tuple(layers), np.zeros(0, dtype=np.int64), empty, empty.copy())
    grad = np.stack([np.asarray(r.grad_norm, dtype=np.float64) for r in records], axis=1)
    # A weight norm carried over from an earlier step is not a measurement: NaN, as in
    # the event files (gradwatch report draws the same picture from them).
    weight = np.stack(
        [
            np.asarray(r.weight_norm, dtype=np.float64)
            if getattr(r, "weight_norm_measured", True)
            else np.full(len(layers), np.nan)
            for r in records
        ],
        axis=1,
    )
    steps = np.array([r.step for r in records], dtype=np.int64)
    return FlowData(tuple(layers), steps, grad, weight)
