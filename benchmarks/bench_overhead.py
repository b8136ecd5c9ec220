"""How much does watching a training run cost? gradwatch next to the tools people use today.

Run:  bash scripts/dev.sh bench            (full run on the CPU; the README's table)
      bash scripts/dev.sh bench --quick    (a smoke run: small models, two rounds)
      bash benchmarks/gpu_check.sh         (on a machine with CUDA: tests + this table)

What it measures, all in one process:

1. **Step time overhead.** Each configuration trains the *same* model and optimizer
   (separate copies of a model differ by a few percent on their own, from memory
   placement), attached for a block of steps and detached again: unwatched twice (the
   second is the A/A row, the noise floor), the peers users run today (Lightning-style
   per-parameter gradient norms read back with ``.item()``; torchtitan-style total norm
   with an asynchronous finiteness assert), and gradwatch norms-only, default and with
   ``locate_nonfinite=True`` (``--extras`` adds ``update_ratio_every=1``,
   ``detect_anomaly``, histogram and activation-hook tools). Configurations take turns
   block by block, in a shuffled order each round, so machine drift hits them all alike;
   a warm-up round is dropped. A configuration's ratio is the median over rounds of (its
   block time / the unwatched block time *of the same round*), with a bootstrap 95%
   confidence interval of that median, for wall time and for process CPU time; "vs
   Lightning" rows divide by the Lightning-style block of the same round instead. On
   CUDA each block is timed between two ``torch.cuda.synchronize()`` calls, never inside.
2. **Ops per measurement.** The aten ops one gradwatch measurement dispatches, counted
   with ``torch.profiler``, for models of 10 and 100 layers: the count is O(device x dtype
   groups), not O(parameters).
3. **Consumer path.** The host-side cost of one step's statistics on the training thread
   (history, detectors, TensorBoard event) as the number of layers grows.
4. **Memory.** gradwatch's host memory over many steps of a tiny model (tracemalloc, RSS)
   and the device memory one measurement allocates (O(layers), except update ratios); on
   CUDA, what the caching allocator holds for gradwatch (persistent and per-step peaks).

The last table printed is the summary: every configuration's ratio on every model, side
by side. The whole output is also written to ``benchmarks/results/`` (the date and the
machine in the file name; ``--out`` to choose, ``--no-save`` for none; ``--quick`` runs
are not saved unless ``--out`` is given). No external service is contacted; TensorBoard
event files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import logging
import math
import os
import platform
import random
import re
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
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


def _conv_net(width: int = 32) -> nn.Module:
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

    w = width
    return nn.Sequential(
        *stage(3, w),
        *stage(w, 2 * w),
        *stage(2 * w, 4 * w),
        nn.Flatten(),
        nn.Linear(4 * w * 16, 10),
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


def workloads(
    device: str | torch.device = "cpu", *, batch_scale: int = 1, small: bool = False
) -> list[Workload]:
    """The benchmark's models: the issue's 4-block pre-LN transformer (d=256, vocab 1000,
    batch 8x96), a CNN and an MLP. ``batch_scale`` multiplies every batch (a GPU needs
    bigger ones to be busy); ``small`` shrinks everything for a smoke run."""
    gen = torch.Generator().manual_seed(0)
    device = torch.device(device)
    vocab, d, blocks, heads, context, batch = (
        (100, 32, 2, 2, 16, 2) if small else (1000, 256, 4, 4, 96, 8)
    )
    batch *= batch_scale
    images, vectors = (4, 16) if small else (32, 256)
    images, vectors = images * batch_scale, vectors * batch_scale
    conv_width, mlp_widths = (
        (4, [784, 32, 32, 32, 10]) if small else (32, [784, 1024, 1024, 1024, 10])
    )

    def on_device(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return pair[0].to(device), pair[1].to(device)

    def tokens() -> tuple[Tensor, Tensor]:
        t = torch.randint(0, vocab, (batch, context + 1), generator=gen)
        return on_device((t[:, :-1].contiguous(), t[:, 1:].contiguous()))

    def image_batch() -> tuple[Tensor, Tensor]:
        x = torch.randn(images, 3, 32, 32, generator=gen)
        return on_device((x, torch.randint(0, 10, (images,), generator=gen)))

    def vector_batch() -> tuple[Tensor, Tensor]:
        x = torch.randn(vectors, 784, generator=gen)
        return on_device((x, torch.randint(0, 10, (vectors,), generator=gen)))

    return [
        Workload(
            "transformer",
            lambda: TinyGPT(vocab, d, blocks=blocks, heads=heads, context=context).to(device),
            [tokens() for _ in range(4)],
            _token_loss,
            f"{batch}x{context} tokens",
        ),
        Workload(
            "cnn",
            lambda: _conv_net(conv_width).to(device),
            [image_batch() for _ in range(4)],
            nn.functional.cross_entropy,
            f"{images}x3x32x32",
        ),
        Workload(
            "mlp",
            lambda: _mlp(mlp_widths).to(device),
            [vector_batch() for _ in range(4)],
            nn.functional.cross_entropy,
            f"{vectors}x784",
        ),
    ]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """Lightning-style gradient-norm logging, written here from its documented behaviour
    (``lightning.pytorch.utilities.grad_norm`` called in ``on_before_optimizer_step`` and
    passed to ``self.log_dict``): the 2-norm of every parameter's gradient, one norm per
    parameter, and the total norm over all of them; every value is read back to the host
    with ``.item()`` every step and logged as one TensorBoard scalar per tag."""

    last: dict[str, float]

    def after_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        assert self.writer is not None
        norms = {
            f"grad_2.0_norm/{name}": p.grad.norm(2.0)
            for name, p in model.named_parameters()
            if p.grad is not None
        }
        if norms:
            norms["grad_2.0_norm_total"] = torch.stack(list(norms.values())).norm(2.0)
        self.last = {tag: value.item() for tag, value in norms.items()}  # one sync each
        for tag, value in self.last.items():
            self.writer.add_scalar(tag, value, step)


class TorchtitanNormMode(Mode):
    """torchtitan-style, written here from its documented behaviour: the total gradient
    norm from ``torch.nn.utils.get_total_norm`` (the function ``clip_grad_norm_`` is built
    on; one batched ``foreach`` norm), checked for finiteness with ``torch._assert_async``,
    which fails on the device without the host waiting for it; nothing is read back to
    the host. The gradients are not clipped: no other configuration changes them."""

    last: Tensor | None = None

    def after_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        torch._assert_async(torch.isfinite(total), "non-finite gradient norm")
        self.last = total


class AnomalyMode(Mode):
    """``torch.autograd.detect_anomaly()`` around forward and backward (its documented use)."""

    def forward_backward(self, model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autograd.detect_anomaly():
                return super().forward_backward(model, loss_fn, x, y)


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
    key: str  # short name: the summary, the "vs" rows and the tests refer to rows by it
    label: str
    make: Callable[[], Mode]
    every: int = 1  # take part in every `every`-th round (expensive reference rows)
    target: str = ""


BASELINE, AA, LIGHTNING, TORCHTITAN = "unwatched", "aa", "lightning", "torchtitan"
NORMS, DEFAULT, LOCATE = "norms", "default", "locate"


def configs(*, extras: bool = False) -> list[Config]:
    """The rows of the table; the baseline comes first (every ratio divides by it)."""
    rows = [
        Config(BASELINE, "unwatched (baseline)", Mode),
        Config(AA, "unwatched again (A/A: the noise floor)", Mode),
        Config(
            LIGHTNING,
            "Lightning-style: per-parameter `p.grad.norm()` + total, `.item()` each",
            LightningNormMode,
        ),
        Config(
            TORCHTITAN,
            "torchtitan-style: `get_total_norm` + `_assert_async(isfinite)`, no host read",
            TorchtitanNormMode,
        ),
        Config(
            NORMS,
            "gradwatch, norms only (`activation_every=0, update_ratio_every=0`)",
            lambda: GradwatchMode(activation_every=0, update_ratio_every=0),
        ),
        Config(
            DEFAULT,
            "gradwatch default (+ sampled activations, update ratios every 10 steps)",
            GradwatchMode,
            target="<= 1.02 (transformer); <= Lightning-style (all)",
        ),
        Config(
            LOCATE,
            "gradwatch default + `locate_nonfinite=True`",
            lambda: GradwatchMode(locate_nonfinite=True),
            target="<= 1.05 (transformer)",
        ),
    ]
    if extras:
        rows += [
            Config(
                "ratio1",
                "gradwatch, `update_ratio_every=1`",
                lambda: GradwatchMode(update_ratio_every=1),
            ),
            Config("anomaly", "`torch.autograd.detect_anomaly()`", AnomalyMode, every=3),
            Config(
                "histograms",
                "wandb.watch-style gradient histograms every step",
                HistogramMode,
                every=3,
            ),
            Config(
                "composer",
                "Composer-style activation hooks on every module",
                ActivationHookMode,
                every=3,
            ),
        ]
    return rows


#: Paired comparisons in the summary: (numerator, denominator), same round.
VERSUS: list[tuple[str, str]] = [(NORMS, LIGHTNING), (DEFAULT, LIGHTNING), (DEFAULT, TORCHTITAN)]


# --------------------------------------------------------------------------- own time
#: Every entry point through which gradwatch runs on the training thread: the optimizer
#: step hooks (measurement, clipping, history, detectors, TensorBoard event),
#: ``record_loss``, the sampled activation and structure hooks and the NaN-localisation
#: hooks.
def _entry_points() -> list[tuple[type, str]]:
    from gradwatch._measure.attention import AttentionProbe
    from gradwatch._measure.hooks import SafeHook
    from gradwatch._measure.localize import _AfterCall, _BeforeCall, _Checked
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
        # NaN localisation's own hooks (lighter than SafeHook, with the same guarantees):
        # before and after each module call, and on each checked tensor's gradient.
        (_BeforeCall, "__call__"),
        (_AfterCall, "__call__"),
        (_Checked, "__call__"),
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


@contextlib.contextmanager
def peer_time_clock(mode: Mode) -> Iterator[list[float]]:
    """Time spent in a peer configuration's own work (its ``after_backward``, which is
    all it adds to a step), summed into ``clock[0]``: the same measure as
    :func:`own_time_clock` gives gradwatch, so the two compare without machine noise."""
    clock = [0.0]
    work = mode.after_backward

    def timed(model: nn.Module, loss: Tensor, step: int) -> None:
        start = time.perf_counter()
        try:
            work(model, loss, step)
        finally:
            clock[0] += time.perf_counter() - start

    mode.after_backward = timed  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        del mode.after_backward  # the class's method again


def has_own_time(mode: Mode) -> bool:
    """Whether a configuration does work of its own that its own time can measure."""
    return type(mode).after_backward is not Mode.after_backward


def own_time_per_step(
    workload: Workload,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    mode: Mode,
    steps: int,
    root: str,
) -> float:
    """Median over blocks of 10 steps of a configuration's own time per step, in seconds:
    gradwatch's hooks (:func:`own_time_clock`) or a peer's work (:func:`peer_time_clock`)."""
    per_step: list[float] = []
    alerts = mode.alerts if isinstance(mode, GradwatchMode) else 0
    clocked = own_time_clock() if isinstance(mode, GradwatchMode) else peer_time_clock(mode)
    with clocked as clock:
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
    if isinstance(mode, GradwatchMode):
        mode.alerts = alerts  # the note in the table counts the timed rounds' alerts only
    return statistics.median(per_step)


# --------------------------------------------------------------------------- timing
Interval = tuple[float, float, float]  # (median, low, high)


def bootstrap_median_ci(
    values: list[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """The median of ``values`` and a percentile-bootstrap confidence interval of it:
    resample the rounds with replacement, take each resample's median, and read the
    ``level`` central range off their distribution (seeded, so a table is reproducible)."""
    if not values:
        raise ValueError("bootstrap_median_ci: no values (was the configuration ever timed?)")
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    tail = (1 - level) / 2
    lo = medians[int(tail * resamples)]
    hi = medians[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return statistics.median(values), lo, hi


def paired_ratios(times: dict[int, float], base: dict[int, float]) -> list[float]:
    """Per round, ``times / base`` over the rounds both took part in."""
    return [times[r] / base[r] for r in sorted(times) if r in base]


@dataclasses.dataclass
class RowResult:
    key: str
    label: str
    step_ms: float  # median block time per step
    wall: Interval | None  # ratio to the baseline of the same round (None: the baseline)
    cpu: Interval | None
    own_ms: float | None = None  # gradwatch's own time per step on the training thread
    note: str = ""
    target: str = ""


@dataclasses.dataclass
class WorkloadResult:
    name: str
    header: str
    rounds: int
    rows: list[RowResult]
    versus: dict[tuple[str, str], Interval]  # (a, b) -> ratio a / b of the same round

    def row(self, key: str) -> RowResult | None:
        return next((row for row in self.rows if row.key == key), None)

    @property
    def base_ms(self) -> float:
        return self.rows[0].step_ms


def time_workload(
    workload: Workload,
    rows: list[Config],
    rounds: int,
    block: int,
    root: str,
    *,
    own_steps: int = 30,
) -> WorkloadResult:
    """Rounds of blocks: each round runs every configuration for ``block`` timed steps
    (after one untimed step, which may build caches), in a shuffled order; a
    configuration's ratio in a round is its block time over the baseline's block time in
    the same round. A block is timed as a whole, between device synchronisations."""
    torch.manual_seed(1234)
    model = workload.make_model()
    device = next(model.parameters()).device
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

    def train_step(mode: Mode) -> None:
        nonlocal step
        x, y = workload.batches[step % len(workload.batches)]
        loss = mode.forward_backward(model, workload.loss_fn, x, y)
        mode.after_backward(model, loss, step)
        optimizer.step()
        optimizer.zero_grad()
        step += 1

    for r in range(-1, rounds):  # round -1 warms every configuration up, untimed
        order = [i for i, row in enumerate(rows) if r < 0 or i == 0 or r % row.every == 0]
        rng.shuffle(order)
        for i in order:
            mode = modes[i]
            mode.attach(model, optimizer, os.path.join(root, f"{workload.name}-{i}-{r}"))
            train_step(mode)  # untimed: the first step after attaching may build caches
            synchronize(device)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(block):
                train_step(mode)
            synchronize(device)
            t1, c1 = time.perf_counter(), time.process_time()
            mode.detach()
            gc.collect()
            if r >= 0:
                wall_times[i][r], cpu_times[i][r] = (t1 - t0) / block, (c1 - c0) / block
    own: dict[int, float] = {}
    if own_steps:
        for i, mode in enumerate(modes):
            if has_own_time(mode):
                own[i] = own_time_per_step(
                    workload, model, optimizer, mode, own_steps, os.path.join(root, f"own-{i}")
                )
    elapsed = time.perf_counter() - started
    results = []
    for i, row in enumerate(rows):
        first = i == 0
        results.append(
            RowResult(
                key=row.key,
                label=row.label,
                step_ms=statistics.median(wall_times[i].values()) * 1e3,
                wall=None
                if first
                else bootstrap_median_ci(paired_ratios(wall_times[i], wall_times[0])),
                cpu=None
                if first
                else bootstrap_median_ci(paired_ratios(cpu_times[i], cpu_times[0])),
                own_ms=own[i] * 1e3 if i in own else None,
                note=modes[i].note(),
                target=row.target,
            )
        )
    keys = [row.key for row in rows]
    versus = {
        (a, b): bootstrap_median_ci(
            paired_ratios(wall_times[keys.index(a)], wall_times[keys.index(b)])
        )
        for a, b in VERSUS
        if a in keys and b in keys
    }
    header = (
        f"{workload.name}: {params / 1e6:.2f}M parameters in {tensors} tensors, {layers} "
        f"layers, batch {workload.batch_text}, AdamW, on {device.type} ({rounds} rounds of "
        f"{block}-step blocks, {elapsed:.0f} s)"
    )
    return WorkloadResult(workload.name, header, rounds, results, versus)


def ratio_text(interval: Interval | None) -> str:
    if interval is None:
        return "1"
    med, lo, hi = interval
    return f"{med:.3f}x [{lo:.3f}, {hi:.3f}]"


def workload_table(result: WorkloadResult) -> list[str]:
    """One model's full table: step time, wall and CPU ratios, gradwatch's own time."""
    lines = [
        f"\n### {result.header}\n",
        "| configuration | median step | wall-time ratio [95% CI] | CPU-time ratio [95% CI] "
        "| own time per step | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in result.rows:
        note = f" ({row.note})" if row.note else ""
        own = f"{row.own_ms:.2f} ms = {1 + row.own_ms / result.base_ms:.3f}x" if row.own_ms else ""
        lines.append(
            f"| {row.label}{note} | {row.step_ms:.1f} ms | {ratio_text(row.wall)} | "
            f"{ratio_text(row.cpu)} | {own} | {row.target} |"
        )
    for (a, b), interval in result.versus.items():
        lines.append(f"| {a} / {b}, same round | | {ratio_text(interval)} | | | |")
    lines.append(
        "\nRatios: median over rounds of (block time / the baseline's block time in the same "
        "round), bootstrap 95% CI. Own time: the time spent inside gradwatch's hooks on the "
        "training thread, or in a peer's own logging code (median over blocks of 10 steps, "
        "measured after the timed rounds), "
        "and 1 + that over the unwatched step: the overhead without the machine's noise, but "
        "also without what gradwatch costs the user's kernels (evicted caches, the device)."
    )
    return lines


def summary_table(results: list[WorkloadResult]) -> list[str]:
    """One table: every configuration's wall-time ratio on every model, then the paired
    comparisons with the peers, then the targets and whether this run met them."""
    if not results:
        return []
    names = [r.name for r in results]
    lines = [
        "\n## Summary: wall-time ratio to the unwatched step of the same round "
        "[bootstrap 95% CI]\n",
        "| configuration | " + " | ".join(names) + " | target |",
        "|---|" + "---:|" * len(names) + "---|",
        "| unwatched step (median) | "
        + " | ".join(f"{r.base_ms:.1f} ms" for r in results)
        + " | |",
    ]
    for row in results[0].rows[1:]:
        cells = [ratio_text(r.row(row.key).wall if r.row(row.key) else None) for r in results]
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {row.target} |")
    for pair in results[0].versus:
        cells = [ratio_text(r.versus.get(pair)) for r in results]
        lines.append(f"| {pair[0]} / {pair[1]} (same round) | " + " | ".join(cells) + " | |")
    for row in results[0].rows[1:]:
        owns = [r.row(row.key) for r in results]
        if any(o is not None and o.own_ms for o in owns):
            cells = [f"{o.own_ms:.2f} ms" if o is not None and o.own_ms else "" for o in owns]
            lines.append(f"| own time per step: {row.key} | " + " | ".join(cells) + " | |")
    lines.append("")
    lines += [f"- {line}" for line in verdicts(results)]
    return lines


def verdicts(results: list[WorkloadResult]) -> list[str]:
    """The issue's targets, read off this run's medians (and what the noise floor is)."""
    out: list[str] = []
    for result in results:
        aa = result.row(AA)
        if aa is not None and aa.wall is not None:
            med, lo, hi = aa.wall
            out.append(
                f"{result.name}: noise floor (A/A) {med:.3f}x, CI half-width "
                f"{(hi - lo) / 2:.3f}: differences smaller than that are not resolved"
            )

    def check(name: str, interval: Interval | None, limit: float, what: str) -> None:
        if interval is None:
            return
        med, lo, hi = interval
        if hi <= limit:
            state = "met"
        elif med <= limit:
            state = "met by the median, not resolved (the interval reaches past the target)"
        else:
            state = "MISSED"
        out.append(f"{name}: {what} {med:.3f}x [{lo:.3f}, {hi:.3f}] (target <= {limit}): {state}")

    for result in results:
        default, locate = result.row(DEFAULT), result.row(LOCATE)
        if result.name == "transformer":
            check(result.name, default.wall if default else None, 1.02, "default")
            check(result.name, locate.wall if locate else None, 1.05, "locate_nonfinite")
        check(
            result.name, result.versus.get((DEFAULT, LIGHTNING)), 1.0, "default / Lightning-style"
        )
        peer = result.row(LIGHTNING)
        if default and peer and default.own_ms and peer.own_ms:
            out.append(
                f"{result.name}: own time per step, default {default.own_ms:.2f} ms against "
                f"Lightning-style {peer.own_ms:.2f} ms ({default.own_ms / peer.own_ms:.2f}x; "
                "without the machine's noise, and without cache effects on the user's kernels)"
            )
    return out


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
        "\n### Ops per gradwatch measurement (torch.profiler, one step between weight "
        "readings, update ratios off)\n",
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


def cuda_memory_section(device: torch.device, steps: int = 20) -> list[str]:
    """What the CUDA caching allocator holds for gradwatch, next to the same steps
    unwatched: persistently (after a step) and at each step's peak, on ordinary steps and
    on update-ratio steps (which snapshot the parameters once: the documented transient
    copy). The persistent and ordinary-step columns should grow with the layers, not the
    parameters: compare the two widths at the same depth."""
    lines = [
        f"\n### Device memory on {torch.cuda.get_device_name(device)} (torch.cuda memory "
        f"stats, {steps} steps, default options)\n",
        "| model | layers | parameter bytes | held after a step | extra peak, ordinary step "
        "| extra peak, update-ratio step |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def run(model: nn.Module, watched: bool) -> tuple[int, int, int]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(8, model[0].in_features, device=device)
        watcher = gradwatch.watch(model, optimizer) if watched else None
        held, peak_ordinary, peak_ratio = 0, 0, 0
        try:
            for step in range(steps):
                synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                loss = model(x).square().mean()
                loss.backward()
                if watcher is not None:
                    watcher.record_loss(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
                if step >= 2:  # after the first steps' caches
                    held = max(held, torch.cuda.memory_allocated(device))
                    if step % 10 == 0:
                        peak_ratio = max(peak_ratio, peak)
                    else:
                        peak_ordinary = max(peak_ordinary, peak)
        finally:
            if watcher is not None:
                watcher.close()
        return held, peak_ordinary, peak_ratio

    for depth, width in ((10, 64), (10, 512), (100, 64)):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)]).to(device)
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        plain = run(model, watched=False)
        watched = run(model, watched=True)
        held, ordinary, ratio = (w - p for w, p in zip(watched, plain))
        lines.append(
            f"| Linear stack {depth} x {width} | {depth} | {param_bytes / 2**10:.0f} KiB | "
            f"{held / 2**10:.1f} KiB | {ordinary / 2**10:.1f} KiB | {ratio / 2**10:.1f} KiB |"
        )
        del model
        torch.cuda.empty_cache()
    lines.append(
        "\nExtra = watched minus the same steps unwatched (the caching allocator rounds each "
        "block up to 512 bytes). Held and ordinary-step peaks are a few vectors of length "
        "(layers) or (parameter tensors): they should not change between the two widths of "
        "depth 10. An update-ratio step's peak adds one copy of the parameters, freed after "
        "the optimizer step."
    )
    return lines


# --------------------------------------------------------------------------- output
def device_option(parser: argparse.ArgumentParser, value: str) -> torch.device:
    """``--device`` as a device, or the parser's error where torch sees no CUDA device."""
    device = torch.device(value)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    return device


