""":func:`gradwatch.check`: train a model for a few steps under watch and return a verdict.

This is the CI smoke test and the CLI's engine: it runs the user's own model, data and
loss for ``steps`` optimizer steps with every detector on, and turns what the watcher
saw into a :class:`~gradwatch.Report`. It may synchronise with the device freely (it is
not a training loop anyone times), but it never changes what training computes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradwatch._config import WatchConfig
from gradwatch._errors import NonFiniteError
from gradwatch._fixes import MIN_STEPS, FixTrial, Snapshot, propose, run_trials, tail_loss
from gradwatch._fixes.catalogue import Context
from gradwatch._history import History
from gradwatch._measure.layers import LayerIndex
from gradwatch._report import LayerSummary, Report
from gradwatch._validate import require_int
from gradwatch._watcher import Watcher
from gradwatch._watcher import _validate_model_and_optimizer as validate_model_and_optimizer

Batch = tuple[Any, Any]


def _validate(
    model: object,
    data: object,
    loss_fn: object,
    steps: object,
    baseline: object,
    try_fixes: object,
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
    if loss_fn is None and not _is_hf_model(model):
        raise TypeError(
            f"loss_fn=None uses the model's own loss, which only a Hugging Face model "
            f"computes (a transformers PreTrainedModel given labels=); model is a "
            f"{type(model).__name__}. Pass loss_fn, called as loss_fn(model(inputs), "
            "targets), e.g. torch.nn.functional.cross_entropy."
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(model(inputs), targets), got "
            f"{type(loss_fn).__name__}. Pass e.g. torch.nn.functional.cross_entropy or "
            "torch.nn.MSELoss()."
        )
    require_int(
        "steps", steps, minimum=1, hint="Pass the number of optimizer steps, e.g. steps=20."
    )
    for name, value in (("baseline", baseline), ("try_fixes", try_fixes)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")
    if try_fixes and isinstance(steps, int) and steps < MIN_STEPS:
        raise ValueError(
            f"try_fixes=True needs steps >= {MIN_STEPS} to judge whether a fix works (the "
            f"detectors judge trends over several steps), got steps={steps}. Pass "
            f"steps={max(MIN_STEPS, 20)} or more, or try_fixes=False."
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


def _is_model_output(obj: object) -> bool:
    """A Hugging Face ``ModelOutput`` (recognised by class, without importing transformers)."""
    return any(cls.__name__ == "ModelOutput" for cls in type(obj).__mro__)


def _is_hf_model(model: nn.Module) -> bool:
    """A Hugging Face ``PreTrainedModel`` (it has a config and a main input name)."""
    return hasattr(model, "config") and isinstance(getattr(model, "main_input_name", None), str)


def _forward(model: nn.Module, inputs: Any, **labels: Any) -> Any:
    """``model(inputs)``; a Hugging Face model given a dict is called the HF way,
    ``model(**inputs)`` (with ``labels=`` when its own loss is wanted)."""
    if isinstance(inputs, Mapping) and _is_hf_model(model):
        return model(**inputs, **labels)
    return model(inputs, **labels)


def _loss_of(
    model: nn.Module, loss_fn: Callable[..., Any] | None, batch: Batch, step: int
) -> Tensor:
    """One batch's loss: ``loss_fn(model(inputs), targets)`` (with a Hugging Face
    ``ModelOutput``'s ``.logits`` in place of the output), or with ``loss_fn=None`` the
    model's own ``.loss`` given ``labels=targets``. Refuses what cannot be trained on."""
    inputs, targets = batch
    if loss_fn is None:
        output = _forward(model, inputs, labels=targets)
        loss = getattr(output, "loss", None)
        source = "the model's own loss (loss_fn=None)"
        if loss is None:
            raise TypeError(
                f"loss_fn=None uses the model's own loss, but {type(model).__name__} returned "
                f"{type(output).__name__} with no .loss at step {step} when called with "
                "labels=targets. Check that targets are the labels the model expects, or pass "
                "loss_fn (e.g. torch.nn.functional.cross_entropy), which gets output.logits."
            )
    else:
        output = _forward(model, inputs)
        if _is_model_output(output):
            logits = getattr(output, "logits", None)
            if not isinstance(logits, Tensor):
                raise TypeError(
                    f"{type(output).__name__} has no .logits to pass to loss_fn at step "
                    f"{step}. Pass loss_fn=None to use the model's own .loss (targets are "
                    "passed as labels=)."
                )
            output = logits
        loss = loss_fn(output, targets)
        source = "loss_fn"
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
    if loss.is_complex():
        raise TypeError(
            f"{source} returned a complex tensor ({loss.dtype}) at step {step}; gradients "
            "need a real loss. Return a real number, e.g. z.abs().pow(2).mean() for a "
            "complex error z."
        )
    if not loss.is_floating_point():
        raise TypeError(
            f"{source} returned an integer tensor ({loss.dtype}) at step {step}; a loss "
            "must be a floating-point tensor computed from the model's output (a count, an "
            "argmax or a comparison has no gradient). Return e.g. "
            "torch.nn.functional.cross_entropy(output, targets)."
        )
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise ValueError(
            f"{source} returned a loss that does not depend on the model's trainable "
            f"parameters at step {step} (requires_grad=False, no grad_fn): it was detached "
            "(.detach(), .item() or numpy turned back into a tensor, torch.tensor(...)) or "
            "computed under torch.no_grad(), so backward() has nothing to do. Compute the "
            "loss from the model's output with torch operations."
        )
    return loss.reshape(())


