"""The dashboard, for real: what TensorBoard's own reader and server make of a gradwatch
log directory. The first screen is the gradient flow (tag groups in order), layers come
in depth order, every chart has something in it, and the gradient-flow image is labelled.

The reader tests use TensorBoard's ``EventAccumulator``; the server test starts the real
``tensorboard`` program on 127.0.0.1 and talks to it over HTTP with the routes its web
app uses (always killed by the fixture's finalizer).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._names import canonical_tag

from .helpers import make_mlp, regression_batches, train_steps, watched_run

STARTUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def write_unstable_run(logdir: Path) -> None:
    """A short run with a NaN at step 3, so there are scalars, an alert and an image."""
    watched_run(
        make_mlp(depth=3),
        regression_batches(6),
        nan_at=3,
        logdir=logdir,
        flow_image_every=4,
        tensorboard_tags="ordered",
    )


class TensorBoardServer:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def get(self, route: str) -> Any:
        return _get(self.url + route)

    def wait_for(self, route: str, ready: Any, timeout: float = STARTUP_TIMEOUT_S) -> Any:
        """Poll ``route`` until ``ready(json)`` holds (TensorBoard loads logs lazily)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited early:\n{self.log.read_text()[-3000:]}")
            try:
                last = self.get(route)
                if ready(last):
                    return last
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(0.5)
        pytest.fail(
            f"{route} not ready within {timeout}s; last answer {last!r}\n"
            f"{self.log.read_text()[-3000:]}"
        )


@pytest.fixture
def tensorboard_server(tmp_path: Path) -> Iterator[TensorBoardServer]:
    logdir = tmp_path / "runs" / "unstable"
    write_unstable_run(logdir)
    port = _free_port()
    log = tmp_path / "tensorboard.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "tensorboard.main",
                "--logdir", str(tmp_path / "runs"),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--reload_interval", "1",
            ],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        yield TensorBoardServer(process, f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.mark.slow
def test_tensorboard_serves_scalars_layout_alerts_and_flow_image(
    tensorboard_server: TensorBoardServer,
) -> None:
    server = tensorboard_server
    listing = server.wait_for(
        "/data/plugins_listing",
        lambda plugins: all(
            plugins.get(name, {}).get("enabled")
            for name in ("scalars", "custom_scalars", "text", "images")
        ),
    )
    assert listing["scalars"]["enabled"]

    tags = server.wait_for("/data/plugin/scalars/tags", lambda t: "unstable" in t)["unstable"]
    for tag in ("2_grad_norm/00-0", "2_grad_norm/01-2", "2_grad_norm/03-6", "4_weight_norm/00-0",
                "1_total/loss", "6_log10/grad_norm/00-0"):  # fmt: skip
        assert tag in tags, sorted(tags)
    series = server.get("/data/plugin/scalars/scalars?run=unstable&tag=1_total%2Fgrad_norm")
    assert [point[1] for point in series] == list(range(6))

    layout = server.get("/data/plugin/custom_scalars/layout")
    titles = [category["title"] for category in layout["category"]]
    assert titles[:2] == ["gradwatch: gradient flow (log10, all layers)", "gradwatch: totals"]
    charts = {
        chart["title"]: chart["multiline"]["tag"]
        for category in layout["category"]
        for chart in category["chart"]
    }
    assert charts["log10 gradient L2 norm per layer (input side first)"] == [
        "^(?:6_log10/grad_norm|log10/grad_norm)/"
    ]
    assert "clip coefficient (1 = not clipped)" not in charts  # no clipping in this run
    for title, (regex,) in charts.items():  # no chart without a line
        assert any(re.match(regex, tag) for tag in tags), title

    text_tags = server.get("/data/plugin/text/tags")
    assert "alerts" in text_tags["unstable"]
    texts = server.get("/data/plugin/text/text?run=unstable&tag=alerts")
    assert any("nonfinite" in entry["text"] and entry["step"] == 3 for entry in texts), texts

    images = server.get("/data/plugin/images/tags")
    assert "gradient_flow" in images["unstable"]
    pictures = server.get("/data/plugin/images/images?run=unstable&tag=gradient_flow")
    assert [picture["step"] for picture in pictures] == [4, 5]
    route = "/data/plugin/images/individualImage?" + pictures[-1]["query"]
    with urllib.request.urlopen(server.url + route, timeout=5) as response:
        png = response.read()
    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR
    assert width > 600 and height > 200  # labelled: names, steps, colour bar


# ------------------------------------------------ TensorBoard's reader, no server


class Backwards(nn.Module):
    """Layers whose names sort the other way round from their depth (as GPT-2's
    ``lm_head`` sorts before ``transformer.*``, or ``attn`` before ``ln_1``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.zeta = nn.Linear(6, 8)
        self.mid = nn.Sequential(*[nn.Linear(8, 8) for _ in range(11)])
        self.alpha = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha(torch.tanh(self.mid(torch.tanh(self.zeta(x)))))


def accumulate(logdir: Path) -> Any:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(logdir),
        size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0,
                       event_accumulator.IMAGES: 0},
    )  # fmt: skip
    accumulator.Reload()
    return accumulator


def latest_layout(accumulator: Any) -> Any:
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = accumulator.Tensors("custom_scalars__config__")
    return layout_pb2.Layout.FromString(events[-1].tensor_proto.string_val[0])


def natural_key(tag: str) -> list[Any]:
    """TensorBoard's frontend order for tag names: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", tag)]


def write_backwards_run(logdir: Path, steps: int = 12, **options: Any) -> gradwatch.Watcher:
    model = Backwards()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 6)
    batches = [(x, x[:, :1])] * steps
    options.setdefault("tensorboard_tags", "ordered")
    with gradwatch.watch(model, optimizer, logdir=logdir, activation_every=5, **options) as gw:
        train_steps(model, optimizer, batches, gw)
    return gw


