"""gradwatch for Lightning: ``GradWatchCallback``.

::

    from gradwatch.integrations.lightning import GradWatchCallback

    trainer = lightning.Trainer(callbacks=[GradWatchCallback()], gradient_clip_val=1.0)
    trainer.fit(model)

What is measured, and when: Lightning calls ``optimizer.step(closure)``, and the closure
runs forward and backward *inside* the step, so an optimizer step pre-hook would fire
before the gradients exist. The callback therefore measures in Lightning's
``on_before_optimizer_step``, which runs after the closure's backward (after the
``GradScaler`` unscaled the gradients under ``precision="16-mixed"``) and before
Lightning's own gradient clipping (``gradient_clip_val``): statistics are of the
unclipped gradient, once per optimizer step (``accumulate_grad_batches`` micro-batches).
The loss is the sum of the losses Lightning passes to ``on_before_backward`` since the
last step; Lightning has already divided them by ``accumulate_grad_batches``, so this is
the mean loss of the step's micro-batches.

Where the numbers go: every step's scalars, under gradwatch's tags (``grad_norm/<layer>``,
``total/grad_norm``, ...), through ``trainer.loggers`` (``logger.log_metrics(metrics,
step)``, the way Lightning's own ``grad_norm`` logging reaches any logger), so a
``CSVLogger``'s ``metrics.csv``, a ``TensorBoardLogger``'s run, W&B, MLflow and Neptune
loggers all hold them, on Lightning's step axis and every ``log_every_n_steps`` steps as
Lightning logs its own (``log_every=`` given to the callback overrides that cadence).
A ``TensorBoardLogger`` also gets gradwatch's chart layout (one multi-line chart per
statistic) and the alerts as text (tag ``gradwatch/alerts``). Alerts go to Lightning's
log (logger ``lightning.pytorch.gradwatch``) as they are raised, and at the end of
fitting the run's diagnosis is logged there: the cause, what to change, the alerts as its
evidence. ``logdir=`` adds gradwatch's own TensorBoard run in that directory (every
``log_every`` steps, alerts as text, the gradient-flow picture).

Resuming: the callback's ``state_dict`` (saved in Lightning's checkpoints) holds the
watcher's state (:meth:`gradwatch.Watcher.state_dict`), so ``trainer.fit(...,
ckpt_path=...)`` continues gradwatch's step count where Lightning's continues and the
detectors judge the new steps with the history of the old ones. The watcher closes when
fitting ends or fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._measure.amp import scaler_found_inf
from gradwatch._sinks.public import PublicSinkAdapter, StepScalars
from gradwatch._sinks.tensorboard import alert_markdown, custom_scalars_layout
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
    TrainerSteps,
    attach,
    every,
)

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger, TensorBoardLogger
except ImportError as _error:  # the standalone ``pytorch_lightning`` package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.loggers import (  # type: ignore[assignment]
            Logger,
            TensorBoardLogger,
        )
    except ImportError:
        raise missing_framework("Lightning", "lightning", _error) from None

__all__ = ["GradWatchCallback"]

#: Lightning's log: its own messages go to ``lightning.pytorch``, which prints them.
lightning_log = logging.getLogger("lightning.pytorch.gradwatch")
#: Where a ``TensorBoardLogger``'s run gets gradwatch's alerts (its Text tab).
ALERT_TEXT_TAG = "gradwatch/alerts"


class GradWatchCallback(pl.Callback):
    """Watches the ``LightningModule`` being fitted; one watched step per optimizer step.

    Args:
        logdir: a directory for gradwatch's own TensorBoard files, besides what goes to
            the Trainer's loggers. None (the default): the loggers only.
        **options: fields of :class:`gradwatch.WatchConfig` (``log_every``, ``clip``,
            ``on_nonfinite``, ...), validated here, before training starts. ``log_every``
            counts Lightning's steps; without it scalars follow ``log_every_n_steps``.

    Attributes:
        watcher: the :class:`gradwatch.Watcher` of the current or last ``fit`` (None
            before the first); its ``alerts`` and ``history`` stay readable after fit.
    """

    def __init__(self, logdir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        super().__init__()
        self.logdir = check_logdir(logdir)
        self.config = WatchConfig.from_options(options, caller="GradWatchCallback()")
        self._log_every: int | None = self.config.log_every if "log_every" in options else None
        self.watcher: Watcher | None = None
        self._steps = TrainerSteps()
        self._restored: Mapping[str, Any] | None = None  # a checkpoint's state, until used
        self._loss: torch.Tensor | None = None

    @property
    def alerts(self) -> list[Alert]:
        """Every alert of the current (or last) fit, at Lightning's steps."""
        if self.watcher is None:
            return []
        return [self._steps.alert(alert) for alert in self.watcher.alerts]

    # ------------------------------------------------------------- Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self._loss = None
        self._steps = TrainerSteps(keep=self._cadence(trainer))
        # No optimizer: Lightning's closure runs inside optimizer.step(), so steps are
        # taken from on_before_optimizer_step below, with Watcher.step().
        watcher = Watcher(pl_module, None, config=watcher_config(self.config))
        self.watcher = watcher
        if watcher.is_writer:
            loggers = PublicSinkAdapter(_Loggers(trainer), StepScalars())
            attach(watcher, AtTrainerSteps(loggers, self._steps), "loggers")
            if self.logdir is not None:
                # gradwatch's own run: every log_every steps, on Lightning's step axis.
                own = every(self.config.log_every)
                sink = tensorboard_sink(watcher, self.logdir, self._steps, own)
                attach(watcher, sink, "TensorBoard")
        if self._restored is not None:  # the checkpoint was read before fitting started
            self._restore()

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if self.watcher is None or self.watcher.closed:
            return
        loss = loss.detach()
        scaler = _scaler(trainer)
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            # 16-mixed: the loss arrives multiplied by the GradScaler's scale. Dividing by
            # the scale tensor stays on the device (scaler.get_scale() would sync).
            loss = loss / scale.to(loss.device, non_blocking=True)
        # Summed on the device: no host sync per micro-batch.
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        watcher = self.watcher
        if watcher is None or watcher.closed:
            return
        if self._steps.offset is None:
            # Lightning's step of this update (its counter is restored from a checkpoint
            # before the first step): 0 when gradwatch's own count was restored with it.
            self._steps.offset = trainer.global_step - watcher.step_count
        if self._loss is not None and self._loss.numel() == 1:
            watcher.record_loss(self._loss)
        self._loss = None
        # 16-mixed: Lightning's GradScaler unscaled before this hook; its verdict goes with
        # the step, so a step it skips for inf gradients is an amp_skip, not a NaN.
        found_inf = None
        scaler = _scaler(trainer)
        if scaler is not None:
            torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer
            found_inf = scaler_found_inf(scaler, torch_optimizer, watcher.device)
        watcher.step(found_inf=found_inf)  # gradients complete (unscaled), not yet clipped

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        log_final_report(self.watcher, self._steps, lightning_log)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The watcher's state, for Lightning's checkpoints (empty before the first fit)."""
        if self.watcher is None:
            return {}
        return {"watcher": self.watcher.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved watcher's steps and history in the coming (or starting) fit."""
        self._restored = state_dict.get("watcher")
        if self._restored is not None and self.watcher is not None and not self.watcher.closed:
            self._restore()  # read after on_fit_start (strategies that restore late)

    # ------------------------------------------------------------- internals
    def _restore(self) -> None:
        state, self._restored = self._restored, None
        if self.watcher is not None and state is not None:
            self.watcher.load_state_dict(state)

    def _cadence(self, trainer: pl.Trainer) -> Callable[[int], bool]:
        """Which of Lightning's steps get scalars: ``log_every`` if given, else the
        steps Lightning logs its own metrics at (``log_every_n_steps``)."""
        if self._log_every is not None:
            return every(self._log_every)
        # Set by the Trainer's logger connector at construction (not declared on the
        # class; 0 under barebones=True).
        lightning_every: int = getattr(trainer, "log_every_n_steps", 0)
        # Lightning logs a step's metrics when (its index + 1) is a multiple.
        return lambda step: bool(lightning_every) and (step + 1) % lightning_every == 0

    def _close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


class _Loggers:
    """The Trainer's loggers as one destination for gradwatch's scalars and alerts."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self._loggers: list[Logger] = list(trainer.loggers)
        self._writers = [
            logger.experiment for logger in self._loggers if isinstance(logger, TensorBoardLogger)
        ]
        for writer in self._writers:
            # gradwatch's charts: one multi-line chart per statistic, all layers.
            writer.add_custom_scalars(custom_scalars_layout())

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        metrics = dict(scalars)
        for logger in self._loggers:
            logger.log_metrics(metrics, step)

    def write_alert(self, alert: Alert) -> None:
        for writer in self._writers:  # TensorBoard's Text tab, at the alert's step
            writer.add_text(ALERT_TEXT_TAG, alert_markdown(alert), alert.step)
        lightning_log.log(logging.getLevelName(alert.severity.upper()), "%s", alert.format())

    def flush(self) -> None:
        for logger in self._loggers:
            logger.save()

    def close(self) -> None:
        self.flush()  # Lightning finalises its loggers itself, after fitting


def _scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The GradScaler of Lightning's 16-mixed precision plugin, or None."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if isinstance(scaler, torch.amp.GradScaler) else None
