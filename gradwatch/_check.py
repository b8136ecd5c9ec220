""":func:`gradwatch.check`: train a model for a few steps under watch and return a verdict.

This is the CI smoke test and the CLI's engine: it runs the user's own model, data and
loss for ``steps`` optimizer steps with every detector on, and turns what the watcher
saw into a :class:`~gradwatch.Report`. It may synchronise with the device freely (it is
not a training loop anyone times), but it never changes what training computes.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradwatch._config import WatchConfig
from gradwatch._errors import NonFiniteError
from gradwatch._history import History
from gradwatch._measure.layers import LayerIndex
from gradwatch._report import LayerSummary, Report
from gradwatch._validate import require_int
from gradwatch._watcher import Watcher

Batch = tuple[Any, Any]


def _validate(
    model: object, data: object, loss_fn: object, steps: object, baseline: object
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the model itself: gradwatch.check(model, data, loss_fn)."
        )
    if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be an iterable of (inputs, targets) batches (a DataLoader, a list of "
            f"tuples, a generator), got {type(data).__name__}. For tensors x and y pass e.g. "
            "[(x, y)] or torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=32)."
        )
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(model(inputs), targets), got "
            f"{type(loss_fn).__name__}. Pass e.g. torch.nn.functional.cross_entropy or "
            "torch.nn.MSELoss()."
        )
    require_int(
        "steps", steps, minimum=1, hint="Pass the number of optimizer steps, e.g. steps=20."
    )
    if not isinstance(baseline, bool):
        raise TypeError(
            f"baseline must be True or False, got {type(baseline).__name__} {baseline!r}."
        )


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to the model's device."""
    if isinstance(obj, Tensor):
        return obj if obj.device == device else obj.to(device)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_device(item, device) for item in obj)
    if isinstance(obj, list):
        return [_to_device(item, device) for item in obj]
    if isinstance(obj, dict):
        return {key: _to_device(value, device) for key, value in obj.items()}
    return obj


def _as_pair(batch: object, position: int) -> Batch:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    shape = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TypeError(
        f"data must yield (inputs, targets) pairs; batch {position} is a "
        f"{type(batch).__name__}{shape}. Wrap your data so that each batch is a 2-tuple, e.g. "
        "a DataLoader over TensorDataset(x, y), or [(x, y), ...]."
    )


def _cycle(data: Iterable[Any], steps: int) -> Iterator[Batch]:
    """``steps`` batches from ``data``, starting over when it runs out.

    A re-iterable (list, DataLoader) is iterated afresh each epoch, so a shuffling loader
    keeps shuffling; a one-shot iterator (a generator) is replayed from the batches it gave.
    """
    one_shot = iter(data) is data
    seen: list[Batch] = []
    produced = 0
    source: Iterator[Any] = iter(data)
    while produced < steps:
        got_any = False
        for batch in source:
            got_any = True
            pair = _as_pair(batch, produced)
            if one_shot:
                seen.append(pair)
            yield pair
            produced += 1
            if produced >= steps:
                return
        if not got_any and produced == 0:
            raise ValueError(
                "data yielded no batches. Pass a non-empty iterable of (inputs, targets)."
            )
        if one_shot:
            if not seen:
                return
            source = itertools.cycle(seen)
        else:
            source = iter(data)
            if produced > 0 and not got_any:
                raise ValueError(
                    "data yielded no batches on its second pass; pass a list or a DataLoader."
                )


def _loss_of(model: nn.Module, loss_fn: Callable[..., Any], batch: Batch, step: int) -> Tensor:
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"loss_fn must return a scalar torch.Tensor, got {type(loss).__name__} at step "
            f"{step}. Return the loss tensor itself (not loss.item())."
        )
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar loss, got a tensor of shape {tuple(loss.shape)} at "
            f"step {step}. Reduce it (reduction='mean', or loss.mean())."
        )
    return loss.reshape(())


def _frozen_losses(
    model: nn.Module, loss_fn: Callable[..., Any], batches: list[Batch]
) -> list[float]:
    """The learning-rate-zero baseline: each batch's loss with the weights left as they are.

    Runs in training mode (dropout and batch statistics behave as in the real run) without
    gradients; buffers that a forward pass updates (BatchNorm running statistics) are put
    back afterwards, so the model is exactly as before.
    """
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with torch.no_grad():
            values = [_loss_of(model, loss_fn, batch, step) for step, batch in enumerate(batches)]
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)
    return [float(v) for v in torch.stack(values).float().cpu()]  # one sync, after the loop


