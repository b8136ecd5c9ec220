"""How much does watching a training run cost? gradwatch next to the tools people use today.

Run:  bash scripts/dev.sh bench            (full run; the README's table)
      bash scripts/dev.sh bench --quick    (a short run while developing)

What it measures, all in one process on the CPU:

1. **Step time overhead.** Each configuration (an unwatched step, gradwatch in several
   modes, ``torch.autograd.detect_anomaly`` and home-made stand-ins for Lightning's
   ``grad_norm`` logging, ``wandb.watch`` histograms and Composer's activation hooks)
   trains the *same* model and optimizer (separate copies of a model differ by a few
   percent on their own, from memory placement), attached for a block of steps and
   detached again. Configurations take turns block by block, in a shuffled order each
   round, so machine drift hits them all alike; a warm-up round is dropped. A
   configuration's ratio is the median over rounds of (its step time / the unwatched
   step time *of the same round*), with a 95% confidence interval of that median, for
   wall time and for process CPU time. A second unwatched block ("A/A") shows the noise
   floor.
2. **Ops per measurement.** The aten ops one gradwatch measurement dispatches, counted
   with ``torch.profiler``, for models of 10 and 100 layers: the count is O(device x dtype
   groups), not O(parameters).
3. **Consumer path.** The host-side cost of one step's statistics on the training thread
   (history, detectors, TensorBoard event) as the number of layers grows.
4. **Memory.** gradwatch's host memory over many steps of a tiny model (tracemalloc, RSS)
   and the device memory one measurement allocates (O(layers), except update ratios).

No external service is contacted; TensorBoard event files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.tensorboard import SummaryWriter

import gradwatch

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- workloads
class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A small decoder-style language model (no causal mask: the cost is what matters)."""

    def __init__(self, vocab: int, d: int, blocks: int, heads: int, context: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(torch.randn(context, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(blocks))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def _token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _conv_net() -> nn.Module:
    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *stage(3, 32), *stage(32, 64), *stage(64, 128), nn.Flatten(), nn.Linear(128 * 16, 10)
    )


def _mlp(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(cin, cout))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclasses.dataclass
class Workload:
    name: str
    make_model: Callable[[], nn.Module]
    batches: list[tuple[Tensor, Tensor]]
    loss_fn: LossFn
    batch_text: str


def workloads() -> list[Workload]:
    gen = torch.Generator().manual_seed(0)
    vocab, context, batch = 1000, 128, 8

    def tokens() -> tuple[Tensor, Tensor]:
        t = torch.randint(0, vocab, (batch, context + 1), generator=gen)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def images() -> tuple[Tensor, Tensor]:
        return torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen)

    def vectors() -> tuple[Tensor, Tensor]:
        return torch.randn(256, 784, generator=gen), torch.randint(0, 10, (256,), generator=gen)

    return [
        Workload(
            "transformer",
            lambda: TinyGPT(vocab, 256, blocks=6, heads=4, context=context),
            [tokens() for _ in range(4)],
            _token_loss,
            f"{batch}x{context} tokens",
        ),
        Workload(
            "cnn",
            _conv_net,
            [images() for _ in range(4)],
            nn.functional.cross_entropy,
            "32x3x32x32",
        ),
        Workload(
            "mlp",
            lambda: _mlp([784, 1024, 1024, 1024, 10]),
            [vectors() for _ in range(4)],
            nn.functional.cross_entropy,
            "256x784",
        ),
    ]


# --------------------------------------------------------------------------- configurations
class Mode:
    """One configuration, attached to the shared model for a block of steps, then removed.

    Every configuration trains the *same* model and optimizer (attached in turn), so they
    all see the same memory layout: separate copies of a model differ by a few percent in
    step time on their own (where their buffers land), more than what is measured here.
    """

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, logdir: str) -> None:
        pass

    def forward_backward(self, model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    def after_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        """Whatever the configuration does between backward() and optimizer.step()."""

    def detach(self) -> None:
        pass

    def note(self) -> str:
        return ""


class GradwatchMode(Mode):
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.watcher: gradwatch.Watcher | None = None
        self.alerts = 0

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, logdir: str) -> None:
        self.watcher = gradwatch.watch(model, optimizer, logdir=logdir, **self.options)

    def after_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        assert self.watcher is not None
        self.watcher.record_loss(loss)

    def detach(self) -> None:
        assert self.watcher is not None
        self.watcher.close()
        self.alerts += len(self.watcher.alerts)
        self.watcher = None

    def note(self) -> str:
        return f"{self.alerts} alerts"


