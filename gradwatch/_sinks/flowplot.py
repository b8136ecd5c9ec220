"""The gradient-flow picture: layers x steps heat map of log10 gradient norm, plus the
norms across depth at a few chosen steps.

One picture answers "where along the depth, and when, did the gradient vanish or
explode?": a vanishing stack shows as a dark band at the input side, an exploding one
as a bright band that grows with time. Two renderings:

* :func:`flow_figure` / :func:`save_flow_png`: the full picture with axes, layer names,
  a colour bar and the norms-across-depth panel, for ``gradwatch report --plot``.
  matplotlib is optional (the ``cli`` extra): it is imported here, lazily, and only its
  object-oriented API is used (``Figure`` + the Agg canvas), never ``pyplot``.
* :func:`flow_heatmap_rgb`: the heat map alone, drawn with numpy in a few milliseconds,
  for the TensorBoard image a training process writes every ``flow_image_every`` steps.
  A matplotlib figure costs about a second of the training thread's time (and holds the
  GIL, so a background thread would stall training just the same); this costs nothing
  measurable and imports nothing.
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
    """Build the picture as a matplotlib ``Figure`` on an Agg canvas (no pyplot)."""
    figure_cls, canvas_cls, cmap = _import_matplotlib()
    num_layers, num_steps = data.grad_norm.shape
    height = min(9.0, max(3.2, 0.22 * num_layers + 1.6))
    figure = figure_cls(figsize=(11.0, height), dpi=dpi, layout="constrained")
    canvas_cls(figure)
    heat_ax, depth_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    logs = _log10(data.grad_norm)
    finite = logs[np.isfinite(logs)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    shown = np.where(np.isneginf(logs), vmin, logs)
    masked = np.ma.masked_invalid(shown)
    image = heat_ax.imshow(
        masked, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax
    )
    figure.colorbar(image, ax=heat_ax, label="log10 gradient L2 norm", fraction=0.05)
    heat_ax.set_title(f"{title}: log10 gradient norm (grey: no gradient / non-finite)")
    heat_ax.set_xlabel("optimizer step")
    heat_ax.set_ylabel("layer (input side at top)")
    label_every = max(1, int(np.ceil(num_layers / MAX_LAYER_LABELS)))
    rows = list(range(0, num_layers, label_every))
    heat_ax.set_yticks(rows, [data.layers[i] or "(root)" for i in rows], fontsize=7)
    columns = np.unique(np.linspace(0, max(num_steps - 1, 0), num=min(num_steps, 8)).astype(int))
    heat_ax.set_xticks(columns, [str(int(data.steps[c])) for c in columns])

    depth = np.arange(num_layers)
    for column in chosen_steps(num_steps):
        step = int(data.steps[column])
        line = depth_ax.plot(
            depth, data.grad_norm[:, column], marker="o", ms=3, label=f"grad, step {step}"
        )
        if data.weight_norm is not None:
            depth_ax.plot(
                depth,
                data.weight_norm[:, column],
                linestyle="--",
                color=line[0].get_color(),
                alpha=0.6,
                label=f"weight, step {step}",
            )
    positive = data.grad_norm[np.isfinite(data.grad_norm) & (data.grad_norm > 0)]
    if positive.size:
        depth_ax.set_yscale("log")
    depth_ax.set_title("norms across depth (first, middle, last step)", fontsize=10)
    depth_ax.set_xlabel("layer depth (0 = input side)")
    depth_ax.set_ylabel("L2 norm")
    depth_ax.grid(True, which="major", alpha=0.3)
    if num_steps:
        depth_ax.legend(fontsize=7)
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
    data: FlowData, *, width: int = 512, height: int = 256
) -> tuple[np.ndarray, tuple[float, float]]:
    """The heat map as ``[H, W, 3]`` uint8 with numpy alone, and its log10 norm range.

    Rows are layers (input side at the top), columns optimizer steps (oldest at the
    left); colour is log10 of the gradient norm scaled between the smallest and largest
    finite value shown (returned, so the caller can print it), an exact zero takes the
    lowest colour, grey marks no gradient. Each cell is an integer number of pixels, about
    ``width`` x ``height`` in all (at least one pixel per layer and step); a colour scale
    runs up the right edge.
    """
    logs = _log10(data.grad_norm)
    finite = logs[np.isfinite(logs)]
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