def machine_name(device: torch.device) -> str:
    """A short, file-name-safe name of what ran the benchmark: the GPU's name, or cpu."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def default_out_path(
    device: torch.device, today: datetime.date | None = None, directory: str = RESULTS_DIR
) -> str:
    day = (today or datetime.date.today()).isoformat()
    return os.path.join(directory, f"bench_overhead-{day}-{machine_name(device)}.md")


def describe_machine(device: torch.device, threads: int) -> str:
    gpu = ""
    if device.type == "cuda":
        gpu = f", GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return (
        f"gradwatch {gradwatch.__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()} {os.cpu_count()} CPUs, torch "
        f"threads {threads}{gpu}"
    )


def load_text() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class Report:
    """Prints each section as it is done and keeps the whole text for the results file
    (written after every section, so a run cut short by a time limit keeps what it did)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, lines: list[str]) -> None:
        print("\n".join(lines), flush=True)
        self.lines += lines
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "w") as out:
                out.write("\n".join(self.lines) + "\n")


# --------------------------------------------------------------------------- main
SECTIONS = ("timing", "ops", "consumer", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small models, 2 rounds, not saved"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per workload (default 20)")
    parser.add_argument(
        "--block",
        type=int,
        default=10,
        help="timed steps per configuration and round (keep a multiple of 10: the "
        "default options sample activations and update ratios every 10 steps)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (default 2: all cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument(
        "--batch-scale", type=int, default=1, help="multiply every batch (a GPU needs bigger)"
    )
    parser.add_argument("--memory-steps", type=int, help="steps of the host-memory run")
    parser.add_argument("--own-steps", type=int, help="steps of the own-time run (0: none)")
    parser.add_argument(
        "--only", default="", help="comma-separated sections: " + ",".join(SECTIONS)
    )
    parser.add_argument(
        "--workloads", default="transformer,cnn,mlp", help="comma-separated workload names"
    )
    parser.add_argument(
        "--extras",
        action="store_true",
        help="also update_ratio_every=1, detect_anomaly, histograms, activation hooks",
    )
    parser.add_argument("--out", help="the results file (default: in --out-dir)")
    parser.add_argument(
        "--out-dir",
        default=RESULTS_DIR,
        help="where the results file goes, named by the date and the machine "
        "(default benchmarks/results/)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 20)
    args.memory_steps = args.memory_steps or (300 if args.quick else 10_000)
    if args.own_steps is None:
        args.own_steps = 10 if args.quick else 30
    args.sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    if args.block < 1 or args.rounds < 1 or args.batch_scale < 1:
        parser.error("--block, --rounds and --batch-scale must be positive")
    if 0 < args.own_steps < 10:
        parser.error(f"--own-steps: 0 (none) or at least 10 (one block), got {args.own_steps}")
    args.device = device_option(parser, args.device)
    names = [w.name for w in workloads(small=True)]
    args.workload_names = [n for n in args.workloads.split(",") if n]
    if not set(args.workload_names) <= set(names):
        parser.error(f"--workloads: choose from {names}, got {args.workloads!r}")
    return args


def main(argv: list[str] | None = None) -> list[WorkloadResult]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("gradwatch").addHandler(logging.NullHandler())
    logging.getLogger("gradwatch").propagate = False
    if args.no_save:
        path = None
    elif args.out:
        path = args.out
    elif not args.quick:
        path = default_out_path(args.device, directory=args.out_dir)
    else:
        path = None
    if path:
        print(f"results file: {path}", flush=True)  # benchmarks/gpu_check.sh reads this line
    report = Report(path)
    shown = sys.argv if argv is None else ["benchmarks/bench_overhead.py", *argv]
    report.add(
        [
            f"# bench_overhead, {datetime.datetime.now():%Y-%m-%d %H:%M}",
            "",
            describe_machine(args.device, torch.get_num_threads()),
            f"command: {' '.join([os.path.basename(sys.executable), *shown])}",
            f"load average at the start: {load_text()}",
        ]
    )
    chosen = [
        w
        for w in workloads(args.device, batch_scale=args.batch_scale, small=args.quick)
        if w.name in args.workload_names
    ]
    results: list[WorkloadResult] = []
    if "timing" in args.sections:
        with tempfile.TemporaryDirectory() as root:
            for workload in chosen:
                result = time_workload(
                    workload,
                    configs(extras=args.extras),
                    args.rounds,
                    args.block,
                    root,
                    own_steps=args.own_steps,
                )
                results.append(result)
                report.add(workload_table(result))
    if "ops" in args.sections:
        report.add(ops_section(workloads(small=args.quick)[0]) + device_memory_section())
    if "consumer" in args.sections:
        report.add(consumer_section({r.name: r.base_ms for r in results}))
    if "memory" in args.sections:
        report.add(memory_section(args.memory_steps))
        if args.device.type == "cuda":
            report.add(cuda_memory_section(args.device))
    report.add([*summary_table(results), f"\nload average at the end: {load_text()}"])
    if report.path:
        print(f"\nwritten to {report.path}", flush=True)
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
