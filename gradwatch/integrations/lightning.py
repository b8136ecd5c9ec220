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

Logs go to ``logdir`` when given, otherwise next to the Trainer's own scalars in its
``TensorBoardLogger``'s ``log_dir`` (TensorBoard reads both event files as one run; pass
``--reload_multifile=true`` to follow both live), otherwise only to the ``gradwatch``
logger. The watcher closes when fitting ends or fails.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._measure.amp import scaler_found_inf
from gradwatch._watcher import Watcher
from gradwatch.integrations._common import check_logdir, missing_framework

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError as _error:  # the standalone ``pytorch_lightning`` package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.loggers import TensorBoardLogger  # type: ignore[assignment]
    except ImportError:
        raise missing_framework("Lightning", "lightning", _error) from None

__all__ = ["GradWatchCallback"]


class GradWatchCallback(pl.Callback):
    """Watches the ``LightningModule`` being fitted; one watched step per optimizer step.

    Args:
        logdir: where to write TensorBoard event files. None (the default): the Trainer's
            ``TensorBoardLogger`` ``log_dir`` if it has one, else no files.
        **options: fields of :class:`gradwatch.WatchConfig` (``log_every``, ``clip``,
            ``on_nonfinite``, ...), validated here, before training starts.

    Attributes:
        watcher: the :class:`gradwatch.Watcher` of the current or last ``fit`` (None
            before the first); its ``alerts`` and ``history`` stay readable after fit.
    """

    def __init__(self, logdir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        super().__init__()
        self.logdir = check_logdir(logdir)
        self.config = WatchConfig.from_options(options, caller="GradWatchCallback()")
        self.watcher: Watcher | None = None
        self._loss: torch.Tensor | None = None

    @property
    def alerts(self) -> list[Alert]:
        """Every alert of the current (or last) fit."""
        return self.watcher.alerts if self.watcher is not None else []

    def resolve_logdir(self, trainer: pl.Trainer) -> str | None:
        """``logdir``, else the Trainer's TensorBoard logger's ``log_dir``, else None."""
        if self.logdir is not None:
            return self.logdir
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return str(logger.log_dir)
        return None

    # ------------------------------------------------------------- Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self._loss = None
        # No optimizer: Lightning's closure runs inside optimizer.step(), so steps are
        # taken from on_before_optimizer_step below, with Watcher.step().
        self.watcher = Watcher(
            pl_module,
            None,
            logdir=self.resolve_logdir(trainer),
            config=self.config,
        )

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

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    def _close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


def _scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The GradScaler of Lightning's 16-mixed precision plugin, or None."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if isinstance(scaler, torch.amp.GradScaler) else None
