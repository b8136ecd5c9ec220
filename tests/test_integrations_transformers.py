"""GradWatchCallback in real Hugging Face Trainer runs on the CPU (a tiny GPT-2 built from
a config: no downloads), read back from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import gradwatch  # noqa: E402
from gradwatch._cli.logreader import read_run  # noqa: E402
from gradwatch.integrations.transformers import GradWatchCallback  # noqa: E402

GRADWATCH_TAGS = ("grad_norm/", "weight_norm/", "update_ratio/", "act_", "total/")
MAX_GRAD_NORM = 0.05  # small, so that the Trainer's clipping is active at every step


def _model() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
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
    tmp_path: Path, callback: GradWatchCallback, steps: int, accumulate: int = 1
) -> tuple[Any, Any]:
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate,
        learning_rate=1e-2,
        max_grad_norm=MAX_GRAD_NORM,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
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
    assert [step for step, _ in run.scalars["total/loss"]] == list(range(steps))
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
