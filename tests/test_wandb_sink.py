"""WandbSink with the real wandb package in offline mode, read back from the offline run's
own transaction log (``run-<id>.wandb``) and table files: no network, no W&B account."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

import gradwatch

from .helpers import make_mlp, regression_batches, train_steps
from .readme_examples import run_example

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from gradwatch.sinks import WandbSink  # noqa: E402


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B in offline mode, writing under tmp_path; any run left open is finished."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()


# --- the offline run's transaction log: LevelDB's log format holding wandb Records ------
_BLOCK = 32768  # the log's block size; a record header never straddles two blocks
_HEADER = 7  # ":W&B" magic, a 2-byte file magic and a version byte


def read_records(path: Path) -> list[Any]:
    """Every ``Record`` of an offline run's ``.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    records, partial, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero-filled: the end of what was written
            break
        partial = chunk if kind in (1, 2) else partial + chunk  # FULL/FIRST vs MIDDLE/LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            records.append(record)
    return records


def offline_run(root: Path) -> tuple[Path, list[Any]]:
    """The offline run under ``root`` and its records. Call after the run finished:
    ``wandb.teardown()`` first, so the service has closed the file (``run.finish()`` can
    return before everything logged has reached it)."""
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    return run_dir, read_records(log)


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """The logged rows, values decoded from their JSON (a table's fields, which wandb
    writes as nested keys, under the table's key)."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            value = json.loads(item.value_json)
            if item.key:
                row[item.key] = value
            else:
                *parents, leaf = item.nested_key
                node = row
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = value
        rows.append(row)
    return rows


def _train(steps: int, sink: Any, *, nan_at=None, own_logging=None):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, optimizer, sinks=[sink]) as gw:
        train_steps(
            model, optimizer, regression_batches(steps), gw, nan_at=nan_at, after_step=own_logging
        )
    return gw


def test_metrics_alerts_and_axes_in_the_offline_run(offline) -> None:
    run = wandb.init(project="gradwatch-test")
    gw = _train(
        6,
        WandbSink(notify="error"),
        nan_at=4,
        own_logging=lambda step: run.log({"mine/loss": float(step)}),  # the user's own rows
    )
    run.finish()
    wandb.teardown()
    run_dir, records = offline_run(offline)
    rows = history_rows(records)
    ours = [row for row in rows if "total/grad_norm" in row]
    assert [row["gradwatch/step"] for row in ours] == list(range(6))
    for row, record in zip(ours, gw.history):
        expected = record.total_grad_norm
        assert row["total/grad_norm"] == pytest.approx(expected, rel=1e-6, nan_ok=True) or (
            expected != expected and row["total/grad_norm"] in ("NaN", None)
        )
        assert {f"grad_norm/{tag}" for tag in gw.index.tags} <= set(row)
    # The user's own rows are all there: gradwatch passes no step= that could drop them.
    assert [row["mine/loss"] for row in rows if "mine/loss" in row] == [float(s) for s in range(6)]
    # Every gradwatch chart is drawn against gradwatch/step.
    metrics = {
        record.metric.glob_name or record.metric.name: record.metric.step_metric
        for record in records
        if record.WhichOneof("record_type") == "metric"
    }
    assert metrics["grad_norm/*"] == metrics["total/*"] == "gradwatch/step"
    # The alerts table, as its file in the run, and the W&B alert for the error.
    (table_row,) = [row for row in rows if "gradwatch/alerts" in row]
    assert table_row["gradwatch/step"] == 4
    table = json.loads((run_dir / "files" / table_row["gradwatch/alerts"]["path"]).read_text())
    kinds = table["columns"].index("kind")
    assert [r[kinds] for r in table["data"]] == [a.kind for a in gw.alerts]
    sent = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert [a.title for a in sent] == ["gradwatch: nonfinite (error) at step 4"]


def test_no_active_run_and_no_run_given_is_refused(offline) -> None:
    assert wandb.run is None
    with pytest.raises(ValueError, match="no run and there is no active W&B run"):
        WandbSink()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"notify": "loud"}, ValueError, "notify must be one of 'info', 'warning', 'error'"),
        ({"run": "my-run"}, TypeError, "run must be a wandb Run .* got str"),
    ],
)
def test_bad_arguments_are_refused(offline, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        WandbSink(**kwargs)


def test_readme_wandb_example_runs(offline, monkeypatch) -> None:
    monkeypatch.chdir(offline)
    run_example("### Weights & Biases", steps=5)
    wandb.teardown()
    _, records = offline_run(offline)
    ours = [row for row in history_rows(records) if "total/loss" in row]
    assert [row["gradwatch/step"] for row in ours] == [0, 1, 2, 3, 4]
