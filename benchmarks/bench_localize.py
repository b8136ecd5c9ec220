"""What NaN localisation costs: watch(locate_nonfinite=True) vs plain vs detect_anomaly.

Copies of one model train side by side, one step each in turn (alternating, so that
machine noise hits all of them alike), and the median step time of each is compared
with the plain run's::

    python benchmarks/bench_localize.py                 # CPU (or CUDA when available)
    python benchmarks/bench_localize.py --steps 60 --width 512 --depth 12 --device cuda
    python benchmarks/bench_localize.py --workload transformer --threads 2 --steps 40

``--workload stack`` (the default) is a deep Linear/LayerNorm/GELU stack sized by
``--depth``/``--width``/``--batch``; ``transformer``, ``cnn`` and ``mlp`` are the models of
``bench_overhead.py`` (the transformer is the one issue 21's targets are stated on).

Prints one line per mode: median step time, its ratio to the plain step, and the median
of the per-round ratios (each round runs every mode once: the steadier number on a busy
machine). Then the floor of any eager localisation: the time ``torch.aminmax`` alone
takes to read, once, fresh tensors shaped like the ones one step checks (every module's
inputs, outputs and their gradients), as a ratio to the plain step: what is left of the
watched ratio above it is the hooks' Python and the default statistics.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_overhead import workloads

import gradwatch
from gradwatch._measure.localize import NonfiniteLocator

LossFn = Callable[[Tensor, Tensor], Tensor]


def make_model(depth: int, width: int) -> nn.Module:
    blocks: list[nn.Module] = []
    for _ in range(depth):
        blocks += [nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()]
    return nn.Sequential(*blocks, nn.Linear(width, 1))


def _workload(
    args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, list[tuple[Tensor, Tensor]], LossFn]:
    """The model (on ``device``), its batches and its loss."""
    torch.manual_seed(0)
    if args.workload == "stack":
        x = torch.randn(args.batch, args.width, device=device)
        y = torch.randn(args.batch, 1, device=device)
        return make_model(args.depth, args.width).to(device), [(x, y)], nn.functional.mse_loss
    workload = next(w for w in workloads(device) if w.name == args.workload)
    return workload.make_model().to(device), workload.batches, workload.loss_fn


def checked_shapes(step: Callable[[int], None], i: int) -> list[tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every tensor NaN localisation reads in one step of ``step``."""
    seen: list[tuple[torch.Size, torch.dtype]] = []
    original = NonfiniteLocator._slots

    def spy(self: NonfiniteLocator, tensor: Tensor) -> tuple[int, int]:
        seen.append((tensor.shape, tensor.dtype))
        return original(self, tensor)

    NonfiniteLocator._slots = spy  # type: ignore[method-assign]
    try:
        step(i)
    finally:
        NonfiniteLocator._slots = original  # type: ignore[method-assign]
    return seen


def read_once_ms(
    shapes: list[tuple[torch.Size, torch.dtype]], device: torch.device, repeats: int = 7
) -> float:
    """Median time of one ``torch.aminmax`` over each of fresh tensors of ``shapes``."""
    tensors = [torch.randn(shape, device=device).to(dtype) for shape, dtype in shapes]
    times = []
    for _ in range(repeats + 1):  # the first pass warms up (and is dropped)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for tensor in tensors:
            torch.aminmax(tensor)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="stack", help="stack, transformer, cnn or mlp")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    parser.add_argument("--no-anomaly", action="store_true", help="skip detect_anomaly")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base, batches, loss_fn = _workload(args, device)

    def runner(
        model: nn.Module, anomaly: bool
    ) -> tuple[Callable[[int], None], torch.optim.Optimizer]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            if anomaly:
                with torch.autograd.detect_anomaly(check_nan=True):
                    loss_fn(model(x), y).backward()
            else:
                loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, optimizer

    plain, _ = runner(copy.deepcopy(base), anomaly=False)
    watched_model = copy.deepcopy(base)
    watched, watched_optimizer = runner(watched_model, anomaly=False)
    gw = gradwatch.watch(
        watched_model, watched_optimizer, locate_nonfinite=True, activation_every=0
    )
    base_model = copy.deepcopy(base)
    watched_base, base_optimizer = runner(base_model, anomaly=False)
    gw_base = gradwatch.watch(base_model, base_optimizer, activation_every=0)
    modes: dict[str, Callable[[int], None]] = {
        "plain": plain,
        "watch() (no localisation)": watched_base,
        "watch(locate_nonfinite=True)": watched,
    }
    if not args.no_anomaly:
        modes["detect_anomaly"] = runner(copy.deepcopy(base), anomaly=True)[0]
    times: dict[str, list[float]] = {name: [] for name in modes}
    warnings.filterwarnings("ignore", message=".*Anomaly Detection.*")
    names = list(modes)
    for i in range(args.warmup + args.steps):
        for name in names if i % 2 == 0 else names[::-1]:  # no mode always runs first
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            modes[name](i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    shapes = checked_shapes(watched, args.warmup + args.steps)
    gw.close()
    gw_base.close()
    plain_times = times["plain"]
    plain_median = statistics.median(plain_times)
    shape = (
        f"depth={args.depth} width={args.width} batch={args.batch}"
        if args.workload == "stack"
        else args.workload
    )
    print(
        f"device={device} {shape} threads={torch.get_num_threads()} steps={args.steps} "
        "(median step time, ratio to plain, median per-round ratio)"
    )
    for name, values in times.items():
        median = statistics.median(values)
        paired = statistics.median(v / p for v, p in zip(values, plain_times, strict=True))
        print(
            f"  {name:32s} {median * 1e3:9.3f} ms   x{median / plain_median:.3f}"
            f"   per round x{paired:.3f}"
        )
    megabytes = sum(s.numel() * d.itemsize for s, d in shapes) / 2**20
    floor = read_once_ms(shapes, device)
    print(
        f"  floor: torch.aminmax alone over {len(shapes)} fresh tensors shaped like one step's "
        f"checks ({megabytes:.1f} MiB): {floor:.3f} ms = x{1 + floor / (plain_median * 1e3):.3f}"
    )


if __name__ == "__main__":
    main()
