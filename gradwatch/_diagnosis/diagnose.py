""":func:`diagnose`: from symptoms (alerts) to ranked root causes (diagnoses).

The rules (:mod:`gradwatch._diagnosis.rules`) each propose candidates. A root cause comes
before its consequences, so candidates are taken in the order of their first trigger
(ties: the more specific cause first, see ``rules.PRIORITY``), and each alert goes to the
first candidate that explains it: a candidate left with no trigger of its own is dropped,
so symptoms that share a cause make one diagnosis.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradwatch._alerts import Alert
from gradwatch._diagnosis.facts import ModelFacts
from gradwatch._diagnosis.record import Diagnosis
from gradwatch._diagnosis.rules import PRIORITY, RULES, Evidence, loud
from gradwatch._history import History


def diagnose(alerts: Sequence[Alert], history: History, facts: ModelFacts) -> list[Diagnosis]:
    """The root causes of ``alerts``, most likely first; empty without a warning or error.

    Pure: reads the alerts, the history and the facts, changes none of them.
    """
    alerts = tuple(alerts)
    if not any(loud(alert) for alert in alerts):
        return []
    evidence = Evidence(alerts, history, facts)
    candidates = [candidate for rule in RULES for candidate in rule(evidence)]
    candidates.sort(key=lambda c: (c.first_step, -PRIORITY[c.cause]))
    claimed: set[int] = set()
    out: list[Diagnosis] = []
    for candidate in candidates:
        own = [a for a in candidate.triggers if id(a) not in claimed and loud(a)]
        if not own:
            continue
        mine = {id(a) for a in candidate.triggers + candidate.explains} - claimed
        evidence_alerts = tuple(a for a in alerts if id(a) in mine)
        claimed |= mine
        first = min(evidence_alerts, key=lambda a: a.step)
        layer = candidate.layer
        if layer is None:
            layer = next((a.layer for a in own if a.layer is not None), None)
        out.append(
            Diagnosis(
                cause=candidate.cause,
                summary=candidate.summary,
                evidence=evidence_alerts,
                remedies=tuple(dict.fromkeys(candidate.remedies)),
                layer=layer,
                step=first.step,
            )
        )
    return out
