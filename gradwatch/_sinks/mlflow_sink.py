"""gradwatch's scalars and alerts in an MLflow run (``pip install 'gradwatch[mlflow]'``).

Scalars are buffered and sent with ``MlflowClient.log_batch`` (at most MLflow's 1000
metrics a request), every ``flush_secs`` and whenever an alert comes, so a step costs the
training thread a few list appends and a request comes at most every ``flush_secs``.
Alerts go to the run as text artifacts (``gradwatch/alerts.md`` for people,
``gradwatch/alerts.json`` for programs, both rewritten with every alert so far) and two
tags: ``gradwatch.alerts`` (how many) and ``gradwatch.last_alert`` (the latest, as text),
so runs with alerts can be found in the runs table.

``mlflow`` is imported when a sink is created, never by ``import gradwatch``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from gradwatch._alerts import Alert
from gradwatch._sinks.public import BaseSink

#: A tracking server refuses a ``log_batch`` with more metrics than this.
MAX_BATCH = 1000
#: MLflow's limit on a tag value is 8000 characters; the last alert is cut well below.
MAX_TAG_CHARS = 5000
ALERTS_MARKDOWN = "gradwatch/alerts.md"
ALERTS_JSON = "gradwatch/alerts.json"


class MLflowSink(BaseSink):
    """Logs gradwatch into an MLflow run: ``watch(..., sinks=[MLflowSink()])``.

    Args:
        run_id: the run to log into; by default the active run (``mlflow.start_run()``),
            which must then exist when the sink is created.
        tracking_uri: the tracking server or store; by default MLflow's own
            (``mlflow.set_tracking_uri``, ``MLFLOW_TRACKING_URI``).
        flush_secs: send the buffered scalars at least this often (and at every alert,
            and when the watcher closes). The run itself is never ended by gradwatch.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        tracking_uri: str | None = None,
        flush_secs: float = 10.0,
    ) -> None:
        try:
            import mlflow
            from mlflow.entities import Metric
        except ImportError as error:
            raise ImportError(
                "MLflowSink needs MLflow: pip install 'gradwatch[mlflow]' "
                "(or mlflow / mlflow-skinny)."
            ) from error
        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise ValueError(
                    "MLflowSink got no run_id and there is no active MLflow run. Create the "
                    "sink inside `with mlflow.start_run():`, or pass the run to log into, "
                    "e.g. MLflowSink(run_id=run.info.run_id)."
                )
            run_id = active.info.run_id
            # The active run lives in the store mlflow is set to now.
            tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)):
            raise TypeError(f"flush_secs must be a number of seconds, got {flush_secs!r}.")
        self._client = mlflow.MlflowClient(tracking_uri)
        try:
            self._client.get_run(run_id)
        except mlflow.exceptions.MlflowException as error:
            raise ValueError(
                f"MLflowSink(run_id={run_id!r}): no such run in the tracking store "
                f"{self._client.tracking_uri!r} ({error}). Pass the id of an existing run "
                "(run.info.run_id), or the tracking_uri= that holds it."
            ) from error
        self.run_id: str = run_id
        self._metric = Metric
        self._flush_secs = float(flush_secs)
        self._pending: list[Any] = []
        self._last_sent = time.monotonic()
        self._alerts: list[Alert] = []

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Buffer the step's metrics; send the buffer if ``flush_secs`` have passed."""
        stamp = int(time.time() * 1000)
        metric = self._metric
        self._pending.extend(metric(tag, value, stamp, step) for tag, value in scalars.items())
        if time.monotonic() - self._last_sent >= self._flush_secs:
            self.flush()

    def write_alert(self, alert: Alert) -> None:
        """Send the buffered metrics, then the alerts so far (artifacts) and the tags."""
        self.flush()  # the scalars that led to it first
        self._alerts.append(alert)
        client, run = self._client, self.run_id
        client.log_text(run, alerts_markdown(self._alerts), ALERTS_MARKDOWN)
        records = [a.to_dict() for a in self._alerts]
        client.log_text(run, json.dumps(records, indent=1), ALERTS_JSON)
        client.set_tag(run, "gradwatch.alerts", str(len(self._alerts)))
        client.set_tag(run, "gradwatch.last_alert", alert.format()[:MAX_TAG_CHARS])

    def flush(self) -> None:
        """Send the buffered metrics, at most :data:`MAX_BATCH` a request."""
        pending, self._pending = self._pending, []
        self._last_sent = time.monotonic()
        for start in range(0, len(pending), MAX_BATCH):
            self._client.log_batch(self.run_id, metrics=pending[start : start + MAX_BATCH])

    def close(self) -> None:
        """Send what is left; the run stays open (it is yours to end)."""
        self.flush()


def alerts_markdown(alerts: list[Alert]) -> str:
    """Every alert so far, newest last, one section each."""
    sections = [f"## step {a.step}: {a.severity} `{a.kind}`\n\n{a.format()}" for a in alerts]
    return "# gradwatch alerts\n\n" + "\n\n".join(sections) + "\n"
