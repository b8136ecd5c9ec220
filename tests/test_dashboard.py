"""The dashboard, for real: a TensorBoard server on a gradwatch log directory serves the
scalars, the custom-scalars layout, the alerts text and the gradient-flow image.

This starts the real ``tensorboard`` program on 127.0.0.1 and talks to it over HTTP
with the routes its web app uses. The server is always killed (fixture finalizer).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import make_mlp, regression_batches, watched_run

pytestmark = pytest.mark.slow

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
        make_mlp(depth=3), regression_batches(6), nan_at=3, logdir=logdir, flow_image_every=4
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
    for tag in ("grad_norm/0", "grad_norm/2", "grad_norm/6", "weight_norm/0", "total/loss"):
        assert tag in tags, sorted(tags)
    series = server.get("/data/plugin/scalars/scalars?run=unstable&tag=total%2Fgrad_norm")
    assert [point[1] for point in series] == list(range(6))

    layout = server.get("/data/plugin/custom_scalars/layout")
    titles = {category["title"] for category in layout["category"]}
    assert {"gradwatch: layers", "gradwatch: totals"} <= titles
    charts = {
        chart["title"]: chart["multiline"]["tag"]
        for category in layout["category"]
        for chart in category["chart"]
    }
    assert charts["gradient L2 norm per layer"] == ["^grad_norm/"]

    text_tags = server.get("/data/plugin/text/tags")
    assert "alerts" in text_tags["unstable"]
    texts = server.get("/data/plugin/text/text?run=unstable&tag=alerts")
    assert any("nonfinite" in entry["text"] and entry["step"] == 3 for entry in texts), texts

    images = server.get("/data/plugin/images/tags")
    assert "gradient_flow" in images["unstable"]
    pictures = server.get("/data/plugin/images/images?run=unstable&tag=gradient_flow")
    assert [picture["step"] for picture in pictures] == [4, 5]