def _layer_summaries(index: LayerIndex, history: History) -> tuple[LayerSummary, ...]:
    records = list(history)
    if not records:
        return tuple(
            LayerSummary(name, kind, math.nan, math.nan, math.nan, math.nan)
            for name, kind in zip(index.names, index.module_types)
        )
    grads = np.stack([r.grad_norm for r in records])
    weights = np.stack([r.weight_norm for r in records])

    def finite_max(column: np.ndarray) -> float:
        finite = column[np.isfinite(column)]
        return float(finite.max()) if finite.size else math.nan

    last = records[-1]
    return tuple(
        LayerSummary(
            name=name,
            type=kind,
            final_grad_norm=float(last.grad_norm[i]),
            final_weight_norm=float(last.weight_norm[i]),
            max_grad_norm=finite_max(grads[:, i]),
            max_weight_norm=finite_max(weights[:, i]),
        )
        for i, (name, kind) in enumerate(zip(index.names, index.module_types))
    )


def check(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[..., Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 20,
    baseline: bool = False,
    logdir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Report:
    """Train ``model`` in place for ``steps`` optimizer steps under watch; return a Report.

    Each step takes the next ``(inputs, targets)`` batch from ``data`` (cycled when it runs
    out; tensors are moved to the model's device), computes
    ``loss_fn(model(inputs), targets)``, backpropagates and steps the optimizer, with every
    detector watching. ``Report.ok`` is True when no warning or error was raised.

    Args:
        model: the module to check; it is trained in place (pass a copy to keep it).
        data: an iterable of ``(inputs, targets)`` batches.
        loss_fn: called as ``loss_fn(model(inputs), targets)``; returns a scalar tensor.
        optimizer: the optimizer to use; ``None`` means ``torch.optim.Adam(lr=1e-3)``.
        steps: how many optimizer steps to take.
        baseline: also measure the learning-rate-zero baseline: before training, the loss
            of the same batches with the weights frozen, whose fluctuation is the noise
            floor ``not_learning`` is judged against. Costs ``steps`` forward passes.
        logdir: write TensorBoard event files there, as :func:`gradwatch.watch` does.
        **options: fields of :class:`gradwatch.WatchConfig` (thresholds, windows...).
    """
    _validate(model, data, loss_fn, steps, baseline)
    config = WatchConfig.from_options(options, caller="check()")
    if optimizer is None:
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "model has no trainable parameters (none requires grad), so there is nothing "
                "to check. Unfreeze the parameters you want to train."
            )
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    index = LayerIndex.from_model(model)
    device = index.device()
    was_training = model.training
    model.train()
    try:
        batches: Iterable[Batch] = _cycle(data, steps)
        baseline_losses: list[float] | None = None
        if baseline:
            batches = [(_to_device(x, device), _to_device(y, device)) for x, y in batches]
            baseline_losses = _frozen_losses(model, loss_fn, batches)
        watcher = Watcher(
            model, optimizer, logdir=logdir, config=config, loss_baseline=baseline_losses
        )
        losses: list[Tensor] = []
        stopped: str | None = None
        taken = 0
        with watcher:
            for step, (inputs, targets) in enumerate(batches):
                batch = (_to_device(inputs, device), _to_device(targets, device))
                optimizer.zero_grad(set_to_none=True)
                loss = _loss_of(model, loss_fn, batch, step)
                loss.backward()
                watcher.record_loss(loss)
                losses.append(loss.detach())
                try:
                    optimizer.step()
                except NonFiniteError as error:
                    stopped = f"on_nonfinite='raise' stopped training at step {error.step}."
                    break
                taken += 1
            optimizer.zero_grad(set_to_none=True)
        alerts = tuple(watcher.alerts)
        diagnoses = tuple(watcher.diagnoses)
        layers = _layer_summaries(watcher.index, watcher.history)
    finally:
        model.train(was_training)
    loss_values = (
        [float(v) for v in torch.stack(losses).float().cpu()] if losses else []
    )  # one sync for the whole run, after training
    return Report(
        ok=not any(alert.severity in ("warning", "error") for alert in alerts),
        alerts=alerts,
        steps=taken,
        steps_requested=steps,
        losses=tuple(loss_values),
        layers=layers,
        baseline_losses=None if baseline_losses is None else tuple(baseline_losses),
        stopped=stopped,
        diagnoses=diagnoses,
    )
