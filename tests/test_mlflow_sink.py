"""MLflowSink with the real MLflow client and a local file store, read back through
``MlflowClient`` (no server, no network)."""

from __future__ import annotations

import json

import pytest
import torch

import gradwatch

from .helpers import make_mlp, regression_batches, train_steps
from .readme_examples import run_example

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from gradwatch.sinks import MLflowSink  # noqa: E402


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A file tracking store in tmp_path, as MLflow's default for this test."""
    # MLflow 3 keeps the file store behind this switch (its sqlite store needs the full
    # mlflow package; the skinny client of gradwatch[mlflow] has the file store).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _train(sink, steps: int, *, nan_at=None, model=None, **options):
    model = model if model is not None else make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, optimizer, sinks=[sink], **options) as gw:
        train_steps(model, optimizer, regression_batches(steps), gw, nan_at=nan_at)
    return gw


def test_metrics_and_alerts_reach_the_active_run(tracking) -> None:
    with mlflow.start_run() as run:
        gw = _train(MLflowSink(), 8, nan_at=5, log_every=2)
        assert mlflow.active_run() is not None  # gradwatch does not end the user's run
    client = MlflowClient(tracking)
    got = _history(client, run.info.run_id, "total/grad_norm")
    assert [step for step, _ in got] == [0, 2, 4, 6]
    for (step, value), record in zip(got, [r for r in gw.history if r.step % 2 == 0]):
        assert step == record.step
        assert value == pytest.approx(record.total_grad_norm, rel=1e-6, nan_ok=True)
    for tag in gw.index.tags:
        assert [s for s, _ in _history(client, run.info.run_id, f"grad_norm/{tag}")] == [
            0,
            2,
            4,
            6,
        ]
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["gradwatch.alerts"] == str(len(gw.alerts))
    assert "nonfinite" in tags["gradwatch.last_alert"]
    records = json.loads(
        mlflow.artifacts.load_text(f"{run.info.artifact_uri}/gradwatch/alerts.json")
    )
    assert [(r["kind"], r["step"]) for r in records] == [(a.kind, a.step) for a in gw.alerts]
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/gradwatch/alerts.md")
    assert "step 5: error `nonfinite`" in text


def test_a_given_run_id_outside_any_active_run(tracking) -> None:
    client = MlflowClient(tracking)
    experiment = client.create_experiment("given")
    run = client.create_run(experiment)
    assert mlflow.active_run() is None
    _train(MLflowSink(run_id=run.info.run_id, tracking_uri=tracking), 3, global_step_offset=10)
    assert [s for s, _ in _history(client, run.info.run_id, "total/loss")] == [10, 11, 12]


def test_scalars_are_buffered_and_sent_in_batches_of_at_most_1000(tracking) -> None:
    client = MlflowClient(tracking)
    with mlflow.start_run() as run:
        sink = MLflowSink(flush_secs=3600)
        for step in range(5):  # 1500 metrics: more than one request may carry
            sink.write_scalars(step, {f"grad_norm/{i}": float(i + step) for i in range(300)})
        assert client.get_metric_history(run.info.run_id, "grad_norm/0") == []  # buffered
        sink.close()
    assert _history(client, run.info.run_id, "grad_norm/0") == [(s, float(s)) for s in range(5)]
    run_data = client.get_run(run.info.run_id).data
    assert len(run_data.metrics) == 300
    assert run_data.metrics["grad_norm/299"] == 303.0  # the last step's value, none lost


def test_no_active_run_and_no_run_id_is_refused(tracking) -> None:
    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="no run_id and there is no active MLflow run"):
        MLflowSink()


def test_an_unknown_run_id_is_refused(tracking) -> None:
    with pytest.raises(ValueError, match=r"MLflowSink\(run_id='0123abc'\): no such run"):
        MLflowSink(run_id="0123abc")


def test_readme_mlflow_example_runs(tracking, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_example("### MLflow", steps=5)
    run_id = namespace["run"].info.run_id
    got = _history(MlflowClient(tracking), run_id, "total/loss")
    assert [step for step, _ in got] == [0, 1, 2, 3, 4]
