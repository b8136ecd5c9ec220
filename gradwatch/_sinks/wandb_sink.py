"""gradwatch's scalars and alerts in a Weights & Biases run (``pip install 'gradwatch[wandb]'``).

Each logged step is one ``run.log`` of gradwatch's scalars plus ``gradwatch/step``,
gradwatch's step (with ``global_step_offset``). gradwatch never passes ``step=`` to
``run.log``: W&B drops any row whose ``step=`` is below the run's current step, so mixing
with the user's own ``wandb.log`` calls would lose data. Instead, the way W&B's own
Lightning and Hugging Face integrations do it, every gradwatch chart is drawn against
``gradwatch/step`` (``define_metric(..., step_metric=...)``, once per tag group, e.g.
``grad_norm/*``).

Alerts go into a ``wandb.Table`` logged as ``gradwatch/alerts`` (logged again, whole,
with each new alert: W&B shows the latest), and optionally through ``run.alert`` (e-mail
or Slack, as set up in W&B) for alerts at or above ``notify``.

``wandb`` is imported when a sink is created, never by ``import gradwatch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradwatch._alerts import Alert
from gradwatch._sinks.public import BaseSink

#: The x-axis key of every gradwatch chart in W&B.
STEP_KEY = "gradwatch/step"
#: The key of the alerts table.
ALERTS_KEY = "gradwatch/alerts"
ALERT_COLUMNS = ["step", "severity", "kind", "layer", "message", "value", "threshold", "remedy"]
_SEVERITIES = ("info", "warning", "error")


class WandbSink(BaseSink):
    """Logs gradwatch into a W&B run: ``watch(..., sinks=[WandbSink()])``.

    Args:
        run: the run to log into; by default the active one (``wandb.run``, set by
            ``wandb.init()``), which must then exist when the sink is created.
        notify: also send alerts of at least this severity (``"info"``, ``"warning"``,
            ``"error"``) through ``run.alert``; None (the default) sends none. The
            alerts table is always written. The run itself is never finished by gradwatch.
    """

    def __init__(self, run: Any = None, *, notify: str | None = None) -> None:
        try:
            import wandb
        except ImportError as error:
            raise ImportError(
                "WandbSink needs Weights & Biases: pip install 'gradwatch[wandb]' (or wandb)."
            ) from error
        if notify is not None and notify not in _SEVERITIES:
            raise ValueError(
                f"notify must be one of {', '.join(map(repr, _SEVERITIES))} or None, got "
                f"{notify!r}. Pass e.g. notify='error' to be told of errors only."
            )
        if run is None:
            run = wandb.run
            if run is None:
                raise ValueError(
                    "WandbSink got no run and there is no active W&B run. Call "
                    "wandb.init(...) before creating the sink, or pass the run: "
                    "WandbSink(run=run)."
                )
        elif not callable(getattr(run, "log", None)) or not callable(
            getattr(run, "define_metric", None)
        ):
            raise TypeError(
                f"run must be a wandb Run (what wandb.init() returns), got "
                f"{type(run).__name__}. Pass the run, or nothing to use wandb.run."
            )
        self.run = run
        # Typed loosely: wandb's own annotations vary between releases.
        self._wandb: Any = wandb
        self._notify_from = None if notify is None else _SEVERITIES.index(notify)
        self._groups: set[str] = set()  # tag groups whose x-axis is already gradwatch/step
        self._alert_rows: list[list[Any]] = []
        run.define_metric(STEP_KEY, hidden=True)
        run.define_metric(ALERTS_KEY, step_metric=STEP_KEY)

    def _define_groups(self, scalars: Mapping[str, float]) -> None:
        """Draw every new tag group against ``gradwatch/step`` (cheap: a set lookup per
        tag; a ``define_metric`` only the first time a group appears)."""
        for tag in scalars:
            group = tag.partition("/")[0]
            if group not in self._groups:
                self._groups.add(group)
                self.run.define_metric(f"{group}/*", step_metric=STEP_KEY)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One ``run.log`` row: the step's scalars and ``gradwatch/step``."""
        self._define_groups(scalars)
        row = dict(scalars)
        row[STEP_KEY] = step
        self.run.log(row)

    def write_alert(self, alert: Alert) -> None:
        """The alerts table again, one row longer; ``run.alert`` if at ``notify`` or above."""
        self._alert_rows.append(
            [
                alert.step,
                alert.severity,
                alert.kind,
                alert.layer,
                alert.message,
                alert.value,
                alert.threshold,
                alert.remedy,
            ]
        )
        # Mixed types: value/threshold/layer are None for some alerts, numbers for others.
        table = self._wandb.Table(
            columns=ALERT_COLUMNS, data=[*self._alert_rows], allow_mixed_types=True
        )
        self.run.log({ALERTS_KEY: table, STEP_KEY: alert.step})
        if self._notify_from is not None and _SEVERITIES.index(alert.severity) >= (
            self._notify_from
        ):
            levels = self._wandb.AlertLevel
            level = {"info": levels.INFO, "warning": levels.WARN, "error": levels.ERROR}
            self.run.alert(
                title=f"gradwatch: {alert.kind} ({alert.severity}) at step {alert.step}",
                text=alert.format(),
                level=level[alert.severity],
            )

    def flush(self) -> None:
        """Nothing to do: wandb sends on its own thread."""
        return None

    def close(self) -> None:
        """Nothing to do: the run is yours to finish (``run.finish()``)."""
        return None
