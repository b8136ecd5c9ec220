"""GradWatchCallback in real Lightning Trainer runs on the CPU, read back from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from gradwatch._cli.logreader import read_run  # noqa: E402
from gradwatch.integrations.lightning import GradWatchCallback  # noqa: E402

from .helpers import regression_batches, watched_run  # noqa: E402

pytestmark = [
    # Lightning's advice for real runs (more dataloader workers, a GPU, ...), not faults.
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    # Lightning's use of a torch.utils._pytree API that torch deprecated.
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

GRADWATCH_TAGS = ("grad_norm/", "weight_norm/", "update_ratio/", "act_", "total/")


class Regressor(pl.LightningModule):
    """A tiny LightningModule that records, before Lightning clips, what gradwatch should log."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.losses: list[float] = []
        self.grad_norms: list[list[float]] = []  # per optimizer step, per layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Lightning calls this right after the callbacks' hook and before its clipping.
        layers = (self.net[0], self.net[2])
        self.grad_norms.append(
            [
                torch.linalg.vector_norm(
                    torch.cat([p.grad.flatten() for p in layer.parameters()])
                ).item()
                for layer in layers
            ]
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader(batches: int) -> torch.utils.data.DataLoader:
    data = regression_batches(batches, batch=8)
    x = torch.cat([x for x, _ in data])
    y = torch.cat([y for _, y in data])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _trainer(callback: GradWatchCallback, steps: int, **options: Any) -> pl.Trainer:
    """A quiet CPU Trainer (no progress bar, summary or checkpoints) with ``callback``."""
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **options,
    )


def _fit(
    tmp_path: Path, callback: GradWatchCallback, steps: int, **trainer_options: Any
) -> tuple[Regressor, pl.Trainer]:
    module = Regressor()
    trainer = _trainer(
        callback,
        steps,
        devices=1,
        logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="lightning"),
        log_every_n_steps=1,
        **trainer_options,
    )
    accumulate = trainer_options.get("accumulate_grad_batches", 1)
    trainer.fit(module, _loader(steps * accumulate))
    return module, trainer


def _plain_loop_tags(tmp_path: Path, steps: int) -> set[str]:
    module = Regressor()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    watched_run(module, _loader(steps), optimizer=optimizer, logdir=tmp_path)
    return set(read_run(tmp_path).scalars)


def _series(scalars: dict[str, list[tuple[int, float]]], tag: str) -> list[float]:
    return [value for _, value in scalars[tag]]


def test_logs_the_plain_loop_tags_in_the_trainers_log_dir_before_clipping(tmp_path: Path) -> None:
    steps = 4
    callback = GradWatchCallback(activation_every=1)
    module, trainer = _fit(tmp_path / "fit", callback, steps, gradient_clip_val=1e-3)
    assert callback.watcher is not None and callback.watcher.closed
    assert callback.watcher.step_count == steps
    log_dir = trainer.logger.log_dir  # type: ignore[union-attr]
    assert callback.watcher.logdir == log_dir

    run = read_run(log_dir)
    assert "train_loss" in run.scalars  # Lightning's own scalar, in the same run
    ours = {tag for tag in run.scalars if tag.startswith(GRADWATCH_TAGS)}
    assert ours == _plain_loop_tags(tmp_path / "plain", steps)
    assert {"grad_norm/net.0", "weight_norm/net.2", "act_std/net.1", "total/loss"} <= ours

    # Measured before Lightning's clipping (to 1e-3): the LightningModule's own norms.
    logged = np.array([_series(run.scalars, f"grad_norm/net.{i}") for i in (0, 2)]).T
    np.testing.assert_allclose(logged, module.grad_norms, rtol=1e-5)
    total = np.linalg.norm(np.array(module.grad_norms), axis=1)
    np.testing.assert_allclose(_series(run.scalars, "total/grad_norm"), total, rtol=1e-5)
    assert total.min() > 1e-2  # so the logged norms are unclipped ones
    np.testing.assert_allclose(_series(run.scalars, "total/loss"), module.losses, rtol=1e-6)
    assert np.isfinite([v for tag in ours for v in _series(run.scalars, tag)]).all()


def test_gradient_accumulation_is_one_step_per_optimizer_step(tmp_path: Path) -> None:
    steps, accumulate = 3, 2
    callback = GradWatchCallback(logdir=tmp_path / "own")
    module, _ = _fit(tmp_path, callback, steps, accumulate_grad_batches=accumulate)
    assert callback.watcher is not None
    assert len(module.losses) == steps * accumulate
    assert callback.watcher.step_count == steps == len(module.grad_norms)

    run = read_run(tmp_path / "own")  # the explicit logdir wins over the logger's
    assert [step for step, _ in run.scalars["total/loss"]] == list(range(steps))
    mean_losses = np.array(module.losses).reshape(steps, accumulate).mean(axis=1)
    np.testing.assert_allclose(_series(run.scalars, "total/loss"), mean_losses, rtol=1e-5)
    logged = np.array([_series(run.scalars, f"grad_norm/net.{i}") for i in (0, 2)]).T
    np.testing.assert_allclose(logged, module.grad_norms, rtol=1e-5)


def test_closes_when_fit_fails(tmp_path: Path) -> None:
    class Failing(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    callback = GradWatchCallback(logdir=tmp_path)
    trainer = _trainer(callback, 5, logger=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), _loader(5))
    assert callback.watcher is not None and callback.watcher.closed
    assert callback.watcher.step_count == 2
    assert len(read_run(tmp_path).scalars["total/loss"]) == 2


def test_no_logger_and_no_logdir_writes_nothing(tmp_path: Path) -> None:
    callback = GradWatchCallback()
    trainer = _trainer(callback, 2, logger=False, default_root_dir=str(tmp_path))
    trainer.fit(Regressor(), _loader(2))
    assert callback.watcher is not None and callback.watcher.logdir is None
    assert callback.watcher.step_count == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_evry": 5}, TypeError, "unknown option 'log_evry'.*Did you mean 'log_every'"),
        ({"log_every": 0}, ValueError, "log_every"),
        ({"logdir": 3}, TypeError, "logdir must be a path"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        GradWatchCallback(**kwargs)


def test_16_mixed_scaler_skips_are_amp_skip_infos_not_nan_errors(tmp_path: Path) -> None:
    """Lightning's GradScaler unscales before the callback measures; a step it skips for
    inf gradients (here: the first steps, from a huge initial scale) is an ``amp_skip``
    info, and ``on_nonfinite="raise"`` does not stop training for it."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**18)
    precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    callback = GradWatchCallback(logdir=tmp_path / "gw", on_nonfinite="raise")
    _fit(tmp_path, callback, steps=8, plugins=[precision])
    watcher = callback.watcher
    assert watcher is not None and watcher.closed
    assert watcher.step_count == 8
    assert watcher.amp_skipped_steps >= 1  # the scale came down from 2**18
    kinds = {a.kind for a in watcher.alerts}
    assert "nonfinite" not in kinds and "amp_skip" in kinds, watcher.alerts
    skipped = [r for r in watcher.history if r.amp_skipped]
    assert skipped and skipped[0].step == 0
    finite = [r for r in watcher.history if not r.amp_skipped]
    assert finite and all(np.isfinite(r.grad_norm).all() for r in finite)
