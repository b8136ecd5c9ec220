"""gradwatch for the Hugging Face ``Trainer``: ``GradWatchCallback``.

::

    from gradwatch.integrations.transformers import GradWatchCallback

    trainer = transformers.Trainer(model, args, train_dataset=data,
                                   callbacks=[GradWatchCallback(logdir="runs/hf")])
    trainer.train()

What is measured, and when: the callback watches the model and the optimizer inside the
Trainer's ``AcceleratedOptimizer``, so one watched step is one optimizer step (after all
``gradient_accumulation_steps`` micro-batches), measured right before the update.

Clipping: the Trainer clips to ``args.max_grad_norm`` (default 1.0) *before*
``optimizer.step()`` and before any callback event that could see the gradients, so a
measurement at the step would see clipped gradients. By default (``take_over_clipping=
True``) the callback therefore moves that clipping into gradwatch for the run: it sets
``args.max_grad_norm`` to 0 at ``on_train_begin`` and clips with ``clip=max_grad_norm``
(the same global-L2-norm clip, ``min(1, max_norm / (norm + 1e-6))``, as
``clip_grad_norm_``) right after measuring, so the statistics are of the unclipped
gradient, ``total/clip_coef`` is logged, and the update is the Trainer's own up to float
rounding. ``args.max_grad_norm`` is restored at ``on_train_end`` (or at the next
``on_train_begin`` if training failed). The Trainer's logged ``grad_norm`` stays the
pre-clip norm. With ``take_over_clipping=False``, or under DeepSpeed (which clips inside
its engine), the Trainer clips and gradwatch measures the *clipped* gradient.

The loss is the step's loss as the Trainer logs it, read from the model outputs' ``loss``
in a forward hook (no host sync): the mean over the step's training micro-batches, or
their sum when the Trainer passed ``num_items_in_batch`` (the model then already divided
each micro-batch's loss by the step's token count).

Where the numbers go, on the Trainer's own step axis (gradwatch's step of an update is
``state.global_step`` once that update is done, the step at which the Trainer logs its
``grad_norm``), scalars every ``logging_steps`` steps as the Trainer logs its own
(``logging_first_step`` included; ``log_every=`` given to the callback overrides that
cadence), alerts as soon as they are raised:

* ``report_to`` with ``"tensorboard"``: gradwatch's event file goes into the run
  directory of the Trainer's ``TensorBoardCallback``, found as it finds it
  (``TENSORBOARD_LOGGING_DIR``, else ``<output_dir>/runs/<date>_<host>``), so both sets
  of scalars are one TensorBoard run: the Trainer's ``train/grad_norm`` at step 5 and
  gradwatch's ``total/grad_norm`` at step 5 are the same update. ``logdir=`` puts
  gradwatch's file in that directory instead.
* ``"mlflow"``: into the run the Trainer's ``MLflowCallback`` started, through
  :class:`gradwatch.sinks.MLflowSink`, names under ``gradwatch/`` (``gradwatch/total/
  grad_norm``: the Trainer's own ``grad_norm`` metric would clash with gradwatch's
  ``grad_norm/<layer>`` in MLflow's file store); ``"wandb"``: into ``wandb.run`` through
  :class:`gradwatch.sinks.WandbSink`. Other integrations get nothing from gradwatch.
* Every alert is also appended to the Trainer's log history (``state.log_history``,
  saved in ``trainer_state.json`` with each checkpoint) as ``{"gradwatch_alert": kind,
  "gradwatch_severity": ..., "gradwatch_layer": ..., "gradwatch_message": text, "step":
  step, "epoch": epoch}``; ``callback.alerts`` lists them at the Trainer's steps.
* At the end of training the run's diagnosis (the cause, what to change, the alerts as
  evidence) is logged to the ``transformers.gradwatch`` logger.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._measure.hooks import SafeHook
from gradwatch._sinks.public import PublicSinkAdapter, StepScalars
from gradwatch._sinks.public import Sink as PublicSink
from gradwatch._watcher import Watcher
from gradwatch.integrations._common import (
    check_logdir,
    log_final_report,
    missing_framework,
    tensorboard_sink,
    watcher_config,
)
from gradwatch.integrations._route import (
    AtTrainerSteps,
    Prefixed,
    TrainerSteps,
    attach,
    every,
)

try:
    from transformers import TrainerCallback
except ImportError as _error:
    raise missing_framework("Hugging Face transformers", "transformers", _error) from None

__all__ = ["GradWatchCallback"]

#: The Trainer's log hierarchy: the end-of-training diagnosis goes here.
transformers_log = logging.getLogger("transformers.gradwatch")


class GradWatchCallback(TrainerCallback):
    """Watches the model a Hugging Face ``Trainer`` trains; one watched step per
    optimizer step.

    Args:
        logdir: where to write gradwatch's TensorBoard event file. None (the default):
            the run directory of the Trainer's TensorBoard callback when ``report_to``
            includes ``"tensorboard"``, otherwise no file.
        take_over_clipping: measure before the Trainer's ``max_grad_norm`` clipping by
            doing that clipping in gradwatch (see the module docstring). Default True.
        **options: fields of :class:`gradwatch.WatchConfig`, validated here. ``log_every``
            counts the Trainer's steps; without it scalars follow ``logging_steps``.

    Attributes:
        watcher: the :class:`gradwatch.Watcher` of the current or last ``train()``.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str] | None = None,
        *,
        take_over_clipping: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(take_over_clipping, bool):
            raise TypeError(
                f"take_over_clipping must be True or False, got "
                f"{type(take_over_clipping).__name__} {take_over_clipping!r}."
            )
        self.logdir = check_logdir(logdir)
        self.take_over_clipping = take_over_clipping
        self.config = WatchConfig.from_options(options, caller="GradWatchCallback()")
        self._log_every: int | None = self.config.log_every if "log_every" in options else None
        self.watcher: Watcher | None = None
        self._steps = TrainerSteps()
        self._loss_hook: torch.utils.hooks.RemovableHandle | None = None
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._loss_presummed = False  # micro-batch losses already divided by the step's size
        self._restore: tuple[Any, float] | None = None  # (args, max_grad_norm) to put back

    @property
    def alerts(self) -> list[Alert]:
        """Every alert of the current (or last) training run, at the Trainer's steps."""
        if self.watcher is None:
            return []
        return [self._steps.alert(alert) for alert in self.watcher.alerts]

    def resolve_logdir(self, args: Any, state: Any = None) -> str | None:
        """``logdir``, else the run directory of the Trainer's TensorBoard callback when
        ``report_to`` includes ``"tensorboard"``, else None."""
        if self.logdir is not None:
            return self.logdir
        if "tensorboard" not in _reported_to(args):
            return None
        return tensorboard_run_dir(args, state)

    # ------------------------------------------------------------ Trainer events
    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        self._finish()  # a previous train() that failed never reached on_train_end
        if model is None or optimizer is None:
            raise ValueError(
                "GradWatchCallback needs the Trainer's model and optimizer at "
                "on_train_begin; add it through Trainer(callbacks=[GradWatchCallback()])."
            )
        config = self.config
        max_norm = args.max_grad_norm
        deepspeed = getattr(args, "deepspeed", None)  # its engine clips on its own
        # FSDP (v1, through accelerate) shards parameters as plain flat tensors, whose
        # global norm gradwatch cannot tell from a replica's: leave clipping to it.
        fsdp = bool(getattr(args, "fsdp", None))
        if self.take_over_clipping and max_norm and max_norm > 0 and not (deepspeed or fsdp):
            if config.clip is not None:
                raise ValueError(
                    f"GradWatchCallback got clip={config.clip!r} while the Trainer clips to "
                    f"max_grad_norm={max_norm}: choose one. Set max_grad_norm=0 in the "
                    "TrainingArguments to clip with gradwatch, or drop clip= to keep the "
                    "Trainer's clipping (measured before it)."
                )
            config = dataclasses.replace(config, clip=float(max_norm))
            self._restore = (args, max_norm)
            args.max_grad_norm = 0.0  # the Trainer reads it at every step
        self._loss_sum, self._loss_count, self._loss_presummed = None, 0, False
        self._steps = TrainerSteps(keep=self._cadence(args, state))
        watcher = Watcher(model, _torch_optimizer(optimizer), config=watcher_config(config))
        self.watcher = watcher
        if watcher.is_writer:
            self._attach_sinks(watcher, args, state)
        # Inert in a copy of the model and while traced (Trainer(torch_compile=True)).
        hook = SafeHook(self, "_observe_loss", on_error="_drop_loss")
        self._loss_hook = model.register_forward_hook(hook, with_kwargs=True)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        watcher = self.watcher
        if watcher is None or watcher.closed:
            return
        if self._steps.offset is None:
            # The Trainer counts this update as global_step + 1 once it is done (and logs
            # its grad_norm there); gradwatch counts it as step_count.
            self._steps.offset = state.global_step + 1 - watcher.step_count
        if self._loss_sum is None:
            return
        loss = self._loss_sum
        if not self._loss_presummed:
            # A device division: the loss is read back with the step's statistics, no sync.
            loss = loss / max(self._loss_count, 1)
        elif watcher.world_size > 1:
            # Each rank's loss is its share of the global token count; the Trainer
            # multiplies by the number of processes, and gradwatch's global loss is the
            # mean over ranks: scale the same way so both log the same loss.
            loss = loss * watcher.world_size
        watcher.record_loss(loss)
        self._loss_sum, self._loss_count, self._loss_presummed = None, 0, False

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish()
        if state.is_world_process_zero:
            log_final_report(self.watcher, self._steps, transformers_log)

    # ---------------------------------------------------------------- internals
    def _observe_loss(
        self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any
    ) -> None:
        """Sum the training forwards' ``loss`` outputs (evaluation forwards are skipped)."""
        if not module.training or not torch.is_grad_enabled():
            return
        if kwargs.get("num_items_in_batch") is not None:
            self._loss_presummed = True
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            return
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def _attach_sinks(self, watcher: Watcher, args: Any, state: Any) -> None:
        """gradwatch's TensorBoard file, the tracking runs of ``report_to``, the log
        history: each on the Trainer's steps."""
        steps = self._steps
        reported = _reported_to(args)
        if self.logdir is not None:  # gradwatch's own run: every log_every steps
            own = tensorboard_sink(watcher, self.logdir, steps, every(self.config.log_every))
            attach(watcher, own, "TensorBoard")
        elif "tensorboard" in reported:  # the Trainer's run: its logging steps
            run_dir = tensorboard_run_dir(args, state)
            attach(watcher, tensorboard_sink(watcher, run_dir, steps), "TensorBoard")
        scalars = StepScalars()  # one {tag: value} per logged step, shared by the targets
        for name in ("mlflow", "wandb"):
            if name in reported:
                tracker = _tracker(name)
                if tracker is not None:
                    adapter = PublicSinkAdapter(tracker, scalars)
                    attach(watcher, AtTrainerSteps(adapter, steps), name)
        history = PublicSinkAdapter(_LogHistory(state), scalars)
        attach(watcher, AtTrainerSteps(history, steps), "log history")

    def _cadence(self, args: Any, state: Any) -> Callable[[int], bool]:
        """Which of the Trainer's steps get scalars: ``log_every`` if given, else those
        the Trainer logs at (every ``logging_steps``, and step 1 with
        ``logging_first_step``); every step under another ``logging_strategy``."""
        if self._log_every is not None:
            return every(self._log_every)
        if args.logging_strategy != "steps":
            return lambda step: True
        first = bool(args.logging_first_step)
        # state.logging_steps: the Trainer's resolved count (a fraction of max_steps
        # becomes steps), read when needed.
        return lambda step: step % max(int(state.logging_steps), 1) == 0 or (first and step == 1)

    def _drop_loss(self) -> None:
        """Reading a loss failed: record none for this step rather than a partial sum."""
        self._loss_sum, self._loss_count = None, 0

    def _finish(self) -> None:
        """Close the watcher, remove the loss hook, give the Trainer its clipping back."""
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        if self.watcher is not None:
            self.watcher.close()
        if self._restore is not None:
            args, max_norm = self._restore
            args.max_grad_norm = max_norm
            self._restore = None


