"""The :class:`Report` that :func:`gradwatch.check` returns: a verdict, the alerts with
what to try, and the per-layer numbers behind them, as text or as JSON-safe data."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from typing import Any

from gradwatch._alerts import SEVERITY_RANK, Alert
from gradwatch._diagnosis.record import Diagnosis
from gradwatch._fixes.record import FixTrial
from gradwatch._format import fmt, json_number
from gradwatch._names import display_name, quoted_name
from gradwatch._notebook import html_page, markdown


def _fmt(value: float) -> str:
    """A number of the report's text, where NaN (no gradient at that step) shows as ``-``."""
    return fmt(value, nan="-")


def _layer_label(name: str, types: dict[str, str]) -> str:
    """``layer '0' (Linear)``: a layer named as a layer, with its type when known."""
    kind = types.get(name)
    return f"layer {quoted_name(name)}" + (f" ({kind})" if kind else "")


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One layer's gradient and weight norms over a checked run.

    ``final_*`` are the values at the last measured step (NaN where the layer had no
    gradient then); ``max_*`` the largest finite values seen over the run (over its last
    ``history`` steps when it ran longer than that).
    """

    name: str
    type: str
    final_grad_norm: float
    final_weight_norm: float
    max_grad_norm: float
    max_weight_norm: float

    @property
    def final_ratio(self) -> float:
        """‖g‖/‖w‖ at the last step (NaN when undefined)."""
        if not math.isfinite(self.final_grad_norm) or not self.final_weight_norm > 0:
            return math.nan
        return self.final_grad_norm / self.final_weight_norm

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data (non-finite numbers become strings, as in :meth:`Report.to_dict`)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for field in (
            "final_grad_norm",
            "final_weight_norm",
            "max_grad_norm",
            "max_weight_norm",
        ):
            out[field] = json_number(getattr(self, field))
        return out


@dataclasses.dataclass(frozen=True)
class Report:
    """What :func:`gradwatch.check` found.

    Attributes:
        ok: True when no alert of severity ``"warning"`` or ``"error"`` was raised.
        alerts: every alert raised, in order.
        steps: optimizer steps actually taken (fewer than asked if training was stopped,
            e.g. by ``on_nonfinite="raise"``).
        steps_requested: the ``steps`` asked for.
        losses: the loss of each step, in order.
        baseline_losses: with ``baseline=True``, the loss of each step's batch with the
            weights frozen at their initial values (the learning-rate-zero baseline).
        layers: per-layer norms, input side first.
        stopped: why training stopped early, or None.
        diagnoses: the root causes of the problems, most likely first (README,
            "Diagnoses"); empty on a healthy run.
        fix_trials: with ``try_fixes=True`` on an unhealthy run, each fix gradwatch
            could apply itself, re-run from the starting weights, best first.
        tried_fixes: ``try_fixes=True`` was asked (then an empty ``fix_trials`` on an
            unhealthy run means no fix applies to its causes).
        gradient_history: ``(step, per-layer gradient norms in layers' order)`` of each
            step the watcher's history still held: the notebook display's flow picture.
            Not part of :meth:`to_dict`.
    """

    ok: bool
    alerts: tuple[Alert, ...]
    steps: int
    steps_requested: int
    losses: tuple[float, ...]
    layers: tuple[LayerSummary, ...]
    baseline_losses: tuple[float, ...] | None = None
    stopped: str | None = None
    diagnoses: tuple[Diagnosis, ...] = ()
    fix_trials: tuple[FixTrial, ...] = ()
    tried_fixes: bool = False
    gradient_history: tuple[tuple[int, tuple[float, ...]], ...] = dataclasses.field(
        default=(), repr=False
    )

    @property
    def problems(self) -> tuple[Alert, ...]:
        """The alerts of severity warning or error (those that make ``ok`` False)."""
        return tuple(a for a in self.alerts if SEVERITY_RANK[a.severity] >= 1)

    def counts(self) -> dict[str, int]:
        """How many alerts of each severity."""
        out = {"info": 0, "warning": 0, "error": 0}
        for alert in self.alerts:
            out[alert.severity] += 1
        return out

    def headline(self) -> str:
        """The verdict in one line, with what was counted."""
        counts = self.counts()
        verdict = "HEALTHY" if self.ok else "UNHEALTHY"
        return (
            f"gradwatch check: {verdict} after {self.steps} step(s) "
            f"(alerts: {counts['error']} error(s), {counts['warning']} warning(s), "
            f"{counts['info']} info)"
        )

    def numbers_line(self) -> str:
        """The gradients in numbers, one line: the range of the layers' gradient norms at
        the last step (and where), the largest seen."""
        finals = [
            (layer.final_grad_norm, layer.name)
            for layer in self.layers
            if math.isfinite(layer.final_grad_norm)
        ]
        if not finals:
            return "Gradient norms: none measured."
        low, high = min(finals), max(finals)
        text = (
            f"Gradient norms at the last step: {_fmt(low[0])} ({_layer_label(low[1], {})}) "
            f".. {_fmt(high[0])} ({_layer_label(high[1], {})}) over {len(self.layers)} layer(s)"
        )
        peaks = [layer.max_grad_norm for layer in self.layers if math.isfinite(layer.max_grad_norm)]
        if peaks:
            text += f"; largest seen {_fmt(max(peaks))}"
        return text + "."

    def summary(self, width: int | None = None) -> str:
        """Human text: the verdict; the causes, what to change and their evidence; the fix
        trials; the loss; the alerts with what to try; the per-layer table. ``width``
        wraps long lines (continuations indented under their line)."""
        lines = [self.headline()]
        if self.stopped:
            lines.append(f"Stopped early: {self.stopped}")
        if not self.problems:
            lines.append(self.numbers_line())
        lines.extend(self._diagnosis_lines())
        lines.extend(self._fix_lines())
        lines.append(self._loss_line())
        if self.alerts:
            lines.append("")
            lines.append("Alerts (the evidence):" if self.diagnoses else "Alerts:")
            ordered = sorted(self.alerts, key=lambda a: (-SEVERITY_RANK[a.severity], a.step))
            types = {layer.name: layer.type for layer in self.layers}
            for alert in ordered:
                where = alert.where if alert.layer is None else _layer_label(alert.layer, types)
                lines.append(
                    f"  [{alert.severity}] {alert.kind} at step {alert.step} in "
                    f"{where}: {alert.message}"
                )
                if alert.remedy:
                    lines.append(f"      Try: {alert.remedy}")
        else:
            lines.append("No alerts.")
        lines.append("")
        lines.extend(self._layer_table())
        if width is not None:
            lines = [wrapped for line in lines for wrapped in wrap(line, width)]
        return "\n".join(lines)

    def _fix_lines(self) -> list[str]:
        """The fix trials, best first, after the causes."""
        if not self.tried_fixes or self.ok:
            return []
        if not self.fix_trials:
            return [
                "Fixes tried: none; no fix gradwatch can apply itself (learning rate, "
                "warmup, clipping, initialisation) addresses these causes.",
                "",
            ]
        working = [t for t in self.fix_trials if t.ok]
        head = (
            f"Fixes tried from the same starting weights ({len(self.fix_trials)}): "
            f"{len(working)} made the run healthy"
            + (f", best: {working[0].fix}." if working else ".")
        )
        lines = [head]
        for rank, trial in enumerate(self.fix_trials, 1):
            verdict = (
                "HEALTHY"
                if trial.ok
                else (
                    f"error: {trial.error}"
                    if trial.error
                    else f"{len(trial.problems)} problem(s) left"
                    + (
                        f" ({', '.join(d.cause for d in trial.diagnoses)})"
                        if trial.diagnoses
                        else ""
                    )
                )
            )
            lines.append(f"  {rank}. {trial.fix}: {verdict}; final loss {trial.comparison()}")
            lines.append(f"     {trial.description} [for {', '.join(trial.causes)}]")
        lines.append("")
        return lines

    def _diagnosis_lines(self) -> list[str]:
        """The causes first: for each, the cause in one line, what to change, the evidence."""
        problems = len(self.problems)
        if not problems:
            return []
        causes = len(self.diagnoses)
        explained = {id(a) for d in self.diagnoses for a in d.evidence}
        loose = sum(1 for a in self.problems if id(a) not in explained)
        head = f"{problems} problem(s): {causes} cause(s)"
        if loose:
            head += f", {loose} problem(s) not explained by a cause (see the alerts)"
        lines = [head + "."]
        types = {layer.name: layer.type for layer in self.layers}
        for rank, diagnosis in enumerate(self.diagnoses, 1):
            where = ""
            if diagnosis.layer is not None:
                where = ", " + _layer_label(diagnosis.layer, types)
            lines.append("")
            lines.append(f"Cause {rank}: {diagnosis.cause} (from step {diagnosis.step}{where})")
            lines.append(f"  {diagnosis.summary}")
            if diagnosis.remedies:
                lines.append("  Change:")
                lines.extend(f"    {i}. {text}" for i, text in enumerate(diagnosis.remedies, 1))
            symptoms = "; ".join(
                f"{a.kind} ({a.severity}) at step {a.step}"
                + ("" if a.layer is None else f" in {_layer_label(a.layer, types)}")
                for a in diagnosis.evidence
            )
            lines.append(f"  Evidence: {symptoms}.")
        lines.append("")
        return lines

    def _loss_line(self) -> str:
        finite = [v for v in self.losses if math.isfinite(v)]
        if not self.losses:
            return "Loss: not recorded."
        text = (
            f"Loss: {_fmt(self.losses[0])} at the first step -> {_fmt(self.losses[-1])} at the last"
        )
        if finite:
            text += f" (min {_fmt(min(finite))})"
        if self.baseline_losses:
            base = [v for v in self.baseline_losses if math.isfinite(v)]
            if base:
                text += (
                    f"; frozen-weights baseline on the same batches: "
                    f"{_fmt(min(base))} .. {_fmt(max(base))}"
                )
        return text + "."

    def _layer_table(self) -> list[str]:
        header = ("layer", "type", "grad norm", "weight norm", "grad/weight", "max grad norm")
        rows = [
            (
                display_name(layer.name),
                layer.type,
                _fmt(layer.final_grad_norm),
                _fmt(layer.final_weight_norm),
                _fmt(layer.final_ratio),
                _fmt(layer.max_grad_norm),
            )
            for layer in self.layers
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
            return "  " + "  ".join(cells).rstrip()

        out = ["Per-layer norms at the final step (input side first):", line(header)]
        out.extend(line(row) for row in rows)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data (``json.dumps`` works; non-finite numbers become strings)."""
        return {
            "ok": self.ok,
            "steps": self.steps,
            "steps_requested": self.steps_requested,
            "stopped": self.stopped,
            "counts": self.counts(),
            "diagnoses": [diagnosis.to_dict() for diagnosis in self.diagnoses],
            "fix_trials": (
                [trial.to_dict() for trial in self.fix_trials] if self.tried_fixes else None
            ),
            "alerts": [alert.to_dict() for alert in self.alerts],
            "losses": [json_number(v) for v in self.losses],
            "baseline_losses": (
                None
                if self.baseline_losses is None
                else [json_number(v) for v in self.baseline_losses]
            ),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        """The notebook display (Jupyter): verdict, causes, fix trials, the per-layer table
        with vanishing/exploding layers marked, the flow picture where matplotlib is
        installed."""
        return html_page(self)

    def _repr_markdown_(self) -> str:
        """The same as Markdown (for front ends that render Markdown, not HTML)."""
        return markdown(self)


def wrap(line: str, width: int) -> list[str]:
    """``line`` wrapped at ``width``, continuations indented 4 more than its own indent."""
    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip(" ")))
    return textwrap.wrap(
        line,
        width=width,
        subsequent_indent=indent + "    ",
        break_long_words=False,
        break_on_hyphens=False,
    ) or [line]
