"""The :class:`Diagnosis` record and its cause vocabulary :data:`CAUSES`.

A diagnosis is one root cause behind one or more alerts (symptoms): what is wrong, the
numbers that prove it, the alerts it explains, and what to change in this model. It sits
low (it imports only the alerts) so that :class:`~gradwatch.Report` can carry it; the
rules that make diagnoses live next to it in :mod:`gradwatch._diagnosis`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gradwatch._alerts import Alert

#: The causes a diagnosis may name (README, "Diagnoses"). The names are public.
CAUSES: tuple[str, ...] = (
    "learning_rate_too_high",
    "learning_rate_too_low",
    "parameters_not_updated",
    "poor_initialisation",
    "saturating_activations",
    "dead_relus",
    "depth_without_skip_or_norm",
    "recurrent_instability",
    "missing_warmup",
    "attention_logit_growth",
    "output_logit_divergence",
    "nonfinite_data",
    "nonfinite_loss",
    "numeric_overflow",
)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """One root cause of a run's problems, and what to change.

    Attributes:
        cause: one of :data:`CAUSES`.
        summary: one sentence saying what is wrong, with the numbers that prove it.
        evidence: the alerts this cause explains, in order (its symptoms).
        remedies: what to change, most effective first, naming this model's layers and
            the code to write.
        layer: the layer most implicated (qualified name), or None for the whole model.
        step: the step of the first symptom.
    """

    cause: str
    summary: str
    evidence: tuple[Alert, ...]
    remedies: tuple[str, ...]
    layer: str | None
    step: int

    def __post_init__(self) -> None:
        if self.cause not in CAUSES:
            raise ValueError(f"Diagnosis.cause must be one of {CAUSES}, got {self.cause!r}")

    def format(self) -> str:
        """The cause and its summary in one line, then the remedies, one per line."""
        lines = [f"{self.cause}: {self.summary}"]
        lines += [f"  {rank}. {remedy}" for rank, remedy in enumerate(self.remedies, 1)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the evidence as :meth:`Alert.to_dict` writes it)."""
        return {
            "cause": self.cause,
            "summary": self.summary,
            "remedies": list(self.remedies),
            "layer": self.layer,
            "step": self.step,
            "evidence": [alert.to_dict() for alert in self.evidence],
        }


def diagnoses_markdown(diagnoses: tuple[Diagnosis, ...] | list[Diagnosis]) -> str:
    """The causes as Markdown for TensorBoard's Text tab: for each, the cause and its
    summary, what to change, then the alerts it explains (its evidence)."""
    parts = []
    for rank, diagnosis in enumerate(diagnoses, 1):
        where = "" if diagnosis.layer is None else f" in `{diagnosis.layer or '(root module)'}`"
        lines = [
            f"**Cause {rank}: `{diagnosis.cause}`** (from step {diagnosis.step}{where})",
            "",
            diagnosis.summary,
        ]
        if diagnosis.remedies:
            lines += ["", "*Change:*", ""]
            lines += [f"{i}. {remedy}" for i, remedy in enumerate(diagnosis.remedies, 1)]
        evidence = "; ".join(
            f"`{a.kind}` ({a.severity}) at step {a.step}" for a in diagnosis.evidence
        )
        lines += ["", f"*Evidence:* {evidence}."]
        parts.append("\n".join(lines))
    return "\n\n---\n\n".join(parts)
