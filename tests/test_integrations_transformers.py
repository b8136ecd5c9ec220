"""GradWatchCallback in real Hugging Face Trainer runs on the CPU (a tiny GPT-2 built from
a config: no downloads), read back from disk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import gradwatch  # noqa: E402
from gradwatch._cli.logreader import read_run  # noqa: E402
from gradwatch._names import canonical_tag  # noqa: E402
from gradwatch.integrations.transformers import GradWatchCallback  # noqa: E402

from .readme_examples import run_example  # noqa: E402

GRADWATCH_TAGS = ("grad_norm/", "weight_norm/", "update_ratio/", "act_", "total/")
MAX_GRAD_NORM = 0.05  # small, so that the Trainer's clipping is active at every step


def _model(initializer_range: float = 0.02) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        initializer_range=initializer_range,
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def _data(samples: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (samples, 12), generator=generator)
    return [{"input_ids": row, "labels": row} for row in tokens]


def _train(
    tmp_path: Path,
    callback: GradWatchCallback,
    steps: int,
    accumulate: int = 1,
    *,
    model: Any = None,
    **arguments: Any,
) -> tuple[Any, Any]:
    model = model if model is not None else _model()
    options: dict[str, Any] = {
        "max_grad_norm": MAX_GRAD_NORM,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "report_to": [],
        **arguments,
    }
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **options,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_data(4 * steps * accumulate),
        callbacks=[callback],
    )
    trainer.train()
    return model, trainer


def _logged(trainer: Any, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry and "step" in entry]


def _values(series: list[tuple[int, float]]) -> list[float]:
    return [value for _, value in series]


def _series(scalars: dict[str, list[tuple[int, float]]], tag: str) -> list[float]:
    return [value for _, value in scalars[tag]]


def _plain_loop_tags(tmp_path: Path, steps: int) -> set[str]:
    model = _model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = _data(4 * steps)
    with gradwatch.watch(model, optimizer, logdir=tmp_path, clip=MAX_GRAD_NORM) as watcher:
        for start in range(0, len(data), 4):
            batch = {key: torch.stack([d[key] for d in data[start : start + 4]]) for key in data[0]}
            loss = model(**batch).loss
            loss.backward()
            watcher.record_loss(loss)
            optimizer.step()
            optimizer.zero_grad()
    return set(read_run(tmp_path).scalars)


def test_logs_the_plain_loop_tags_measured_before_the_trainers_clipping(tmp_path: Path) -> None:
    steps = 3
    callback = GradWatchCallback(logdir=tmp_path / "hf", activation_every=1)
    model, trainer = _train(tmp_path, callback, steps)
    assert trainer.args.max_grad_norm == MAX_GRAD_NORM  # given back after training
    watcher = callback.watcher
    assert watcher is not None and watcher.closed and watcher.step_count == steps
    assert "transformer.h.0.attn.c_attn" in watcher.index.names

    run = read_run(tmp_path / "hf")
    ours = set(run.scalars)
    assert ours == _plain_loop_tags(tmp_path / "plain", steps)
    assert {"grad_norm/transformer.wte", "total/clip_coef", "total/loss"} <= ours
    assert any(tag.startswith("act_") for tag in ours)
    assert np.isfinite([v for tag in ours for v in _series(run.scalars, tag)]).all()

    # The Trainer's own pre-clip norm and loss, step by step.
    total = _series(run.scalars, "total/grad_norm")
    np.testing.assert_allclose(total, _logged(trainer, "grad_norm"), rtol=1e-4)
    assert min(total) > MAX_GRAD_NORM  # unclipped gradients were measured...
    coef = np.array(_series(run.scalars, "total/clip_coef"))
    np.testing.assert_allclose(coef, MAX_GRAD_NORM / (np.array(total) + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(
        _series(run.scalars, "total/loss"), _logged(trainer, "loss"), atol=1e-4
    )

    # ... and the update is the Trainer's own clipping, up to float rounding.
    plain = GradWatchCallback(take_over_clipping=False)
    reference, _ = _train(tmp_path / "reference", plain, steps)
    assert plain.watcher is not None
    assert max(r.total_grad_norm for r in plain.watcher.history) <= MAX_GRAD_NORM * (1 + 1e-5)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_accumulation_is_one_step_per_optimizer_step(tmp_path: Path) -> None:
    steps, accumulate = 3, 2
    callback = GradWatchCallback(logdir=tmp_path / "hf", log_every=1)
    _, trainer = _train(tmp_path, callback, steps, accumulate=accumulate)
    assert callback.watcher is not None and callback.watcher.step_count == steps
    run = read_run(tmp_path / "hf")
    # On the Trainer's axis: its global_step once the update is done (1 for the first).
    assert [step for step, _ in run.scalars["total/loss"]] == list(range(1, steps + 1))
    np.testing.assert_allclose(
        _series(run.scalars, "total/loss"), _logged(trainer, "loss"), atol=1e-4
    )
    np.testing.assert_allclose(
        _series(run.scalars, "total/grad_norm"), _logged(trainer, "grad_norm"), rtol=1e-4
    )


def test_clip_twice_is_refused_at_train_begin(tmp_path: Path) -> None:
    callback = GradWatchCallback(clip=1.0)
    with pytest.raises(ValueError, match="choose one"):
        _train(tmp_path, callback, 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_evry": 5}, TypeError, "unknown option 'log_evry'.*Did you mean 'log_every'"),
        ({"clip": -1.0}, ValueError, "clip"),
        ({"logdir": 3}, TypeError, "logdir must be a path"),
        ({"take_over_clipping": "yes"}, TypeError, "take_over_clipping must be True or False"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        GradWatchCallback(**kwargs)


def test_a_failed_run_gives_the_clipping_back_at_the_next_train(tmp_path: Path) -> None:
    calls = 0

    def failing_collator(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 3:  # the DataLoader may fetch one batch ahead
            raise RuntimeError("bad batch")
        return {key: torch.stack([f[key] for f in features]) for key in features[0]}

    callback = GradWatchCallback()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        max_grad_norm=MAX_GRAD_NORM,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=_model(),
        args=args,
        train_dataset=_data(12),
        data_collator=failing_collator,
        callbacks=[callback],
    )
    with pytest.raises(RuntimeError, match="bad batch"):
        trainer.train()
    first = callback.watcher
    assert first is not None and not first.closed and first.step_count >= 1
    assert args.max_grad_norm == 0.0  # no on_train_end after a failure...
    trainer.train()  # ... so the next train() gives it back first, then takes it again
    assert first.closed and callback.watcher is not first
    assert callback.watcher is not None and callback.watcher.step_count == 3
    assert args.max_grad_norm == MAX_GRAD_NORM
    assert callback.watcher.config.clip is not None


def _tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run directory (all its event files, as TensorBoard
    shows them), read by TensorBoard's own reader, under gradwatch's canonical names."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        canonical_tag(tag): [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


@pytest.mark.parametrize("from_env", [False, True], ids=["output_dir-runs", "env-var"])
def test_one_tensorboard_run_with_the_trainers_scalars_on_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_env: bool
) -> None:
    """report_to=["tensorboard"], accumulation 2, logging_steps 5: the Trainer's and
    gradwatch's scalars in one run directory, gradwatch's at the Trainer's logging steps,
    and the Trainer's grad_norm at step 5 is gradwatch's total/grad_norm at step 5."""
    if from_env:
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    else:
        monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    callback = GradWatchCallback()
    _, trainer = _train(
        tmp_path, callback, 20, accumulate=2, report_to=["tensorboard"], logging_steps=5
    )
    runs = [tmp_path / "tb"] if from_env else list((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].is_dir()  # one run: the Trainer's, holding both
    files = [path.name for path in runs[0].iterdir()]
    assert len(files) == 2 and sum(name.endswith(".gradwatch") for name in files) == 1, files

    scalars = _tensorboard_scalars(runs[0])
    hf_grad_norm = scalars["train/grad_norm"]
    ours = scalars["total/grad_norm"]
    assert [step for step, _ in hf_grad_norm] == [5, 10, 15, 20]
    assert [step for step, _ in ours] == [5, 10, 15, 20]  # logging_steps, not every step
    np.testing.assert_allclose(_values(ours), _values(hf_grad_norm), rtol=1e-5)
    # The logged steps' per-layer norms and loss are there too, on the same steps.
    assert [step for step, _ in scalars["grad_norm/transformer.wte"]] == [5, 10, 15, 20]
    assert [step for step, _ in scalars["total/loss"]] == [5, 10, 15, 20]
    # Every step was measured (the detectors saw them all); only the logging is sparse.
    assert callback.watcher is not None and callback.watcher.step_count == 20
    assert trainer.state.global_step == 20


def test_logging_first_step_and_log_every(tmp_path: Path) -> None:
    first = GradWatchCallback(logdir=tmp_path / "own", log_every=4)
    _train(
        tmp_path / "a", first, 8, report_to=["tensorboard"], logging_steps=3,
        logging_first_step=True,
    )  # fmt: skip
    # With logdir= gradwatch writes its own run, not into the Trainer's ...
    run_dir = next((tmp_path / "a" / "out" / "runs").iterdir())
    assert not any(path.name.endswith(".gradwatch") for path in run_dir.iterdir())
    # ... while logdir= is gradwatch's own run, every log_every of the Trainer's steps.
    own = _tensorboard_scalars(tmp_path / "own")
    assert [step for step, _ in own["total/grad_norm"]] == [4, 8]

    # ... and without it, into the Trainer's run at its steps: 1 (logging_first_step), 3, 6.
    second = GradWatchCallback()
    _train(
        tmp_path / "b", second, 8, report_to=["tensorboard"], logging_steps=3,
        logging_first_step=True,
    )  # fmt: skip
    scalars = _tensorboard_scalars(next((tmp_path / "b" / "out" / "runs").iterdir()))
    hf_steps = [step for step, _ in scalars["train/grad_norm"]]
    assert hf_steps == [1, 3, 6]
    assert [step for step, _ in scalars["total/grad_norm"]] == hf_steps


def test_alerts_go_to_the_log_history_and_the_diagnosis_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """N(0, 1)-scale weights (initializer_range=1): attention logits far too large from
    the first step; the alert is in the Trainer's log history at the Trainer's step, and
    the end-of-training log names the cause before the evidence."""
    callback = GradWatchCallback()
    with caplog.at_level(logging.INFO, logger="transformers.gradwatch"):
        _, trainer = _train(
            tmp_path, callback, 6, model=_model(initializer_range=1.0), learning_rate=1e-3
        )
    alerts = callback.alerts
    assert alerts and min(alert.step for alert in alerts) >= 1  # the Trainer's steps
    assert callback.watcher is not None
    assert [a.step + 1 for a in callback.watcher.alerts] == [a.step for a in alerts]
    entries = [entry for entry in trainer.state.log_history if "gradwatch_alert" in entry]
    assert [(e["gradwatch_alert"], e["gradwatch_severity"], e["step"]) for e in entries] == [
        (a.kind, a.severity, a.step) for a in alerts
    ]
    assert entries[0]["gradwatch_message"] == alerts[0].format()
    assert entries[0]["gradwatch_layer"] == alerts[0].layer

    diagnoses = callback.watcher.diagnoses
    assert diagnoses
    logged = [r for r in caplog.records if r.name == "transformers.gradwatch"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    text = logged[0].getMessage()
    cause = f"Cause 1: {diagnoses[0].cause} (from step {diagnoses[0].step + 1}"
    assert cause in text
    assert text.index(cause) < text.index("Alerts (the evidence)")


def test_report_to_mlflow_puts_gradwatch_into_the_trainers_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run the Trainer's MLflowCallback opened holds gradwatch's metrics (under
    gradwatch/) at the Trainer's logging steps, read back through MlflowClient."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    try:
        _train(tmp_path, GradWatchCallback(), 10, report_to=["mlflow"], logging_steps=5)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
    client = mlflow.MlflowClient((tmp_path / "mlruns").as_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)  # the Trainer's run, and no other

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    ours, trainers = history("gradwatch/total/grad_norm"), history("grad_norm")
    assert [step for step, _ in ours] == [step for step, _ in trainers] == [5, 10]
    np.testing.assert_allclose(_values(ours), _values(trainers), rtol=1e-5)
    assert [step for step, _ in history("gradwatch/grad_norm/transformer.wte")] == [5, 10]


def test_report_to_wandb_puts_gradwatch_into_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B offline: the Trainer's run holds gradwatch's rows, at the Trainer's steps
    (gradwatch/step beside its train/global_step), read from the offline run's files."""
    wandb = pytest.importorskip("wandb")
    from .test_wandb_sink import history_rows, offline_run

    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        _train(tmp_path, GradWatchCallback(), 10, report_to=["wandb"], logging_steps=5)
    finally:
        wandb.finish()
        wandb.teardown()  # the service closes the run's file
    _, records = offline_run(tmp_path)
    rows = history_rows(records)
    trainers = [
        (r["train/global_step"], r["train/grad_norm"]) for r in rows if "train/grad_norm" in r
    ]
    ours = [(r["gradwatch/step"], r["total/grad_norm"]) for r in rows if "total/grad_norm" in r]
    assert [step for step, _ in ours] == [step for step, _ in trainers] == [5, 10]
    np.testing.assert_allclose(_values(ours), _values(trainers), rtol=1e-5)


