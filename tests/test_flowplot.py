"""The gradient-flow picture: drawn from real runs, in TensorBoard and as a PNG."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._sinks.flowplot import (
    NO_GRADIENT_RGB,
    FlowData,
    chosen_steps,
    flow_figure,
    flow_from_history,
    flow_heatmap_rgb,
)
from gradwatch._sinks.png import encode_png

from .helpers import make_mlp, regression_batches, train_steps

pytest.importorskip("matplotlib")


def _train(logdir, steps: int, **options) -> gradwatch.Watcher:
    model = make_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, logdir=logdir, **options) as gw:
        train_steps(model, optimizer, regression_batches(steps))  # no loss: not needed here
    return gw


def _images(logdir) -> list:
    """The ``gradient_flow`` images TensorBoard's own reader finds in ``logdir``."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    if "gradient_flow" not in accumulator.Tags()["images"]:
        return []
    return accumulator.Images("gradient_flow")


@pytest.mark.parametrize(
    ("steps", "options", "expected"),
    [
        (7, {"flow_image_every": 3}, [3, 6]),  # 6 is also the last step: no extra at close
        (8, {"flow_image_every": 3}, [3, 6, 7]),  # one more at close for the steps since
        (5, {}, [4]),  # default every 100 steps: a short run still gets one at close
        (9, {"flow_image_every": 4, "log_every": 3}, [6, 8]),  # first logged step past 4, 8
        (5, {"flow_image_every": 0}, []),
    ],
)
def test_flow_image_steps(tmp_path, steps: int, options: dict, expected: list[int]) -> None:
    _train(tmp_path, steps, **options)
    images = _images(tmp_path)
    assert [image.step for image in images] == expected
    if not expected:
        return
    assert images[0].width > 300 and images[0].height > 150
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


def test_flow_data_from_history_matches_the_records(tmp_path) -> None:
    gw = _train(None, 6)
    data = flow_from_history(list(gw.history), gw.index.names)
    assert data.grad_norm.shape == (4, 6)
    np.testing.assert_array_equal(data.steps, np.arange(6))
    np.testing.assert_allclose(data.grad_norm[:, -1], gw.history.latest.grad_norm)


def test_flow_image_shows_vanishing_as_dark_input_side() -> None:
    """The heat map's colours follow log10 norm: the tiny-gradient layer gets the
    colour map's low end (viridis: dark purple), the large one its high end (yellow)."""
    layers = ("first", "middle", "last")
    grads = np.array([[1e-8] * 4, [1e-3] * 4, [1.0] * 4])
    figure = flow_figure(FlowData(layers, np.arange(4), grads), dpi=80)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    height = image.shape[0]
    # Sample the heat map along its centre column band: find the darkest and brightest rows.
    band = image[:, int(image.shape[1] * 0.3), :].astype(int)
    brightness = band.sum(axis=1)
    dark_row = int(np.argmin(brightness[: height - 40]))
    bright_row = int(np.argmax(np.where(band[:, 2] < 100, brightness, 0)))  # yellow: low blue
    assert dark_row < bright_row  # input side (top) is dark, output side (bottom) bright


def test_report_flow_data_equals_history(tmp_path) -> None:
    gw = _train(tmp_path, 5)
    data = read_run(tmp_path).flow_data()
    assert data.layers == tuple(gw.index.names)
    expected = flow_from_history(list(gw.history), gw.index.names)
    np.testing.assert_allclose(data.grad_norm, expected.grad_norm, rtol=1e-6)
    np.testing.assert_allclose(data.weight_norm, expected.weight_norm, rtol=1e-6)


@pytest.mark.parametrize(("n", "expected"), [(0, []), (1, [0]), (2, [0, 1]), (9, [0, 4, 8])])
def test_chosen_steps(n: int, expected: list[int]) -> None:
    assert chosen_steps(n) == expected


