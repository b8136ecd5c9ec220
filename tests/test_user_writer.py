"""watch(..., writer=summary_writer): gradwatch inside the user's own TensorBoard run."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import gradwatch
from gradwatch._cli.logreader import read_run

from .helpers import make_mlp, regression_batches, train_steps
from .readme_examples import run_example


def _accumulator(logdir) -> EventAccumulator:
    """TensorBoard's own reader over the run, keeping every event."""
    accumulator = EventAccumulator(
        str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0}
    )
    accumulator.Reload()
    return accumulator


def _train_with_writer(logdir, steps: int, *, nan_at=None, **options):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    writer = SummaryWriter(str(logdir))
    user_steps = []

    def user_scalar(step: int) -> None:  # the user's own logging, on their own step count
        writer.add_scalar("mine/marker", float(step), step + options.get("global_step_offset", 0))
        user_steps.append(step)

    with gradwatch.watch(model, optimizer, writer=writer, flow_image_every=4, **options) as gw:
        train_steps(
            model, optimizer, regression_batches(steps), gw, nan_at=nan_at, after_step=user_scalar
        )
    return gw, writer


def test_scalars_layout_heat_map_and_alerts_land_in_the_users_run(tmp_path) -> None:
    logdir = tmp_path / "exp1"
    gw, writer = _train_with_writer(logdir, 8, nan_at=5)
    # The writer is still the user's, open: what they write after gradwatch lands too.
    writer.add_scalar("mine/after", 1.0, 99)
    writer.close()
    files = list(logdir.iterdir())
    assert len(files) == 1, files  # one event file: the user's
    accumulator = _accumulator(logdir)
    tags = accumulator.Tags()
    assert {"mine/marker", "mine/after"} <= set(tags["scalars"])
    assert "custom_scalars__config__" in tags["tensors"]
    assert "alerts" in tags["tensors"]
    assert "gradient_flow" in tags["images"]
    user_steps = [event.step for event in accumulator.Scalars("mine/marker")]
    # gradwatch's series, read back under their names, on the user's step axis.
    run = read_run(logdir)
    grad_steps = [step for step, _ in run.scalars["total/grad_norm"]]
    assert grad_steps == user_steps == list(range(8))
    for (step, value), record in zip(run.scalars["total/grad_norm"], gw.history):
        assert step == record.step
        assert value == pytest.approx(record.total_grad_norm, rel=1e-6, nan_ok=True)
    assert [step for step, _ in run.alerts] == [a.step for a in gw.alerts]
    assert "nonfinite" in run.alerts[0][1]


def test_global_step_offset_moves_everything_onto_the_users_steps(tmp_path) -> None:
    logdir = tmp_path / "resumed"
    gw, writer = _train_with_writer(logdir, 5, nan_at=3, global_step_offset=1000)
    writer.close()
    accumulator = _accumulator(logdir)
    user_steps = [event.step for event in accumulator.Scalars("mine/marker")]
    run = read_run(logdir)
    assert [step for step, _ in run.scalars["total/grad_norm"]] == user_steps
    assert user_steps == [1000, 1001, 1002, 1003, 1004]
    assert [event.step for event in accumulator.Tensors("alerts")] == [1003]
    assert [event.step for event in accumulator.Images("gradient_flow")][-1] == 1004
    assert [a.step for a in gw.alerts] == [3]  # gradwatch's own count is unchanged


def test_closing_the_watcher_flushes_but_does_not_close_the_writer(tmp_path) -> None:
    logdir = tmp_path / "run"
    _, writer = _train_with_writer(logdir, 3)
    # Flushed at close: readable before the user closes their writer.
    assert [step for step, _ in read_run(logdir).scalars["total/grad_norm"]] == [0, 1, 2]
    assert writer.file_writer is not None  # not closed by gradwatch
    writer.close()


class ScalarOnly:
    def add_scalar(self, tag, value, step):
        pass


@pytest.mark.parametrize(
    ("writer", "match"),
    [
        ("runs/exp1", r"writer must be a torch.utils.tensorboard.SummaryWriter, got str"),
        (ScalarOnly(), r"got ScalarOnly \(it has no _get_file_writer\(\), get_logdir\(\)"),
    ],
)
def test_something_else_than_a_summary_writer_is_refused(writer, match) -> None:
    with pytest.raises(TypeError, match=match):
        gradwatch.watch(make_mlp(), writer=writer)


def test_writer_and_logdir_together_are_refused(tmp_path) -> None:
    writer = SummaryWriter(str(tmp_path / "mine"))
    try:
        with pytest.raises(ValueError, match="both writer= and logdir=: pass one"):
            gradwatch.watch(make_mlp(), writer=writer, logdir=tmp_path / "theirs")
    finally:
        writer.close()
    assert not (tmp_path / "theirs").exists()


def test_readme_summary_writer_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_example("### Your own SummaryWriter", steps=6)
    logdir = tmp_path / "runs" / "exp1"
    assert len(list(logdir.iterdir())) == 1
    accumulator = _accumulator(logdir)
    train_steps = [event.step for event in accumulator.Scalars("train/loss")]
    run = read_run(logdir)
    assert [step for step, _ in run.scalars["total/grad_norm"]] == train_steps == list(range(6))
