"""GradWatchCallback in real Lightning Trainer runs on the CPU, read back from disk."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from gradwatch._cli.logreader import read_run  # noqa: E402
from gradwatch._names import canonical_tag  # noqa: E402
from gradwatch.integrations.lightning import GradWatchCallback  # noqa: E402

from .helpers import regression_batches, watched_run  # noqa: E402
from .readme_examples import run_example  # noqa: E402
from .unstable_models import sigmoid_normal_mlp  # noqa: E402

pytestmark = [
    # Lightning's advice for real runs (more dataloader workers, a GPU, ...), not faults.
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    # Lightning's use of a torch.utils._pytree API that torch deprecated.
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

GRADWATCH_TAGS = ("grad_norm/", "weight_norm/", "update_ratio/", "act_", "total/", "log10/")


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


def _tensorboard_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run directory, read by TensorBoard's own reader,
    keyed by gradwatch's canonical names (the loggers write those; gradwatch's own files
    write ordered tags)."""
    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        canonical_tag(tag): [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_logs_the_plain_loop_tags_through_the_trainers_logger_before_clipping(
    tmp_path: Path,
) -> None:
    steps = 4
    callback = GradWatchCallback(activation_every=1)
    module, trainer = _fit(tmp_path / "fit", callback, steps, gradient_clip_val=1e-3)
    assert callback.watcher is not None and callback.watcher.closed
    assert callback.watcher.step_count == steps
    log_dir = trainer.logger.log_dir  # type: ignore[union-attr]

    scalars = _tensorboard_scalars(log_dir)  # what the TensorBoardLogger wrote
    assert "train_loss" in scalars  # Lightning's own scalar, in the same run
    ours = {tag for tag in scalars if tag.startswith(GRADWATCH_TAGS)}
    # act_nonfinite is written only where not zero (gradwatch's reader restores zeros).
    sparse = "act_nonfinite/"
    plain = {tag for tag in _plain_loop_tags(tmp_path / "plain", steps) if sparse not in tag}
    assert {tag for tag in ours if sparse not in tag} == plain
    assert {"grad_norm/net.0", "weight_norm/net.2", "act_std/net.1", "total/loss"} <= ours
    # On Lightning's step axis: the steps its own train_loss is logged at.
    assert [step for step, _ in scalars["total/grad_norm"]] == list(range(steps))
    assert [step for step, _ in scalars["train_loss"]] == list(range(steps))
    # `gradwatch report` reads the logger's run as one run (one event per metric there).
    from gradwatch._cli.logreader import read_run

    run = read_run(log_dir)
    assert len(run.runs) == 1 and run.steps() == list(range(steps))

    # Measured before Lightning's clipping (to 1e-3): the LightningModule's own norms.
    logged = np.array([_series(scalars, f"grad_norm/net.{i}") for i in (0, 2)]).T
    np.testing.assert_allclose(logged, module.grad_norms, rtol=1e-5)
    total = np.linalg.norm(np.array(module.grad_norms), axis=1)
    np.testing.assert_allclose(_series(scalars, "total/grad_norm"), total, rtol=1e-5)
    assert total.min() > 1e-2  # so the logged norms are unclipped ones
    np.testing.assert_allclose(_series(scalars, "total/loss"), module.losses, rtol=1e-6)
    assert np.isfinite([v for tag in ours for v in _series(scalars, tag)]).all()


# Resuming: Lightning's notes that the checkpoint directory is reused and that the
# dataloader is not resumable mid-epoch (these tests resume on fresh batches on purpose).
RESUME_NOTES = [
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before"),
]


def _csv_rows(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as file:  # type: ignore[union-attr]
        return list(csv.DictReader(file))


def _csv_series(rows: list[dict[str, str]], column: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[column])) for row in rows if row.get(column)]


