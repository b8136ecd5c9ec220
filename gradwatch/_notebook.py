"""A :class:`~gradwatch.Report` in a notebook: ``_repr_html_`` and ``_repr_markdown_``.

The verdict and the run in numbers, the causes (what is wrong, what to change, the
evidence folded away), the fix trials, the per-layer table with the layers a vanishing
or exploding alert named marked, and the gradient-flow picture inline (a PNG in the
page) where matplotlib is installed. Every piece of text from the run is escaped.
Reads the report's fields only (no import of the Report class), so it sits below it.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from gradwatch._format import fmt
from gradwatch._names import display_name, quoted_name

#: Row colours of the layer table: a vanishing layer, an exploding one.
MARK_STYLE = {"vanishing": "background-color:#dbe9ff", "exploding": "background-color:#ffd9d6"}


def marked_layers(report: Any) -> dict[str, str]:
    """``{layer name: "vanishing" | "exploding"}`` for the layers such an alert named
    (exploding wins when both did)."""
    out: dict[str, str] = {}
    for alert in report.alerts:
        named = alert.kind in MARK_STYLE and alert.layer is not None
        if named and out.get(alert.layer) != "exploding":
            out[alert.layer] = alert.kind
    return out


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _label(name: str | None, types: dict[str, str]) -> str:
    if name is None:
        return "the whole model"
    kind = types.get(name)
    return f"layer {quoted_name(name)}" + (f" ({kind})" if kind else "")


def flow_png(report: Any) -> bytes | None:
    """The gradient-flow picture as PNG bytes; None without matplotlib or history."""
    history = report.gradient_history
    if not history or not report.layers:
        return None
    from gradwatch._sinks.flowplot import FlowData, MatplotlibMissing, flow_figure

    grad = np.array([norms for _, norms in history], dtype=np.float64).T
    if grad.shape[0] != len(report.layers):
        return None
    data = FlowData(
        tuple(layer.name for layer in report.layers),
        np.array([step for step, _ in history], dtype=np.int64),
        grad,
    )
    try:
        figure = flow_figure(data, title="gradient flow", dpi=80)
    except (MatplotlibMissing, ImportError):
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _layer_rows(report: Any) -> list[tuple[str, list[str], str | None]]:
    marks = marked_layers(report)
    rows = []
    for layer in report.layers:
        cells = [
            display_name(layer.name),
            layer.type,
            fmt(layer.final_grad_norm, nan="-"),
            fmt(layer.final_weight_norm, nan="-"),
            fmt(layer.final_ratio, nan="-"),
            fmt(layer.max_grad_norm, nan="-"),
        ]
        rows.append((layer.name, cells, marks.get(layer.name)))
    return rows


_LAYER_COLUMNS = ("layer", "type", "grad norm", "weight norm", "grad/weight", "max grad norm")


def html_page(report: Any) -> str:
    """The HTML display."""
    types = {layer.name: layer.type for layer in report.layers}
    colour = "#1a7f37" if report.ok else "#cf222e"
    parts = [
        '<div class="gradwatch-report">',
        f'<p class="verdict" style="color:{colour};font-weight:bold">{_e(report.headline())}</p>',
    ]
    if report.stopped:
        parts.append(f"<p>Stopped early: {_e(report.stopped)}</p>")
    parts.append(f'<p class="numbers">{_e(report.numbers_line())}</p>')
    if report.diagnoses:
        parts.append(
            f"<h4>Causes ({len(report.problems)} problem(s): {len(report.diagnoses)} cause(s))</h4>"
        )
        parts.append('<ol class="diagnoses">')
        for diagnosis in report.diagnoses:
            where = "" if diagnosis.layer is None else f", {_label(diagnosis.layer, types)}"
            parts.append(
                f'<li class="diagnosis"><b class="cause">{_e(diagnosis.cause)}</b> '
                f"(from step {diagnosis.step}{_e(where)}): {_e(diagnosis.summary)}"
            )
            if diagnosis.remedies:
                parts.append("<br>Change:<ol>")
                parts += [f'<li class="remedy">{_e(r)}</li>' for r in diagnosis.remedies]
                parts.append("</ol>")
            evidence = "; ".join(
                f"{a.kind} ({a.severity}) at step {a.step}"
                + ("" if a.layer is None else f" in {_label(a.layer, types)}")
                for a in diagnosis.evidence
            )
            parts.append(f"<details><summary>Evidence</summary>{_e(evidence)}</details></li>")
        parts.append("</ol>")
    if report.tried_fixes and not report.ok:
        parts.append("<h4>Fixes tried (same starting weights, best first)</h4>")
        if report.fix_trials:
            parts.append(
                '<table class="fix-trials"><tr><th>fix</th><th>healthy</th>'
                "<th>final loss</th><th>what changed</th><th>for</th></tr>"
            )
            for trial in report.fix_trials:
                parts.append(
                    f"<tr><td>{_e(trial.fix)}</td><td>{'yes' if trial.ok else 'no'}</td>"
                    f"<td>{_e(trial.comparison())}</td><td>{_e(trial.description)}</td>"
                    f"<td>{_e(', '.join(trial.causes))}</td></tr>"
                )
            parts.append("</table>")
        else:
            parts.append("<p>No fix gradwatch can apply itself addresses these causes.</p>")
    if report.alerts:
        parts.append(f"<details><summary>Alerts ({len(report.alerts)})</summary><ul>")
        for alert in report.alerts:
            parts.append(
                f'<li class="alert {alert.severity}">[{_e(alert.severity)}] {_e(alert.kind)} '
                f"at step {alert.step} in {_e(alert.where)}: {_e(alert.message)}</li>"
            )
        parts.append("</ul></details>")
    parts.append("<h4>Layers (input side first; norms at the last step)</h4>")
    parts.append(
        '<table class="layers"><tr>'
        + "".join(f"<th>{c}</th>" for c in _LAYER_COLUMNS)
        + "<th>alert</th></tr>"
    )
    for name, cells, mark in _layer_rows(report):
        attrs = f' class="{mark}" style="{MARK_STYLE[mark]}"' if mark else ""
        row = "".join(f"<td>{_e(c)}</td>" for c in cells)
        parts.append(f'<tr data-layer="{_e(name)}"{attrs}>{row}<td>{mark or ""}</td></tr>')
    parts.append("</table>")
    picture = flow_png(report)
    if picture is not None:
        data = base64.b64encode(picture).decode("ascii")
        parts.append(
            f'<img class="gradient-flow" alt="gradient flow: layers x steps, log10 gradient '
            f'norm" src="data:image/png;base64,{data}">'
        )
    parts.append("</div>")
    return "\n".join(parts)


def _md(text: object) -> str:
    """Text safe inside a Markdown table cell or line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: Any) -> str:
    """The Markdown display."""
    types = {layer.name: layer.type for layer in report.layers}
    lines = [f"**{_md(report.headline())}**", "", _md(report.numbers_line()), ""]
    if report.stopped:
        lines += [f"Stopped early: {_md(report.stopped)}", ""]
    for rank, diagnosis in enumerate(report.diagnoses, 1):
        where = "" if diagnosis.layer is None else f", {_label(diagnosis.layer, types)}"
        lines.append(
            f"{rank}. **{diagnosis.cause}** (from step {diagnosis.step}{_md(where)}): "
            f"{_md(diagnosis.summary)}"
        )
        lines += [f"    - {_md(r)}" for r in diagnosis.remedies]
    if report.diagnoses:
        lines.append("")
    if report.tried_fixes and not report.ok:
        if report.fix_trials:
            lines += ["| fix | healthy | final loss | what changed |", "|---|---|---|---|"]
            lines += [
                f"| {t.fix} | {'yes' if t.ok else 'no'} | {_md(t.comparison())} | "
                f"{_md(t.description)} |"
                for t in report.fix_trials
            ]
        else:
            lines.append("No fix gradwatch can apply itself addresses these causes.")
        lines.append("")
    lines.append("| " + " | ".join((*_LAYER_COLUMNS, "alert")) + " |")
    lines.append("|" + "---|" * (len(_LAYER_COLUMNS) + 1))
    for _, cells, mark in _layer_rows(report):
        shown = [f"**{_md(c)}**" if mark else _md(c) for c in cells]
        lines.append("| " + " | ".join((*shown, f"**{mark}**" if mark else "")) + " |")
    return "\n".join(lines)
