"""Reading logs back: TensorBoard's reader only; nothing is unpickled or executed."""

from __future__ import annotations

import pickle

import pytest
import torch

from gradwatch._cli.logreader import NotAGradwatchLog, read_run

from .helpers import watched_run


class _Bomb:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_in_a_log_dir_are_never_loaded(tmp_path) -> None:
    marker = tmp_path / "pwned"
    logdir = tmp_path / "logs"
    logdir.mkdir()
    payload = pickle.dumps(_Bomb(str(marker)))
    (logdir / "events.out.tfevents.1.evil").write_bytes(payload)
    (logdir / "state.pkl").write_bytes(payload)
    try:
        run = read_run(logdir)
    except NotAGradwatchLog:
        run = None
    assert not marker.exists()
    assert run is None or not run.scalars


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_missing_empty_or_non_directory_is_a_clear_error(tmp_path, kind: str) -> None:
    path = tmp_path / "logs"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("x")
    with pytest.raises(NotAGradwatchLog):
        read_run(path)


def test_round_trip(tmp_path) -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 3), torch.zeros(4, 1)) for _ in range(3)]
    watched_run(model, batches, optimizer=optimizer, logdir=tmp_path)
    run = read_run(tmp_path)
    assert run.has_layout
    assert run.layers() == ["_root_"]
    assert [s for s, _ in run.scalars["total/loss"]] == [0, 1, 2]


def test_runs_written_with_the_old_tag_names_still_report(tmp_path) -> None:
    """Before the tags were ordered for the dashboard (``2_grad_norm/00-fc1``) they were
    ``grad_norm/fc1``: a log directory of that time reads the same. TensorBoard's own
    writer makes it here, one summary per step as gradwatch wrote them."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    from gradwatch._cli.runsummary import summarize

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(3):
            values = {}
            for depth, layer in enumerate(("fc1", "fc2")):
                values[f"grad_norm/{layer}"] = 0.1 * (depth + 1) + step
                values[f"weight_norm/{layer}"] = 2.0
            values["total/loss"] = 1.0 / (step + 1)
            values["act_nonfinite/fc1"] = 0.0
            summary = Summary(
                value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
            )
            writer.file_writer.add_summary(summary, step)
    run = read_run(tmp_path)
    assert run.layer_order() == ["fc1", "fc2"]
    assert [v for _, v in run.scalars["grad_norm/fc2"]] == pytest.approx([0.2, 1.2, 2.2])
    summary = summarize(run)
    assert summary["totals"]["loss"]["final"] == pytest.approx(1 / 3)
    assert summary["steps"]["count"] == 3


def test_new_and_old_spellings_name_the_same_statistic() -> None:
    from gradwatch._names import canonical_tag, tensorboard_tag

    for name, depth, count in [
        ("grad_norm/fc1", 3, 12),
        ("weight_norm/_root_", 0, 1),
        ("update_ratio/transformer.h.0.ln_1", 7, 150),
        ("act_std/blocks.2-x", 12, 30),  # a name holding the separator
        ("log10/grad_norm/lm_head", 49, 50),
        ("total/loss", None, 0),
    ]:
        tag = tensorboard_tag(name, depth, count)
        assert tag != name and canonical_tag(tag) == name
        assert canonical_tag(name) == name  # the old spelling is already canonical
    assert tensorboard_tag("update_ratio/x", 7, 150) == "3_update_ratio/007-x"
    assert canonical_tag("accuracy") == "accuracy"  # someone else's tag is left alone


def test_a_logger_writing_one_event_per_tag_is_one_run(tmp_path) -> None:
    """A trainer's logger (Lightning's TensorBoardLogger) writes one event per metric,
    several at the same step: that is one run, not a new run at every repeated step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 12, 2):
        for layer in ("0", "2", "4"):
            writer.add_scalar(f"grad_norm/{layer}", 0.1 * step, step)
            writer.add_scalar(f"weight_norm/{layer}", 1.0, step)
        writer.add_scalar("total/grad_norm", 0.3 * step, step)
    writer.close()
    run = read_run(tmp_path)
    assert len(run.runs) == 1
    assert [step for step, _ in run.scalars["grad_norm/2"]] == list(range(1, 12, 2))
    again = SummaryWriter(str(tmp_path))  # the same tags from step 1 again: a second run
    for layer in ("0", "2", "4"):
        again.add_scalar(f"grad_norm/{layer}", 0.5, 1)
    again.close()
    assert len(read_run(tmp_path).runs) == 2
