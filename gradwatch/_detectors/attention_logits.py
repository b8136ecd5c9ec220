"""``attention_logits``: attention logits that grow until the softmax saturates.

Dehghani et al. (2023) and Wortsman et al. (2023, "Small-scale proxies for large-scale
Transformer training instabilities"): at a high learning rate the queries and keys of
some attention layers grow together, so the pre-softmax logits q·k/√d grow
quadratically; once they reach tens to thousands the softmax is one-hot (its entropy
collapses), the gradient through it vanishes and the loss diverges. Healthy attention
keeps its largest logit within a few tens.

Measured on sampled steps (every ``activation_every`` steps, by the attention probe):
the largest logit per attention module and, where the probabilities are at hand, the
mean attention entropy as a fraction of its maximum ln(keys).

* warning: the largest logit of a module is at least ``WARNING_LOGIT`` and at least
  ``GROWTH`` times what that module showed at its first sample;
* error: at least ``ERROR_LOGIT``.

The remedy depends on the model: QK-LayerNorm (normalise queries and keys per head),
a lower learning rate, a longer warmup.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext
from gradwatch._format import fmt
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

#: Largest attention logit from which a grown logit is a warning (softmax of logits
#: 50 apart gives the runner-up e^-50 of the weight: one-hot).
WARNING_LOGIT = 50.0
#: Largest attention logit that is an error whatever its history.
ERROR_LOGIT = 1000.0
#: Growth since the module's first sample that makes a large logit a trend.
GROWTH = 10.0


def _first_sample(history: History) -> StepRecord | None:
    for record in history:
        if record.attention_logit_max is not None and record.attention_layers:
            return record
    return None


def detect_attention_logits(history: History, context: DetectorContext) -> list[Alert]:
    latest = history.latest
    if latest is None or latest.attention_logit_max is None or not latest.attention_layers:
        return []
    logits = np.asarray(latest.attention_logit_max, dtype=np.float64)
    finite = np.isfinite(logits)
    if not finite.any():
        return []
    worst = int(np.argmax(np.where(finite, logits, -np.inf)))
    value = float(logits[worst])
    if value < WARNING_LOGIT:
        return []
    name = latest.attention_layers[worst]
    first = _first_sample(history)
    start = math.nan
    if first is not None and first.attention_layers and name in first.attention_layers:
        assert first.attention_logit_max is not None
        start = float(first.attention_logit_max[first.attention_layers.index(name)])
    grew = math.isfinite(start) and start > 0 and value >= GROWTH * start
    severity: Severity
    if value >= ERROR_LOGIT:
        severity, threshold = "error", ERROR_LOGIT
    elif grew or first is latest:
        severity, threshold = "warning", WARNING_LOGIT
    else:
        return []  # large but steady since the first sample: a sharp but stable head
    since = (
        f", up from {fmt(start)} at step {first.step}"
        if first is not None and first is not latest and math.isfinite(start)
        else ""
    )
    entropy = _entropy_clause(latest, worst)
    return [
        Alert(
            kind="attention_logits",
            severity=severity,
            step=latest.step,
            layer=name,
            message=f"The largest pre-softmax attention logit q·k/√d in {name!r} is "
            f"{fmt(value)}{since}{entropy}. Logits this large make the softmax one-hot: "
            "attention stops mixing, the gradient through it vanishes, and the loss "
            "typically diverges next (attention-logit growth, Dehghani et al. 2023; "
            "Wortsman et al. 2023).",
            value=value,
            threshold=threshold,
            remedy=_remedy(context),
        )
    ]


def _entropy_clause(record: StepRecord, index: int) -> str:
    entropy = record.attention_entropy
    if entropy is None or index >= len(entropy) or not math.isfinite(float(entropy[index])):
        return ""
    return (
        f"; its attention entropy is {fmt(float(entropy[index]))} of the maximum "
        "ln(keys) (1 = uniform, 0 = one key)"
    )


def _remedy(context: DetectorContext) -> str:
    optimizer = context.optimizer
    rate = f" of {optimizer.name}" if optimizer is not None else ""
    return (
        "normalise queries and keys per head before the dot product (QK-LayerNorm: "
        "q, k = q_norm(q), k_norm(k) with nn.LayerNorm(head_dim) or RMSNorm), lower the "
        f"learning rate{rate} (3-10x) and warm it up over the first few hundred steps; "
        "weight decay on the q/k projections also bounds their growth."
    )