def test_default_tags_are_the_stable_documented_names(tmp_path: Path) -> None:
    """By default the event file carries the stable names users' dashboards and scripts
    rely on (``grad_norm/<layer>``, ``total/loss``, ...), not the ordered spelling."""
    write_backwards_run(tmp_path, tensorboard_tags="stable")
    tags = set(accumulate(tmp_path).Tags()["scalars"])
    assert {"grad_norm/zeta", "grad_norm/alpha", "weight_norm/zeta", "total/loss"} <= tags
    assert {"total/grad_norm", "update_ratio/zeta", "log10/grad_norm/zeta"} <= tags
    assert any(tag.startswith("act_") for tag in tags)
    assert not any(tag[0].isdigit() for tag in tags), sorted(tags)
    layout = latest_layout(accumulate(tmp_path))
    for category in layout.category:  # the layout's charts find the stable names too
        for chart in category.chart:
            (regex,) = chart.multiline.tag
            assert any(re.match(regex, tag) for tag in tags), chart.title


@pytest.fixture(scope="module")
def backwards(tmp_path_factory: pytest.TempPathFactory) -> tuple[gradwatch.Watcher, Any]:
    logdir = tmp_path_factory.mktemp("backwards")
    gw = write_backwards_run(logdir)
    return gw, accumulate(logdir)


def test_gradient_flow_groups_come_first_and_activations_after(backwards) -> None:
    _, accumulator = backwards
    tags = accumulator.Tags()["scalars"]
    groups = []
    for tag in sorted(tags, key=natural_key):  # as TensorBoard lists them
        group = tag.split("/", 1)[0]
        if group not in groups:
            groups.append(group)
    assert groups[:4] == ["1_total", "2_grad_norm", "3_update_ratio", "4_weight_norm"]
    first_activation = min(i for i, group in enumerate(groups) if "act_" in group)
    assert first_activation == 4 and groups[-1] == "6_log10"


def test_layers_sort_in_depth_order_whatever_their_names(backwards) -> None:
    gw, accumulator = backwards
    tags = accumulator.Tags()["scalars"]
    names = list(gw.index.tags)
    assert names[0] == "zeta" and names[-1] == "alpha"  # alphabetical order is backwards
    for group in ("2_grad_norm/", "4_weight_norm/", "6_log10/grad_norm/"):
        layer_tags = [tag for tag in tags if tag.startswith(group)]
        for order in (sorted(layer_tags), sorted(layer_tags, key=natural_key)):
            assert [canonical_tag(t).rsplit("/", 1)[-1] for t in order] == names, group
    assert "2_grad_norm/00-zeta" in tags and "2_grad_norm/12-alpha" in tags