class AnomalyMode(Mode):
    """``torch.autograd.detect_anomaly()`` around forward and backward (its documented use)."""

    def forward_backward(self, model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autograd.detect_anomaly():
                return super().forward_backward(model, loss_fn, x, y)


class WriterMode(Mode):
    """A configuration that logs through its own ``SummaryWriter``."""

    writer: SummaryWriter | None = None

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, logdir: str) -> None:
        self.writer = SummaryWriter(logdir)

    def detach(self) -> None:
        assert self.writer is not None
        self.writer.close()
        self.writer = None


class LightningNormMode(WriterMode):
    """Lightning ``grad_norm`` style: per-parameter ``.norm()`` read with ``.item()``,
    logged with one ``add_scalar`` per tag (as TensorBoardLogger.log_metrics does)."""

    def after_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        assert self.writer is not None
        norms = {
            f"grad_2.0_norm/{name}": p.grad.norm(2.0).item()
            for name, p in model.named_parameters()
            if p.grad is not None
        }
        norms["grad_2.0_norm_total"] = math.sqrt(sum(v * v for v in norms.values()))
        for tag, value in norms.items():
            self.writer.add_scalar(tag, value, step)


class HistogramMode(WriterMode):
    """``wandb.watch(log="gradients", log_freq=1)`` style: a histogram of every
    parameter's gradient every step (here with ``SummaryWriter.add_histogram``)."""

    def after_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        assert self.writer is not None
        for name, p in model.named_parameters():
            if p.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", p.grad, step)