def test_the_tensorboard_image_needs_no_matplotlib(tmp_path, monkeypatch) -> None:
    """Training never imports matplotlib (or Pillow): the heat map is numpy + zlib."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "PIL", None)
    gw = _train(tmp_path, 3, flow_image_every=2)
    assert not gw.alerts
    run = read_run(tmp_path)
    assert run.images == ("gradient_flow",) and "grad_norm/0" in run.scalars
    [image] = _images(tmp_path)
    assert image.step == 2 and image.encoded_image_string.startswith(b"\x89PNG")


def test_heatmap_colours_follow_log_norm_with_input_side_at_the_top() -> None:
    layers = ("first", "middle", "last", "frozen")
    grads = np.array([[1e-8] * 4, [1e-3] * 4, [1.0] * 4, [np.nan] * 4])
    image, (low, high) = flow_heatmap_rgb(FlowData(layers, np.arange(4), grads))
    assert (low, high) == pytest.approx((-8.0, 0.0))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    rows = image.shape[0] // 4
    column = image[:, 10, :].astype(int)
    first, middle, last, frozen = (column[i * rows + rows // 2] for i in range(4))
    assert tuple(first) == (68, 1, 84)  # smallest: viridis' dark purple
    assert tuple(last) == (253, 231, 37)  # largest: yellow
    assert first.sum() < middle.sum() < last.sum()
    assert tuple(frozen) == NO_GRADIENT_RGB
    # the colour scale on the right edge: largest at the top
    assert tuple(image[0, -1]) == (253, 231, 37) and tuple(image[-1, -1]) == (68, 1, 84)


def test_png_encoder_round_trips_through_a_real_decoder() -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: F401  (TB present)

    image = (np.arange(7 * 5 * 3).reshape(7, 5, 3) * 3 % 256).astype(np.uint8)
    png = encode_png(image)
    PIL = pytest.importorskip("PIL.Image")
    import io

    decoded = np.asarray(PIL.open(io.BytesIO(png)).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        encode_png(image.astype(np.float32))


# ------------------------------------- issue 19: labelled picture, fixed colour scale


def test_tensorboard_picture_has_layer_names_steps_and_a_colour_bar() -> None:
    from gradwatch._sinks import pixelfont
    from gradwatch._sinks.flowplot import (
        FONT_SCALE,
        LOG10_RANGE,
        colour_map,
        flow_picture_rgb,
    )

    layers = tuple(f"block.{i}" for i in range(5))
    grads = np.array([[10.0 ** (i - 6)] * 9 for i in range(5)])
    image = flow_picture_rgb(FlowData(layers, np.arange(100, 109), grads))
    assert image.dtype == np.uint8 and image.shape[1] > 600 and image.shape[0] > 150
    ink = np.all(image == np.array((40, 40, 40), dtype=np.uint8), axis=2)
    # The label of layer 0 ("00 block.0"), rendered by the same font, is in the left margin.
    label = pixelfont.render("00 block.0", FONT_SCALE)
    assert _contains(ink[:, : image.shape[1] // 3], label)  # left of the heat map
    # Step numbers below the heat map, a colour bar with its values on the right.
    step_mask = pixelfont.render("108", FONT_SCALE)
    assert _contains(ink, step_mask)
    assert _contains(ink, pixelfont.render(f"1e{int(LOG10_RANGE[1])}", FONT_SCALE))
    bar_colours = {tuple(c) for c in colour_map(np.array([0.0, 1.0]))}
    right = {tuple(pixel) for pixel in image[:, image.shape[1] * 3 // 4 :].reshape(-1, 3)}
    assert bar_colours <= right


def _contains(mask: np.ndarray, pattern: np.ndarray) -> bool:
    height, width = pattern.shape
    _, columns = np.nonzero(pattern[:1, :])
    first = (0, int(columns[0])) if columns.size else (0, 0)
    for y, x in zip(*np.nonzero(mask)):
        top, left = y - first[0], x - first[1]
        if top < 0 or left < 0:
            continue
        window = mask[top : top + height, left : left + width]
        if window.shape == pattern.shape and np.array_equal(window, pattern):
            return True
    return False


def test_one_norm_gets_one_colour_in_every_picture() -> None:
    """The colour scale is fixed (log10 1e-8..1e2), not fitted to each run: a layer at
    1e-3 has the same colour next to a vanishing layer as next to a healthy one."""
    from gradwatch._sinks.flowplot import LOG10_RANGE

    healthy = FlowData(("a", "b"), np.arange(3), np.array([[1e-3] * 3, [1e-1] * 3]))
    sick = FlowData(("a", "b"), np.arange(3), np.array([[1e-3] * 3, [1e-7] * 3]))
    one, _ = flow_heatmap_rgb(healthy, log_range=LOG10_RANGE)
    two, _ = flow_heatmap_rgb(sick, log_range=LOG10_RANGE)
    assert tuple(one[0, 0]) == tuple(two[0, 0])
    assert tuple(one[-1, 0]) != tuple(two[-1, 0])
    # The matplotlib picture uses the same bounds.
    figure = flow_figure(sick, dpi=60)
    heat = figure.axes[0].images[0]
    assert heat.get_clim() == LOG10_RANGE


def test_plot_legend_is_outside_the_lines_and_both_panels_name_layers_alike() -> None:
    layers = tuple(f"layer{i}" for i in range(6))
    grads = np.outer(np.logspace(-6, 0, 6), np.ones(10))
    figure = flow_figure(FlowData(layers, np.arange(10), grads, grads * 10), dpi=60)
    figure.canvas.draw()
    heat_ax, side_ax = figure.axes[:2]
    heat_labels = [t.get_text() for t in heat_ax.get_yticklabels() if t.get_visible()]
    side_labels = [t.get_text() for t in side_ax.yaxis.get_ticklabels(which="major")]
    assert heat_labels == side_labels == [f"0{i} layer{i}" for i in range(6)]
    renderer = figure.canvas.get_renderer()
    legend = side_ax.get_legend().get_window_extent(renderer)
    axes = side_ax.get_window_extent(renderer)
    assert legend.y1 <= axes.y0  # below the panel, not on its lines


# ------------------------------------------ issue 21: the picture is drawn off the step


def _drawing_threads(monkeypatch) -> list[str]:
    """Record the name of the thread each picture is drawn on."""
    import threading

    from gradwatch._sinks import flowplot

    threads: list[str] = []
    draw = flowplot.flow_picture_rgb

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return draw(*args, **kwargs)

    monkeypatch.setattr(flowplot, "flow_picture_rgb", recorded)
    return threads


def test_the_picture_is_drawn_on_the_writer_thread_not_the_training_thread(
    tmp_path, monkeypatch
) -> None:
    """Drawing and compressing a picture take tens of milliseconds: with its own event
    file the sink hands them to the event writer's thread; the pictures land at the same
    steps, complete."""
    threads = _drawing_threads(monkeypatch)
    _train(tmp_path, 8, flow_image_every=3)
    assert threads == ["gradwatch-event-writer"] * 3
    images = _images(tmp_path)
    assert [image.step for image in images] == [3, 6, 7]
    assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in images)


def test_with_the_users_summary_writer_the_picture_is_drawn_at_once(tmp_path, monkeypatch) -> None:
    """A user's SummaryWriter has no writer thread of gradwatch's: the picture is drawn
    on the calling thread and written through that writer."""
    import threading

    from torch.utils.tensorboard import SummaryWriter

    threads = _drawing_threads(monkeypatch)
    model = make_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = SummaryWriter(str(tmp_path))
    with gradwatch.watch(model, optimizer, writer=writer, flow_image_every=2):
        train_steps(model, optimizer, regression_batches(4))
    writer.close()
    assert threads == [threading.current_thread().name] * 2
    assert [image.step for image in _images(tmp_path)] == [2, 3]  # steps 0-3, 3 at close


def test_a_picture_that_fails_to_draw_switches_only_the_picture_off(
    tmp_path, monkeypatch, caplog
) -> None:
    """A failure while drawing on the writer thread: one warning, no picture from then
    on, and every scalar still written (the writer thread is not poisoned)."""
    from gradwatch._sinks import flowplot

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("cannot draw")

    monkeypatch.setattr(flowplot, "flow_picture_rgb", broken)
    with caplog.at_level("WARNING", logger="gradwatch"):
        gw = _train(tmp_path, 9, flow_image_every=2)
    assert calls == [1]  # the first picture failed; none was drawn after it
    failed = [r for r in caplog.records if "gradient-flow image failed" in r.getMessage()]
    assert len(failed) == 1
    assert _images(tmp_path) == []
    run = read_run(tmp_path)
    assert len(run.scalars["grad_norm/0"]) == 9
    assert not gw.alerts
