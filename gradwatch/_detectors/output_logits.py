"""``output_logits``: output logits that drift to huge values.

Wortsman et al. (2023), after PaLM (Chowdhery et al. 2022): the softmax cross-entropy
is unchanged when every logit of a position shifts by the same amount, so nothing stops
the logits from drifting together; once the log-sum-exp ``Z`` of a position reaches
hundreds, float32 (and more so bf16/fp16) loses the small differences between logits
that carry the prediction, and the loss diverges. Healthy models keep ``log Z`` and the
largest |logit| within a few tens; a model whose logits start huge was initialised too
large.

Measured on sampled steps (every ``activation_every`` steps) from the model's output
(a tensor or a Hugging Face ``ModelOutput``'s ``.logits``): the mean and largest
log-sum-exp over positions and the largest |logit|.

* warning: the largest |logit| or |log-sum-exp| is at least ``WARNING_LOGIT``;
* error: at least ``ERROR_LOGIT``.
"""

from __future__ import annotations

import math

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext
from gradwatch._format import fmt
from gradwatch._history import History

#: Largest |logit| or |log-sum-exp| of a healthy model is a few tens.
WARNING_LOGIT = 100.0
#: Beyond this, float32's 24-bit mantissa keeps fewer than ~3 decimal digits of the
#: differences between logits.
ERROR_LOGIT = 1e4


def detect_output_logits(history: History, context: DetectorContext) -> list[Alert]:
    latest = history.latest
    if latest is None or latest.output_logits is None:
        return []
    stats = latest.output_logits
    value = max(abs(stats.lse_max), abs(stats.lse_mean), stats.abs_max)
    if not math.isfinite(value) or value < WARNING_LOGIT:
        return []
    severity: Severity = "error" if value >= ERROR_LOGIT else "warning"
    threshold = ERROR_LOGIT if severity == "error" else WARNING_LOGIT
    at_start = latest.step < context.config.poor_init_steps
    why = (
        "The model starts with outputs far too large: its weights (or its output layer) "
        "were initialised too large."
        if at_start
        else "The logits are drifting: the softmax cannot see the differences between "
        "them once they are this large, and the loss diverges next (output-logit "
        "divergence, Wortsman et al. 2023)."
    )
    return [
        Alert(
            kind="output_logits",
            severity=severity,
            step=latest.step,
            layer=None,
            message=f"The output logits reach {fmt(stats.abs_max)} (largest |logit|); their "
            f"log-sum-exp log Z is {fmt(stats.lse_mean)} on average and {fmt(stats.lse_max)} "
            f"at most (healthy: a few tens). {why}",
            value=value,
            threshold=threshold,
            remedy=_remedy(at_start),
        )
    ]


def _remedy(at_start: bool) -> str:
    if at_start:
        return (
            "initialise the output layer small or at zero (nn.init.zeros_(head.weight), "
            "or std=0.02 as GPT-2 does; for Hugging Face models keep initializer_range at "
            "0.02), so the first predictions are near uniform."
        )
    return (
        "add a z-loss to the training loss, 1e-4 * logsumexp(logits, dim=-1).pow(2).mean() "
        "(PaLM), which keeps log Z near 0; lower the learning rate or add weight decay on "
        "the output layer; compute the loss in float32 under mixed precision."
    )
