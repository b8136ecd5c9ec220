"""Regenerate the dashboard screenshots in docs/ with a real TensorBoard in headless Chromium.

Runs the demo (healthy vs unstable models) into a temporary log directory, serves it with
a real TensorBoard on 127.0.0.1, and screenshots the first screen of each tab a user opens
(Time Series, the legacy Scalars, Custom Scalars, Images) with headless Chromium, and saves
the first run's gradient-flow image at its own size: these are the pictures
docs/dashboard.md shows. It also prints what TensorBoard itself lists first
(its tag groups, in the order its pages show them), so the first screen can be checked
without looking at a picture. Not a test: CI has no Chromium. On Debian:
``apt-get install -y chromium``.

    .venv/bin/python scripts/dashboard_screenshot.py            # every tab into docs/
    .venv/bin/python scripts/dashboard_screenshot.py --tabs images --out-dir /tmp/shots
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
#: TensorBoard's route for each tab, and the file its screenshot goes to under docs/.
TABS: dict[str, str] = {
    "timeseries": "dashboard_timeseries.png",
    "scalars": "dashboard_scalars.png",
    "custom_scalars": "dashboard_custom_scalars.png",
    "images": "dashboard_images.png",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read().decode("utf-8"))


def wait_until_served(url: str, timeout: float = 120.0) -> None:
    """Poll until TensorBoard lists the runs' scalars and image (it loads logs lazily)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            scalars = json.dumps(get_json(url + "/data/plugin/scalars/tags"))
            images = json.dumps(get_json(url + "/data/plugin/images/tags"))
            if "2_grad_norm" in scalars and "gradient_flow" in images:
                return
        except (OSError, ValueError):
            pass
        time.sleep(1.0)
    raise SystemExit(f"TensorBoard at {url} did not serve the runs within {timeout}s")


def first_groups(url: str) -> list[str]:
    """Tag groups (the part before the first '/') in the order TensorBoard's pages list
    them: by name, as its frontend sorts them."""
    tags = get_json(url + "/data/plugin/scalars/tags")
    assert isinstance(tags, dict)
    groups = {tag.split("/", 1)[0] for run in tags.values() for tag in run}
    return sorted(groups)


def save_flow_image(logdir: str, run: str, out: Path) -> None:
    """The run's newest ``gradient_flow`` image at its own size, read back with
    TensorBoard's reader (the Images tab shows it shrunk to its card's width unless
    "Show actual image size" is ticked)."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        os.path.join(logdir, run), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    out.write_bytes(accumulator.Images("gradient_flow")[-1].encoded_image_string)


def screenshot(chromium: str, url: str, out: Path, size: str, budget_ms: int, tmp: str) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp)
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
        check=True, timeout=240, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(ROOT / "docs"), help="where the PNGs go")
    parser.add_argument("--tabs", nargs="+", default=list(TABS), choices=list(TABS))
    parser.add_argument("--steps", type=int, default=150, help="demo steps per model")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["deep_sigmoid_normal_init", "healthy_he_relu_mlp"],
        help="demo runs to show ('all' for every one)",
    )
    parser.add_argument("--size", default="1400,1000", help="window size W,H")
    parser.add_argument("--budget-ms", type=int, default=25000, help="virtual-time budget")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradwatch-shot-") as tmp:
        logdir = os.path.join(tmp, "runs")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py"), "--logdir", logdir,
             "--steps", str(args.steps)],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if "all" not in args.runs:
            for run in os.listdir(logdir):
                if run not in args.runs:
                    shutil.rmtree(os.path.join(logdir, run))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
             "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            wait_until_served(url)
            print("tag groups, in TensorBoard's order:", ", ".join(first_groups(url)))
            flow_run = args.runs[0] if "all" not in args.runs else "deep_sigmoid_normal_init"
            save_flow_image(logdir, flow_run, out_dir / "gradient_flow.png")
            print(f"wrote {out_dir / 'gradient_flow.png'} ({flow_run}, actual size)")
            for tab in args.tabs:
                out = out_dir / TABS[tab]
                screenshot(args.chromium, f"{url}/#{tab}", out, args.size, args.budget_ms, tmp)
                print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