def _torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` wrapper(s): its
    ``step`` is the one the update happens in (the wrapper may skip or defer it)."""
    seen: set[int] = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = getattr(optimizer, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            optimizer = inner
    return optimizer


def _reported_to(args: Any) -> set[str]:
    """The integrations the Trainer reports to (``report_to`` is a list once the
    TrainingArguments are built; "all" and "none" are resolved then)."""
    report_to = args.report_to
    if report_to is None:
        return set()
    return {report_to} if isinstance(report_to, str) else set(report_to)


def tensorboard_run_dir(args: Any, state: Any = None) -> str:
    """The directory transformers' ``TensorBoardCallback`` writes to (transformers 5):
    ``TENSORBOARD_LOGGING_DIR`` (user-expanded), else ``<output_dir>/runs/<date>_<host>``
    with the date the callback took at its ``on_train_begin`` (a trial's own directory
    under it in a hyper-parameter search).

    The Trainer calls its callbacks in order, its own integrations first, so that
    callback has created its directory when this one's ``on_train_begin`` runs: the
    newest such directory of the last minute is it. Without one, the name it would
    take now.
    """
    env = os.getenv("TENSORBOARD_LOGGING_DIR")
    searching = getattr(state, "is_hyper_param_search", False)
    trial = getattr(state, "trial_name", None) if searching else None
    if env is not None and trial is None:
        return os.path.expanduser(env)
    runs = os.path.join(args.output_dir, "runs")
    host = socket.gethostname()
    now = datetime.datetime.now()
    for age in range(60):
        stamp = (now - datetime.timedelta(seconds=age)).strftime("%b%d_%H-%M-%S")
        path = os.path.join(runs, f"{stamp}_{host}")
        if trial is not None:
            path = os.path.join(path, trial)
        if os.path.isdir(path):
            return path
    path = os.path.join(runs, f"{now.strftime('%b%d_%H-%M-%S')}_{host}")
    return path if trial is None else os.path.join(path, trial)


def _tracker(name: str) -> PublicSink | None:
    """gradwatch's sink into the run the Trainer's ``name`` integration opened at its
    ``on_train_begin`` (before this callback's), or None, with a warning, when there is
    none (the integration switched off by its environment variable, say): a tracker
    gradwatch cannot reach must not stop training."""
    from gradwatch import sinks  # mlflow and wandb are imported only by their sinks

    try:
        if name == "mlflow":
            # Under gradwatch/: the Trainer's own MLflow metric "grad_norm" would clash
            # with grad_norm/<layer> (a file where a directory is needed, file store).
            return Prefixed(sinks.MLflowSink(), "gradwatch/")
        return sinks.WandbSink()
    except (ImportError, ValueError) as error:
        transformers_log.warning(
            "gradwatch: report_to names %r, but gradwatch cannot log into its run (%s); "
            "its numbers go to the other destinations only.",
            name,
            error,
        )
        return None


class _LogHistory:
    """Alerts into the Trainer's log history (``state.log_history``); no scalars (the
    Trainer's own logs hold its numbers, TensorBoard and the trackers gradwatch's)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        return None

    def write_alert(self, alert: Alert) -> None:
        self._state.log_history.append(
            {
                "gradwatch_alert": alert.kind,
                "gradwatch_severity": alert.severity,
                "gradwatch_layer": alert.layer,
                "gradwatch_message": alert.format(),
                "epoch": self._state.epoch,
                "step": alert.step,
            }
        )

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
