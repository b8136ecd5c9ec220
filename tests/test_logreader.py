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