class ActivationHookMode(Mode):
    """Composer ``ActivationMonitor`` style at interval 1: a forward hook on every module
    computing, for each input and output, the mean L2 norm and max over the last
    dimension, the mean and the kurtosis, each read with ``.item()``."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.handles: list[Any] = []

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, logdir: str) -> None:
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in model.named_modules()
        ]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            values = [*tree_flatten(inputs)[0], *tree_flatten(output)[0]]
            for i, value in enumerate(values):
                if isinstance(value, Tensor) and value.is_floating_point() and value.dim():
                    with torch.no_grad():
                        self._add(f"{name}/{i}", value.detach())

        return hook

    def _add(self, key: str, value: Tensor) -> None:
        centred = value - value.mean(dim=-1, keepdim=True)
        variance = centred.square().mean(dim=-1)
        kurtosis = (centred.pow(4).mean(dim=-1) / variance.square()).mean()
        self.metrics[f"l2_norm/{key}"] = torch.linalg.vector_norm(value, dim=-1).mean().item()
        self.metrics[f"average/{key}"] = value.mean().item()
        self.metrics[f"kurtosis/{key}"] = kurtosis.item()
        self.metrics[f"max/{key}"] = value.max(dim=-1).values.mean().item()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@dataclasses.dataclass
class Config:
    label: str
    make: Callable[[], Mode]
    every: int = 1  # take part in every `every`-th round (expensive reference rows)
    target: str = ""


def configs() -> list[Config]:
    return [
        Config("unwatched (baseline)", Mode),
        Config("unwatched again (A/A: the noise floor)", Mode),
        Config(
            "gradwatch, norms only (`activation_every=0, update_ratio_every=0`)",
            lambda: GradwatchMode(activation_every=0, update_ratio_every=0),
            target="<= 1.01",
        ),
        Config(
            "gradwatch default (+ activation stats, update ratios every 10 steps)",
            GradwatchMode,
            target="<= 1.02",
        ),
        Config(
            "gradwatch default + `locate_nonfinite=True`",
            lambda: GradwatchMode(locate_nonfinite=True),
            target="<= 1.05",
        ),
        Config("gradwatch, `update_ratio_every=1`", lambda: GradwatchMode(update_ratio_every=1)),
        Config("`torch.autograd.detect_anomaly()`", AnomalyMode, every=3),
        Config(
            "Lightning-style `grad_norm`: per-parameter `.norm().item()`",
            LightningNormMode,
            every=3,
        ),
        Config("wandb.watch-style gradient histograms every step", HistogramMode, every=3),
        Config("Composer-style activation hooks on every module", ActivationHookMode, every=3),
    ]


# --------------------------------------------------------------------------- own time
#: Every entry point through which gradwatch runs on the training thread: the optimizer
#: step hooks (measurement, clipping, history, detectors, TensorBoard event),
#: ``record_loss``, the sampled activation and structure hooks and the NaN-localisation
#: hooks.
def _entry_points() -> list[tuple[type, str]]:
    from gradwatch._measure.attention import AttentionProbe
    from gradwatch._measure.hooks import SafeHook
    from gradwatch._watcher import Watcher

    return [
        (Watcher, "_before_optimizer_step"),
        (Watcher, "_after_optimizer_step"),
        (Watcher, "_before_scaler_step"),
        (Watcher, "step"),
        (Watcher, "record_loss"),
        # Every forward, gradient and loss hook (activations, localisation, the
        # structure probes) is a SafeHook. The attention probe's torch-function mode
        # runs the model's own ops, so its statistics are timed where they are taken
        # (the mode's per-op dispatch is left out).
        (SafeHook, "__call__"),
        (AttentionProbe, "_observe"),
    ]


@contextlib.contextmanager
def own_time_clock() -> Iterator[list[float]]:
    """Time spent inside gradwatch on the calling thread, summed into ``clock[0]``.

    On the CPU everything gradwatch does runs inside these entry points (there is no
    asynchronous device work), so the sum is its own cost per step, free of the machine
    noise that blurs a ratio of two step times. It leaves out what the ratio sees besides:
    caches gradwatch evicts for the user's kernels, and the event writer's thread.
    """
    clock = [0.0]
    saved = [(owner, name, owner.__dict__[name]) for owner, name in _entry_points()]

    def timed(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                clock[0] += time.perf_counter() - start

        return wrapper

    for owner, name, function in saved:
        setattr(owner, name, timed(function))
    try:
        yield clock
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


def own_time_per_step(
    workload: Workload,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    mode: GradwatchMode,
    steps: int,
    root: str,
) -> float:
    """Median over blocks of 10 steps of gradwatch's own time per step, in seconds."""
    per_step: list[float] = []
    alerts = mode.alerts  # the note in the table counts the timed rounds' alerts only
    with own_time_clock() as clock:
        mode.attach(model, optimizer, root)
        for step in range(1 + steps):
            if step % 10 == 1:
                clock[0] = 0.0  # step 0 (caches) is left out; blocks of 10 cover the samplers
            x, y = workload.batches[step % len(workload.batches)]
            loss = mode.forward_backward(model, workload.loss_fn, x, y)
            mode.after_backward(model, loss, step)
            optimizer.step()
            optimizer.zero_grad()
            if step % 10 == 0 and step:
                per_step.append(clock[0] / 10)
        mode.detach()
    mode.alerts = alerts
    return statistics.median(per_step)


