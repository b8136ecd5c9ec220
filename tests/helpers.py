"""Small real models, data and the one training loop shared by the tests."""

from __future__ import annotations

import collections
import contextlib
import io
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradwatch

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[int], object]


def framed(payload: bytes) -> bytes:
    """``payload`` framed as TensorBoard's own writer frames a record (the reference for
    gradwatch's framing, and damage built into event files)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    RecordWriter(buffer).write(payload)
    return buffer.getvalue()


def make_mlp(depth: int = 3, width: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(8 if i == 0 else width, width))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def regression_batches(n: int, batch: int = 32, seed: int = 1) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 8, generator=generator)
        out.append((x, x.sum(dim=1, keepdim=True).sin()))
    return out


def poisoned(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with one NaN, so the caller's batch stays clean for a twin run."""
    x = x.clone()
    x[(0,) * x.dim()] = float("nan")  # the first element: x[0, 0] for a batch of rows
    return x


def train_steps(
    model: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    gw: gradwatch.Watcher | None = None,
    *,
    loss_fn: LossFn = nn.functional.mse_loss,
    nan_at: int | None = None,
    before_step: StepHook | None = None,
    after_step: StepHook | None = None,
) -> list[torch.Tensor]:
    """The plain loop every test trains with: forward, loss, backward, ``gw.record_loss``
    (when a watcher is given), ``optimizer.step()``, ``zero_grad()``.

    ``model`` is what is called on the input (a compiled or wrapped module works; the
    optimizer owns the parameters). ``nan_at=k`` puts a NaN into step k's input.
    ``before_step(step)`` runs after backward, when the gradients are there and the
    weights have not moved (clip by hand, corrupt a gradient, snapshot the state);
    ``after_step(step)`` runs once the step is done. Returns each step's loss, detached.
    """
    losses = []
    for step, (x, y) in enumerate(batches):
        if step == nan_at:
            x = poisoned(x)
        loss = loss_fn(model(x), y)
        loss.backward()
        if gw is not None:
            gw.record_loss(loss)
        if before_step is not None:
            before_step(step)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach().clone())
        if after_step is not None:
            after_step(step)
    return losses


def watched_run(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn = nn.functional.mse_loss,
    nan_at: int | None = None,
    **watch_options: Any,
) -> tuple[gradwatch.Watcher, list[torch.Tensor]]:
    """Train ``model`` under ``gradwatch.watch(model, optimizer, **watch_options)`` with
    :func:`train_steps`, closing the watcher at the end; returns it and the losses.

    The optimizer defaults to plain SGD with lr=0.01.
    """
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, **watch_options) as gw:
        losses = train_steps(model, optimizer, batches, gw, loss_fn=loss_fn, nan_at=nan_at)
    return gw, losses


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched at the top level (what would be kernel launches)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _set_sync_debug_mode(mode: int | str) -> None:
    """``torch.cuda.set_sync_debug_mode`` without its "prototype feature" UserWarning
    (torch 2.11 warns each time; pyproject turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Synchronization debug mode is a prototype", category=UserWarning
        )
        torch.cuda.set_sync_debug_mode(mode)


@contextlib.contextmanager
def sync_is_an_error() -> Iterator[None]:
    """Within the block, every CUDA call that synchronises the host with the device
    (``.item()``, ``.cpu()``, a blocking copy) raises."""
    previous = torch.cuda.get_sync_debug_mode()
    try:
        # Inside the try: whatever happens, the mode is put back, so one failing test
        # cannot turn every later test's ordinary synchronising call into an error.
        _set_sync_debug_mode("error")
        yield
    finally:
        _set_sync_debug_mode(previous)
