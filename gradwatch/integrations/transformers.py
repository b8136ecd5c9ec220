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
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import Tensor, nn

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._measure.hooks import SafeHook
from gradwatch._watcher import Watcher
from gradwatch.integrations._common import check_logdir, missing_framework

try:
    from transformers import TrainerCallback
except ImportError as _error:
    raise missing_framework("Hugging Face transformers", "transformers", _error) from None

__all__ = ["GradWatchCallback"]


class GradWatchCallback(TrainerCallback):
    """Watches the model a Hugging Face ``Trainer`` trains; one watched step per
    optimizer step.

    Args:
        logdir: where to write TensorBoard event files. None (the default): with
            ``report_to`` including ``"tensorboard"``, ``args.logging_dir`` where the
            Trainer has one, else ``<output_dir>/gradwatch``; otherwise no files.
        take_over_clipping: measure before the Trainer's ``max_grad_norm`` clipping by
            doing that clipping in gradwatch (see the module docstring). Default True.
        **options: fields of :class:`gradwatch.WatchConfig`, validated here.

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
        self.watcher: Watcher | None = None
        self._loss_hook: torch.utils.hooks.RemovableHandle | None = None
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._loss_presummed = False  # micro-batch losses already divided by the step's size
        self._restore: tuple[Any, float] | None = None  # (args, max_grad_norm) to put back

    @property
    def alerts(self) -> list[Alert]:
        """Every alert of the current (or last) training run."""
        return self.watcher.alerts if self.watcher is not None else []

    def resolve_logdir(self, args: Any) -> str | None:
        """``logdir``, else a TensorBoard directory when the Trainer reports to it."""
        if self.logdir is not None:
            return self.logdir
        report_to = args.report_to if isinstance(args.report_to, list) else [args.report_to]
        if "tensorboard" not in report_to and "all" not in report_to:
            return None
        logging_dir = getattr(args, "logging_dir", None)
        return str(logging_dir) if logging_dir else os.path.join(args.output_dir, "gradwatch")

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
        self.watcher = Watcher(
            model, _torch_optimizer(optimizer), logdir=self.resolve_logdir(args), config=config
        )
        # Inert in a copy of the model and while traced (Trainer(torch_compile=True)).
        hook = SafeHook(self, "_observe_loss", on_error="_drop_loss")
        self._loss_hook = model.register_forward_hook(hook, with_kwargs=True)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        watcher = self.watcher
        if watcher is None or watcher.closed or self._loss_sum is None:
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