# --------------------------------------------------------------------------- timing
def median_ci(values: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free ~95% confidence interval (order statistics)."""
    ordered = sorted(values)
    n = len(ordered)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half))
    return statistics.median(ordered), ordered[lo], ordered[hi]


def time_workload(
    workload: Workload, rows: list[Config], rounds: int, block: int, root: str
) -> list[str]:
    """Rounds of blocks: each round runs every configuration for ``block`` timed steps
    (after one untimed step), in a shuffled order; a configuration's ratio in a round is
    its block time over the baseline's block time in the same round."""
    torch.manual_seed(1234)
    model = workload.make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    layers = sum(1 for m in model.modules() if list(m.parameters(recurse=False)))
    tensors = sum(1 for _ in model.parameters())
    modes = [row.make() for row in rows]
    wall_times: list[dict[int, float]] = [{} for _ in rows]
    cpu_times: list[dict[int, float]] = [{} for _ in rows]
    rng = random.Random(0)
    step = 0
    started = time.perf_counter()
    for r in range(-1, rounds):  # round -1 warms every configuration up, untimed
        order = [i for i, row in enumerate(rows) if r < 0 or i == 0 or r % row.every == 0]
        rng.shuffle(order)
        for i in order:
            mode = modes[i]
            mode.attach(model, optimizer, os.path.join(root, f"{workload.name}-{i}-{r}"))
            wall = cpu = 0.0
            for s in range(1 + block):
                x, y = workload.batches[step % len(workload.batches)]
                c0, t0 = time.process_time(), time.perf_counter()
                loss = mode.forward_backward(model, workload.loss_fn, x, y)
                mode.after_backward(model, loss, step)
                optimizer.step()
                optimizer.zero_grad()
                t1, c1 = time.perf_counter(), time.process_time()
                step += 1
                if s > 0:  # the first step after attaching may build caches
                    wall, cpu = wall + t1 - t0, cpu + c1 - c0
            mode.detach()
            gc.collect()
            if r >= 0:
                wall_times[i][r], cpu_times[i][r] = wall / block, cpu / block
    base_step = statistics.median(wall_times[0].values())
    own: dict[int, float] = {}
    for i, mode in enumerate(modes):
        if isinstance(mode, GradwatchMode):
            own[i] = own_time_per_step(
                workload, model, optimizer, mode, 30, os.path.join(root, f"own-{i}")
            )
    elapsed = time.perf_counter() - started
    lines = [
        f"\n### {workload.name}: {params / 1e6:.2f}M parameters in {tensors} tensors, "
        f"{layers} layers, batch {workload.batch_text}, AdamW "
        f"({rounds} rounds of {block}-step blocks, {elapsed:.0f} s)\n",
        "| configuration | median step | wall-time ratio [95% CI] | CPU-time ratio [95% CI] "
        "| gradwatch's own time per step | target |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def ratio(times: list[dict[int, float]], i: int) -> str:
        med, lo, hi = median_ci([times[i][r] / times[0][r] for r in times[i]])
        return f"{med:.3f}x [{lo:.3f}, {hi:.3f}]"

    for i, row in enumerate(rows):
        ms = statistics.median(wall_times[i].values()) * 1e3
        if i == 0:
            lines.append(f"| {row.label} | {ms:.1f} ms | 1 | 1 | | |")
            continue
        note = f" ({modes[i].note()})" if modes[i].note() else ""
        mine = (
            f"{own[i] * 1e3:.2f} ms = {1 + own[i] / base_step:.3f}x" if i in own else ""
        )
        lines.append(
            f"| {row.label}{note} | {ms:.1f} ms | {ratio(wall_times, i)} | "
            f"{ratio(cpu_times, i)} | {mine} | {row.target} |"
        )
    lines.append(
        "\nOwn time: the time spent inside gradwatch's hooks on the training thread "
        "(median over blocks of 10 steps, measured after the timed rounds), and 1 + that "
        "over the unwatched step: the overhead without the machine's noise, but also "
        "without what gradwatch costs the user's kernels in evicted caches."
    )
    return lines


# --------------------------------------------------------------------------- ops per step
def _stack_mlp(depth: int, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def _measure_once(model: nn.Module, x: Tensor, **options: Any) -> Iterator[Any]:
    """Yield (watcher) right before one watched measurement, after warm-up steps."""
    watcher = gradwatch.watch(model, **options)
    try:
        for _ in range(3):
            model(x).float().square().mean().backward()
            watcher.step()
            model.zero_grad()
        model(x).float().square().mean().backward()
        yield watcher
    finally:
        watcher.close()


def count_ops(model: nn.Module, x: Tensor, **options: Any) -> tuple[int, int, int]:
    """(top-level aten ops, ``_foreach_norm`` calls, all aten ops) of one measurement."""
    from torch.profiler import ProfilerActivity, profile

    for watcher in _measure_once(model, x, **options):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            watcher.step()
        aten = [e for e in prof.events() if e.name.startswith("aten::")]
        top = [
            e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")
        ]
        norms = sum(1 for e in top if e.name == "aten::_foreach_norm")
        return len(top), norms, len(aten)
    raise AssertionError("unreachable")


class _AllocationCounter(TorchDispatchMode):
    """Bytes of new tensor storage created by the ops it sees (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, Tensor)
        }
        seen: set[int] = set()
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in inputs and ptr not in seen:
                    seen.add(ptr)
                    self.bytes += t.untyped_storage().nbytes()
        return out


def allocated_bytes(model: nn.Module, x: Tensor, **options: Any) -> int:
    for watcher in _measure_once(model, x, **options):
        with _AllocationCounter() as counter:
            watcher.step()
        return counter.bytes
    raise AssertionError("unreachable")


def ops_section(transformer: Workload) -> list[str]:
    lines = [
        "\n### Ops per gradwatch measurement (torch.profiler, one step, update ratios off)\n",
        "| model | layers | parameter tensors | top-level aten ops | `_foreach_norm` calls "
        "| aten ops incl. per-tensor CPU fallback |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cases: list[tuple[str, nn.Module, Tensor]] = [
        ("Linear stack, depth 10", _stack_mlp(10), torch.randn(4, 64)),
        ("Linear stack, depth 100", _stack_mlp(100), torch.randn(4, 64)),
        ("Linear stack, depth 100, half of it float64", _MixedDtype(100), torch.randn(4, 64)),
        ("transformer workload", transformer.make_model(), transformer.batches[0][0]),
    ]
    for name, model, x in cases:
        layers = sum(1 for m in model.modules() if list(m.parameters(recurse=False)))
        tensors = sum(1 for _ in model.parameters())
        top, norms, total = count_ops(model, x, update_ratio_every=0)
        lines.append(f"| {name} | {layers} | {tensors} | {top} | {norms} | {total} |")
    lines.append(
        "\nTop-level ops (what the watcher dispatches; one CUDA kernel launch each, or a few "
        "for a multi-tensor `_foreach_norm`) stay constant with depth and double with a "
        "second dtype group. The last column includes what the CPU build of `_foreach_norm` "
        "does inside (one norm per tensor); on CUDA that is one fused multi-tensor kernel."
    )
    return lines


class _MixedDtype(nn.Module):
    """A Linear stack whose second half is float64: two dtype groups."""

    def __init__(self, depth: int, width: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(
            nn.Linear(width, width, dtype=torch.float64 if i >= depth // 2 else torch.float32)
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x.to(layer.weight.dtype))
        return x


# --------------------------------------------------------------------------- consumer path
def consumer_section(base_ms: dict[str, float]) -> list[str]:
    """Host-side time per step of ``_consume`` (history, detectors, TensorBoard event)."""
    lines = [
        "\n### Consumer path on the training thread (history + detectors + TensorBoard event)\n",
        "| model | layers | per step | of which TensorBoard sink |",
        "|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as root:
        for depth in (10, 100, 1000):
            model = _stack_mlp(depth, width=16)
            x = torch.randn(4, 16)
            for watcher in _measure_once(model, x, logdir=os.path.join(root, str(depth))):
                watcher.step()
                record = watcher.history.latest
                assert record is not None
                sinks = watcher._sinks
                # Space the calls with GIL-free work, as training compute does, so the
                # writer thread drains its queue in between (as it would in training).
                a = torch.randn(256, 256)
                consume, sink_time = [], []
                for _ in range(200):
                    torch.mm(a, a)
                    t0 = time.perf_counter()
                    watcher._consume(record)
                    consume.append(time.perf_counter() - t0)
                    torch.mm(a, a)
                    t0 = time.perf_counter()
                    for sink in sinks:
                        sink.write_step(record, watcher.index)
                    sink_time.append(time.perf_counter() - t0)
                per_step, sink_step = statistics.median(consume), statistics.median(sink_time)
            lines.append(
                f"| Linear stack, depth {depth} | {depth} | {per_step * 1e3:.3f} ms | "
                f"{sink_step * 1e3:.3f} ms |"
            )
    if base_ms:
        pretty = ", ".join(f"{name} {ms:.0f} ms" for name, ms in base_ms.items())
        lines.append(f"\nFor scale, unwatched steps above: {pretty}.")
    return lines


# --------------------------------------------------------------------------- memory
def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_section(steps: int) -> list[str]:
    torch.manual_seed(0)
    model = _mlp([8, 16, 16, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(8)]
    marks = sorted({m for m in (100, 1000, 2000, 5000, steps) if m <= steps} | {steps})
    rows = []
    tracemalloc.start()
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(tempfile.TemporaryDirectory())
        watcher = stack.enter_context(gradwatch.watch(model, optimizer, logdir=root))
        for step in range(1, steps + 1):
            x, y = data[step % len(data)]
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            watcher.record_loss(loss)
            optimizer.step()
            optimizer.zero_grad()
            if step in marks:
                gc.collect()
                snap = tracemalloc.take_snapshot()
                ours = snap.filter_traces([tracemalloc.Filter(True, "*gradwatch*")])
                rows.append(
                    (
                        step,
                        sum(s.size for s in ours.statistics("filename")) / 2**10,
                        tracemalloc.get_traced_memory()[0] / 2**10,
                        _rss_mib(),
                        len(watcher.history),
                    )
                )
    tracemalloc.stop()
    lines = [
        f"\n### Host memory over {steps} steps (tiny MLP, default options, TensorBoard on)\n",
        "| step | gradwatch's Python allocations | all Python allocations | process RSS "
        "| history length |",
        "|---:|---:|---:|---:|---:|",
    ]
    for step, ours_kib, all_kib, rss, length in rows:
        lines.append(
            f"| {step} | {ours_kib:.0f} KiB | {all_kib:.0f} KiB | {rss:.0f} MiB | {length} |"
        )
    return lines


def device_memory_section() -> list[str]:
    lines = [
        "\n### Tensor memory one measurement allocates (TorchDispatchMode)\n",
        "| model | parameter bytes | default | with an update ratio that step |",
        "|---|---:|---:|---:|",
    ]
    for depth in (10, 100):
        x = torch.randn(4, 64)
        param_bytes = sum(p.numel() * p.element_size() for p in _stack_mlp(depth).parameters())
        default = allocated_bytes(_stack_mlp(depth), x, update_ratio_every=0)
        ratio = allocated_bytes(_stack_mlp(depth), x, update_ratio_every=1)
        lines.append(
            f"| Linear stack, depth {depth} | {param_bytes / 2**10:.0f} KiB | "
            f"{default / 2**10:.1f} KiB | {ratio / 2**10:.0f} KiB |"
        )
    lines.append(
        "\nDefault: a few vectors of length (layers) or (parameter tensors). An update "
        "ratio snapshots the parameters once (freed right after the optimizer step)."
    )
    return lines


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run while developing")
    parser.add_argument("--rounds", type=int, help="timed rounds per workload")
    parser.add_argument(
        "--block",
        type=int,
        default=10,
        help="timed steps per configuration and round (keep a multiple of 10: the "
        "default options sample activations and update ratios every 10 steps)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--memory-steps", type=int, help="steps of the memory run")
    parser.add_argument(
        "--only", default="", help="comma-separated sections: timing,ops,consumer,memory"
    )
    parser.add_argument(
        "--workloads", default="transformer,cnn,mlp", help="comma-separated workload names"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    memory_steps = args.memory_steps or (2000 if args.quick else 10_000)
    sections = set(args.only.split(",")) if args.only else {"timing", "ops", "consumer", "memory"}
    torch.set_num_threads(args.threads)
    logging.getLogger("gradwatch").addHandler(logging.NullHandler())
    logging.getLogger("gradwatch").propagate = False

    print(
        f"gradwatch {gradwatch.__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()} {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    chosen = [w for w in workloads() if w.name in args.workloads.split(",")]
    base_ms: dict[str, float] = {}
    if "timing" in sections:
        with tempfile.TemporaryDirectory() as root:
            for workload in chosen:
                lines = time_workload(workload, configs(), rounds, args.block, root)
                base_ms[workload.name] = float(lines[3].split("|")[2].split()[0])
                print("\n".join(lines), flush=True)
    if "ops" in sections:
        lines = ops_section(workloads()[0]) + device_memory_section()
        print("\n".join(lines), flush=True)
    if "consumer" in sections:
        print("\n".join(consumer_section(base_ms)), flush=True)
    if "memory" in sections:
        print("\n".join(memory_section(memory_steps)), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
