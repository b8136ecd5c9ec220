"""Take the README's screenshot of the TensorBoard dashboard, in headless Chromium.

Runs the demo (healthy vs unstable models) into a temporary log directory, serves it
with a real TensorBoard on 127.0.0.1, and screenshots the page given by ``--tab``
(``custom_scalars`` by default) with headless Chromium. Not a test: CI has no Chromium.
On Debian: ``apt-get install -y chromium``.

    .venv/bin/python scripts/dashboard_screenshot.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_served(url: str, timeout: float = 120.0) -> None:
    """Poll until TensorBoard lists the demo's runs (it loads logs in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/data/plugin/scalars/tags", timeout=5) as reply:
                if b"grad_norm" in reply.read():
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"TensorBoard at {url} did not serve the runs within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--tab", default="custom_scalars", help="TensorBoard plugin to show")
    parser.add_argument("--steps", type=int, default=150, help="demo steps per model")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["deep_sigmoid_normal_init"],
        help="demo runs to show (one run keeps every chart readable; 'all' for every one)",
    )
    parser.add_argument("--size", default="1400,1000", help="window size W,H")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual-time budget")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)

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
            profile = os.path.join(tmp, "chromium-profile")
            out = os.path.abspath(args.out)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            subprocess.run(
                [args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={args.size}", f"--virtual-time-budget={args.budget_ms}",
                 f"--screenshot={out}", f"{url}/#{args.tab}"],
                check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"wrote {out} ({os.path.getsize(out) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