def _frozen_losses(
    model: nn.Module, loss_fn: Callable[..., Any] | None, batches: list[Batch]
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


def _gradient_history(history: History) -> tuple[tuple[int, tuple[float, ...]], ...]:
    return tuple((r.step, tuple(float(v) for v in r.grad_norm)) for r in history)


@dataclasses.dataclass
class _Run:
    """One watched run: its Report and the total gradient norm of each step (what the
    clipping fix's norm is chosen from)."""

    report: Report
    grad_norms: list[float]
    norm_steps: list[int]


def _nothing() -> None:
    return None


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Iterable[Any],
    loss_fn: Callable[..., Any] | None,
    *,
    steps: int,
    config: WatchConfig,
    logdir: str | os.PathLike[str] | None,
    baseline: bool,
    before_step: Callable[[], None] = _nothing,
    after_step: Callable[[], None] = _nothing,
) -> _Run:
    """The check's loop: ``steps`` optimizer steps under a Watcher, then the Report.

    ``before_step()`` runs after backward and before each optimizer step (a trial's
    clipping), ``after_step()`` after it (a trial's warmup scheduler).
    """
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
                before_step()
                try:
                    optimizer.step()
                except NonFiniteError as error:
                    stopped = f"on_nonfinite='raise' stopped training at step {error.step}."
                    break
                after_step()
                taken += 1
            optimizer.zero_grad(set_to_none=True)
        alerts = tuple(watcher.alerts)
        diagnoses = tuple(watcher.diagnoses)
        layers = _layer_summaries(watcher.index, watcher.history)
        flow = _gradient_history(watcher.history)
        norms = [float(v) for v in watcher.history.series("total_grad_norm")]
        norm_steps = [record.step for record in watcher.history]
    finally:
        model.train(was_training)
    loss_values = (
        [float(v) for v in torch.stack(losses).float().cpu()] if losses else []
    )  # one sync for the whole run, after training
    report = Report(
        ok=not any(alert.severity in ("warning", "error") for alert in alerts),
        alerts=alerts,
        steps=taken,
        steps_requested=steps,
        losses=tuple(loss_values),
        layers=layers,
        baseline_losses=None if baseline_losses is None else tuple(baseline_losses),
        stopped=stopped,
        diagnoses=diagnoses,
        gradient_history=flow,
    )
    return _Run(report, norms, norm_steps)


class _QuietAlerts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def quiet_alert_log() -> Iterator[None]:
    """Keep the watchers' alert lines (logger ``gradwatch``) out of the log in this
    block: the trials' alerts are not the user's run, and the pytest plugin shows them
    in its failure message instead (once). Other loggers are untouched."""
    alert_logger = logging.getLogger("gradwatch")
    quiet = _QuietAlerts()
    alert_logger.addFilter(quiet)
    try:
        yield
    finally:
        alert_logger.removeFilter(quiet)