def _csv_fit(
    tmp_path: Path,
    callback: GradWatchCallback,
    steps: int,
    module: Regressor | None = None,
    ckpt_path: str | None = None,
    checkpoints: Path | None = None,
    **options: Any,
) -> tuple[Regressor, pl.Trainer]:
    """A fit logging to a CSVLogger in tmp_path, saving its last checkpoint to
    ``checkpoints`` (default tmp_path/ckpt)."""
    checkpoints = checkpoints or tmp_path / "ckpt"
    module = module or Regressor()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback, pl.callbacks.ModelCheckpoint(checkpoints, save_last=True)],
        logger=pl.loggers.CSVLogger(tmp_path, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
    trainer.fit(module, _loader(steps), ckpt_path=ckpt_path)
    return module, trainer


def test_csv_logger_holds_gradwatchs_columns_at_lightnings_logging_steps(
    tmp_path: Path,
) -> None:
    steps, every = 6, 2
    callback = GradWatchCallback()
    module, trainer = _csv_fit(tmp_path, callback, steps, log_every_n_steps=every)
    rows = _csv_rows(trainer)
    columns = set(rows[0])
    assert {"total/grad_norm", "total/loss", "grad_norm/net.0", "grad_norm/net.2"} <= columns
    # Logged where Lightning logs its own train_loss: steps 1, 3, 5 (every 2nd step).
    lightning_steps = [step for step, _ in _csv_series(rows, "train_loss")]
    assert lightning_steps == [1, 3, 5]
    total = _csv_series(rows, "total/grad_norm")
    assert [step for step, _ in total] == lightning_steps
    norms = np.linalg.norm(np.array(module.grad_norms), axis=1)
    np.testing.assert_allclose([v for _, v in total], norms[lightning_steps], rtol=1e-5)
    layer = _csv_series(rows, "grad_norm/net.2")
    np.testing.assert_allclose(
        [v for _, v in layer], np.array(module.grad_norms)[lightning_steps, 1], rtol=1e-5
    )


def test_log_every_given_to_the_callback_sets_the_cadence(tmp_path: Path) -> None:
    callback = GradWatchCallback(log_every=3)
    _, trainer = _csv_fit(tmp_path, callback, 6, log_every_n_steps=1)
    assert [step for step, _ in _csv_series(_csv_rows(trainer), "total/loss")] == [0, 3]


@RESUME_NOTES[0]
@RESUME_NOTES[1]
def test_a_resumed_fit_continues_the_steps_and_the_history(tmp_path: Path) -> None:
    first, total = 6, 10
    callback = GradWatchCallback()
    checkpoints = tmp_path / "ckpt"
    _csv_fit(tmp_path / "a", callback, first, checkpoints=checkpoints, log_every_n_steps=1)
    assert callback.watcher is not None
    before = list(callback.watcher.history)

    resumed = GradWatchCallback()
    resumed_module, trainer = _csv_fit(
        tmp_path / "b",
        resumed,
        total,
        ckpt_path=str(checkpoints / "last.ckpt"),
        checkpoints=checkpoints,
        log_every_n_steps=1,
    )
    watcher = resumed.watcher
    assert watcher is not None and trainer.global_step == total
    assert watcher.step_count == total  # continued from 6, not restarted at 0
    history = list(watcher.history)
    assert [record.step for record in history] == list(range(total))
    for old, restored in zip(before, history[:first]):  # the first run's, as measured
        assert restored.loss == old.loss
        np.testing.assert_array_equal(restored.grad_norm, old.grad_norm)
    # Measured again after the resume: the resumed module's own gradients.
    np.testing.assert_allclose(
        [record.total_grad_norm for record in history[first:]],
        np.linalg.norm(np.array(resumed_module.grad_norms), axis=1),
        rtol=1e-5,
    )
    # The new logger's rows continue Lightning's step axis, gradwatch's with them.
    rows = _csv_rows(trainer)
    assert [s for s, _ in _csv_series(rows, "train_loss")] == list(range(first, total))
    assert [s for s, _ in _csv_series(rows, "total/grad_norm")] == list(range(first, total))


@RESUME_NOTES[0]
@RESUME_NOTES[1]
def test_a_resumed_fit_without_gradwatch_state_still_logs_on_lightnings_steps(
    tmp_path: Path,
) -> None:
    """A checkpoint saved without the callback: gradwatch starts afresh (no history)
    but writes at Lightning's steps, not at 0."""
    plain = pl.callbacks.Callback()
    checkpoints = tmp_path / "ckpt"
    _csv_fit(tmp_path / "a", plain, 4, checkpoints=checkpoints, log_every_n_steps=1)  # type: ignore[arg-type]
    callback = GradWatchCallback()
    _, trainer = _csv_fit(
        tmp_path / "b",
        callback,
        7,
        ckpt_path=str(checkpoints / "last.ckpt"),
        checkpoints=checkpoints,
        log_every_n_steps=1,
    )
    assert callback.watcher is not None and callback.watcher.step_count == 3
    steps = [s for s, _ in _csv_series(_csv_rows(trainer), "total/grad_norm")]
    assert steps == [4, 5, 6]
    assert [alert.step >= 4 for alert in callback.alerts] == [True] * len(callback.alerts)


def test_alerts_and_the_diagnosis_go_to_lightnings_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Saturated(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.net = sigmoid_normal_mlp(depth=12, width=16)  # N(0, 1) sigmoid layers

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            return None

    callback = GradWatchCallback()
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer = _trainer(callback, 4, logger=logger)
        trainer.fit(Saturated(), _loader(4))
    watcher = callback.watcher
    assert watcher is not None and watcher.diagnoses
    # The TensorBoardLogger's run has them in its Text tab, at their steps.
    accumulator = EventAccumulator(logger.log_dir)
    accumulator.Reload()
    texts = accumulator.Tensors("gradwatch/alerts/text_summary")
    assert [event.step for event in texts] == [alert.step for alert in watcher.alerts]
    first = texts[0].tensor_proto.string_val[0].decode()
    assert first.startswith(f"**{watcher.alerts[0].severity.upper()}** `{watcher.alerts[0].kind}`")
    ours = [r for r in caplog.records if r.name == "lightning.pytorch.gradwatch"]
    alert_lines = [r.getMessage() for r in ours[:-1]]
    assert alert_lines == [alert.format() for alert in watcher.alerts]
    final = ours[-1]
    assert final.levelno == logging.WARNING
    text = final.getMessage()
    cause = watcher.diagnoses[0].cause
    # The cause first, the alerts after, as its evidence.
    assert f"Cause 1: {cause}" in text
    assert text.index(f"Cause 1: {cause}") < text.index("Alerts (the evidence)")


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


def test_the_readme_example_runs_and_fills_the_csv_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning

    monkeypatch.chdir(tmp_path)  # the example logs to ./logs
    namespace = run_example(
        "### Lightning", lightning=lightning, model=Regressor(), train_loader=_loader(3)
    )
    trainer, callback = namespace["trainer"], namespace["trainer"].callbacks[0]
    assert isinstance(callback, GradWatchCallback) and callback.watcher is not None
    assert callback.watcher.step_count == 6  # 2 epochs of 3 batches
    rows = _csv_rows(trainer)
    assert [step for step, _ in _csv_series(rows, "total/grad_norm")] == list(range(6))
    assert (tmp_path / trainer.logger.log_dir).is_relative_to(tmp_path / "logs")
