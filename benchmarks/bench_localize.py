"""What NaN localisation costs: watch(locate_nonfinite=True) vs plain vs detect_anomaly.

Three copies of one model train side by side, one step each in turn (alternating, so
that machine noise hits all three alike), and the median step time of each is compared
with the plain run's::

    python benchmarks/bench_localize.py                 # CPU (or CUDA when available)
    python benchmarks/bench_localize.py --steps 60 --width 512 --depth 12 --device cuda

Prints one line per mode: median step time and its ratio to the plain step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import gradwatch


def make_model(depth: int, width: int) -> nn.Module:
    blocks: list[nn.Module] = []
    for _ in range(depth):
        blocks += [nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()]
    return nn.Sequential(*blocks, nn.Linear(width, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = make_model(args.depth, args.width).to(device)
    x = torch.randn(args.batch, args.width, device=device)
    y = torch.randn(args.batch, 1, device=device)

    def runner(model: nn.Module, anomaly: bool) -> tuple[Callable[[], None], torch.optim.Optimizer]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            if anomaly:
                with torch.autograd.detect_anomaly(check_nan=True):
                    nn.functional.mse_loss(model(x), y).backward()
            else:
                nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, optimizer

    plain, _ = runner(copy.deepcopy(base), anomaly=False)
    anomaly, _ = runner(copy.deepcopy(base), anomaly=True)
    watched_model = copy.deepcopy(base)
    watched, watched_optimizer = runner(watched_model, anomaly=False)
    gw = gradwatch.watch(
        watched_model, watched_optimizer, locate_nonfinite=True, activation_every=0
    )
    base_model = copy.deepcopy(base)
    watched_base, base_optimizer = runner(base_model, anomaly=False)
    gw_base = gradwatch.watch(base_model, base_optimizer, activation_every=0)
    modes: dict[str, Callable[[], None]] = {
        "plain": plain,
        "watch() (no localisation)": watched_base,
        "watch(locate_nonfinite=True)": watched,
        "detect_anomaly": anomaly,
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    warnings.filterwarnings("ignore", message=".*Anomaly Detection.*")
    for i in range(args.warmup + args.steps):
        for name, step in modes.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    gw.close()
    gw_base.close()
    plain_median = statistics.median(times["plain"])
    print(
        f"device={device} depth={args.depth} width={args.width} batch={args.batch} "
        f"steps={args.steps} (median step time, ratio to plain)"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:32s} {median * 1e3:9.3f} ms   x{median / plain_median:.2f}")


if __name__ == "__main__":
    main()