def test_log10_views_equal_log10_of_the_norms(backwards) -> None:
    _, accumulator = backwards
    raw = [event.value for event in accumulator.Scalars("2_grad_norm/05-mid.4")]
    logs = [event.value for event in accumulator.Scalars("6_log10/grad_norm/05-mid.4")]
    np.testing.assert_allclose(logs, np.log10(raw), rtol=1e-5)


def test_no_chart_is_empty_and_none_is_always_zero(backwards) -> None:
    _, accumulator = backwards
    tags = accumulator.Tags()["scalars"]
    assert not any("nonfinite" in tag for tag in tags)  # finite run: no flat zeros
    assert not any("clip_coef" in tag for tag in tags)  # no clipping: no chart
    layout = latest_layout(accumulator)
    titles = [category.title for category in layout.category]
    assert titles[0] == "gradwatch: gradient flow (log10, all layers)"
    closed = {category.title for category in layout.category if category.closed}
    assert closed == {"gradwatch: layers (linear scale)", "gradwatch: activations (sampled steps)"}
    for category in layout.category:
        for chart in category.chart:
            (regex,) = chart.multiline.tag
            assert any(re.match(regex, tag) for tag in tags), chart.title
    for tag in tags:  # and nothing written is flat zero from start to end
        assert any(event.value != 0.0 for event in accumulator.Scalars(tag)), tag


def test_clipping_and_nonfinite_activations_get_their_charts(tmp_path: Path) -> None:
    write_backwards_run(tmp_path / "clipped", steps=4, clip=0.01)
    clipped = accumulate(tmp_path / "clipped")
    assert "1_total/clip_coef" in clipped.Tags()["scalars"]
    charts = [chart.title for c in latest_layout(clipped).category for chart in c.chart]
    assert "clip coefficient (1 = not clipped)" in charts

    model = make_mlp(depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(
        model, optimizer, logdir=tmp_path / "nan", activation_every=1, tensorboard_tags="ordered"
    ) as gw:
        train_steps(model, optimizer, regression_batches(4), gw, nan_at=2)
    poisoned = accumulate(tmp_path / "nan")
    nonfinite = [tag for tag in poisoned.Tags()["scalars"] if tag.startswith("5_act_nonfinite/")]
    assert nonfinite  # written once it is not zero...
    steps = {event.step for tag in nonfinite for event in poisoned.Scalars(tag)}
    assert 0 not in steps and 1 not in steps  # ...and only then
    charts = [chart.title for c in latest_layout(poisoned).category for chart in c.chart]
    assert "non-finite fraction per layer" in charts
    from gradwatch._cli.logreader import read_run

    run = read_run(tmp_path / "nan")  # a refined layout is no new run
    assert run.run is not None and len(run.runs) == 1
    name = nonfinite[0].split("-", 1)[1]
    assert dict(run.scalars[f"act_nonfinite/{name}"])[0] == 0.0  # the zeros come back


def test_flow_image_is_labelled_and_readable(backwards) -> None:
    _, accumulator = backwards
    [image] = accumulator.Images("gradient_flow")[-1:]
    assert image.width > 600 and image.height > 200


def test_the_diagnosis_is_in_the_text_tab_before_its_evidence(tmp_path: Path) -> None:
    """TensorBoard's Text tab lists tags by name: ``0_diagnosis`` (the causes, what to
    change) comes before ``alerts`` (their evidence), and is written when it changes."""
    from .unstable_models import chain_batches, linear_chain

    model = linear_chain(1.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, logdir=tmp_path) as gw:
        train_steps(model, optimizer, chain_batches(4), gw)
    assert gw.diagnoses
    accumulator = accumulate(tmp_path)
    texts = accumulator.Tags()["tensors"]
    assert sorted(tag for tag in texts if tag in ("0_diagnosis", "alerts")) == [
        "0_diagnosis",
        "alerts",
    ]
    events = accumulator.Tensors("0_diagnosis")
    latest = events[-1].tensor_proto.string_val[0].decode()
    top = gw.diagnoses[0]
    assert latest.startswith(f"**Cause 1: `{top.cause}`**")
    assert top.remedies[0] in latest and "*Evidence:*" in latest
    steps = [event.step for event in events]
    assert steps == sorted(set(steps))  # written at the steps where the causes changed