def check(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[..., Any] | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 20,
    baseline: bool = False,
    try_fixes: bool = False,
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
            A Hugging Face model's ``ModelOutput`` is passed as its ``.logits``; with
            ``loss_fn=None`` a Hugging Face model's own ``.loss`` is used, the targets
            passed as ``labels=`` (a dict of inputs is passed as ``model(**inputs)``).
        optimizer: the optimizer to use; ``None`` means ``torch.optim.Adam(lr=1e-3)``.
        steps: how many optimizer steps to take.
        baseline: also measure the learning-rate-zero baseline: before training, the loss
            of the same batches with the weights frozen, whose fluctuation is the noise
            floor ``not_learning`` is judged against. Costs ``steps`` forward passes.
        try_fixes: when the run is unhealthy, re-run the check from the same starting
            weights (a deep copy taken before training) with each fix the diagnoses
            propose that gradwatch can apply itself, and list the results best first in
            ``Report.fix_trials``. Costs up to ``MAX_TRIALS`` (6) more checks; needs
            ``steps >= 10``. The model and optimizer you passed are not touched by them.
        logdir: write TensorBoard event files there, as :func:`gradwatch.watch` does.
        **options: fields of :class:`gradwatch.WatchConfig` (thresholds, windows...).
    """
    _validate(model, data, loss_fn, steps, baseline, try_fixes)
    config = WatchConfig.from_options(options, caller="check()")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "model has no trainable parameters (none requires grad), so there is nothing "
            "to check"
            + ("" if optimizer is None else " and optimizer has nothing to update")
            + ". "
            "Unfreeze the parameters you want to train (p.requires_grad_(True))."
        )
    if optimizer is None:
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    snapshot: Snapshot | None = None
    batches: list[Batch] = []
    if try_fixes:
        validate_model_and_optimizer(model, optimizer)
        # Every run must see the same batches: a one-shot iterator can be read only once,
        # a shuffling loader would shuffle anew (and draw from the random state, so the
        # snapshot's random state is taken after it).
        data = batches = list(_cycle(data, steps))
        snapshot = Snapshot.take(model, optimizer)  # before anything trains the model
    original = _train(
        model,
        optimizer,
        data,
        loss_fn,
        steps=steps,
        config=config,
        logdir=logdir,
        baseline=baseline,
    )
    report = original.report
    if snapshot is None:
        return report
    fix_trials: tuple[FixTrial, ...] = ()
    if not report.ok:
        fix_trials = _try_fixes(
            original,
            snapshot,
            batches,
            loss_fn,
            steps=steps,
            config=config,
            baseline=baseline,
        )
    return dataclasses.replace(report, fix_trials=fix_trials, tried_fixes=True)


#: The CLI's progress line for the trials: ``callback(i, n, fix_id)`` before trial i of n.
_TRIAL_PROGRESS: contextvars.ContextVar[Callable[[int, int, str], None] | None] = (
    contextvars.ContextVar("gradwatch_trial_progress", default=None)
)


@contextlib.contextmanager
def reporting_trials(callback: Callable[[int, int, str], None]) -> Iterator[None]:
    """Call ``callback(i, n, fix)`` before each fix trial of a check in this block."""
    token = _TRIAL_PROGRESS.set(callback)
    try:
        yield
    finally:
        _TRIAL_PROGRESS.reset(token)


def _try_fixes(
    original: _Run,
    snapshot: Snapshot,
    data: list[Batch],
    loss_fn: Callable[..., Any] | None,
    *,
    steps: int,
    config: WatchConfig,
    baseline: bool,
) -> tuple[FixTrial, ...]:
    """The fix trials of an unhealthy run, best first (empty when no fix applies)."""
    report = original.report
    facts = snapshot.optimizer_facts
    context = Context(
        lr=facts.lr if facts is not None else None,
        adaptive=facts.adaptive if facts is not None else False,
        steps=steps,
        grad_norms=original.grad_norms,
        norm_steps=original.norm_steps,
    )
    fixes = propose(report.diagnoses, context)
    if not fixes:
        return ()

    def runner(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        before_step: Callable[[], None],
        after_step: Callable[[], None],
    ) -> Report:
        run = _train(
            model,
            optimizer,
            data,
            loss_fn,
            steps=steps,
            config=config,
            logdir=None,
            baseline=baseline,
            before_step=before_step,
            after_step=after_step,
        )
        return run.report

    callback = _TRIAL_PROGRESS.get()
    progress = None if callback is None else (lambda i, n, fix: callback(i, n, fix.id))
    with quiet_alert_log():
        return run_trials(fixes, snapshot, runner, tail_loss(report.losses), progress=progress)