# The example leaves dataloader_pin_memory at its default, which has no effect on a CPU.
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_the_readme_example_writes_into_the_trainers_tensorboard_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's output_dir is ./out
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    namespace = run_example("### Hugging Face Trainer", transformers=transformers,
                            model=_model(), data=_data(16))  # fmt: skip
    trainer = namespace["trainer"]
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    scalars = _tensorboard_scalars(run_dir)
    steps = [step for step, _ in scalars["train/grad_norm"]]
    assert steps and steps == [step for step, _ in scalars["total/grad_norm"]]
    assert steps == list(range(2, trainer.state.global_step + 1, 2))  # logging_steps=2
    np.testing.assert_allclose(
        _values(scalars["total/grad_norm"]), _values(scalars["train/grad_norm"]), rtol=1e-5
    )


def test_a_tracker_without_a_run_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No MLflow run open (the Trainer's MLflow integration did not start one): gradwatch
    says so once and training goes on without it."""
    mlflow = pytest.importorskip("mlflow")
    from gradwatch.integrations.transformers import _tracker

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    assert mlflow.active_run() is None
    with caplog.at_level(logging.WARNING, logger="transformers.gradwatch"):
        assert _tracker("mlflow") is None
    (record,) = caplog.records
    assert "report_to names 'mlflow'" in record.getMessage()
    assert "no active MLflow run" in record.getMessage()
