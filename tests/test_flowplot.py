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
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    if not expected:
        assert "gradient_flow" not in accumulator.Tags()["images"]
        return
    images = accumulator.Images("gradient_flow")
    assert [image.step for image in images] == expected
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
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    [image] = accumulator.Images("gradient_flow")
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
