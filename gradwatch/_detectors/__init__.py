"""Detectors: pure functions from the recorded history to alerts (symptoms).

Each detector lives in its own module, so "where is vanishing decided?" has a one-file
answer (``vanishing.py``); what they share is in ``_base.py`` (the context, the
signature, the trend cadence) and ``_common.py`` (robust statistics, layer selection).
This module is the registry: which detectors run, and which of them on a given step.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradwatch._config import WatchConfig
from gradwatch._detectors._base import (
    MAX_TREND_EVERY,
    Detector,
    DetectorContext,
    is_trend_step,
    judges_trend,
    trend_detector,
    trend_every,
)
from gradwatch._detectors.amp_skip import detect_amp_skip
from gradwatch._detectors.attention_logits import detect_attention_logits
from gradwatch._detectors.dead_units import detect_dead_units
from gradwatch._detectors.exploding import detect_exploding
from gradwatch._detectors.grad_spike import detect_grad_spike
from gradwatch._detectors.loss_spike import detect_loss_spike
from gradwatch._detectors.nonfinite import detect_nonfinite
from gradwatch._detectors.not_learning import detect_not_learning
from gradwatch._detectors.output_logits import detect_output_logits
from gradwatch._detectors.poor_init import detect_poor_init
from gradwatch._detectors.recurrent import detect_recurrent
from gradwatch._detectors.saturation import detect_saturation
from gradwatch._detectors.update_size import detect_update_size
from gradwatch._detectors.vanishing import detect_vanishing
from gradwatch._measure.record import StepRecord

__all__ = [
    "MAX_TREND_EVERY",
    "Detector",
    "DetectorContext",
    "default_detectors",
    "detectors_for_step",
    "is_trend_step",
    "judges_trend",
    "trend_detector",
    "trend_every",
]


def default_detectors(config: WatchConfig) -> list[Detector]:
    """The detectors a :class:`~gradwatch.Watcher` runs, in order."""

    return [
        detect_nonfinite,
        detect_exploding,
        detect_vanishing,
        detect_saturation,
        detect_dead_units,
        detect_poor_init,
        detect_update_size,
        detect_attention_logits,
        detect_output_logits,
        detect_recurrent,
        detect_amp_skip,
        detect_loss_spike,
        detect_grad_spike,
        detect_not_learning,
    ]


def record_is_broken(record: StepRecord) -> bool:
    """Whether ``record`` was measured on a broken model: a non-finite weight, or a
    non-finite loss (which a NaN weight poisons at once, whether or not the step read
    the weights). Overflowing gradients under a finite loss are an explosion, which the
    other detectors describe, not a broken model."""
    return not bool(record.weight_finite.all()) or not record.loss_finite


def detectors_for_step(
    detectors: Sequence[Detector], record: StepRecord, *, trend: bool = True
) -> list[Detector]:
    """The detectors worth running on ``record``; with ``trend=False``, leave out those
    marked with :func:`trend_detector`.

    Once a weight holds NaN/inf the model is broken: every norm, activation and loss
    measured after that is garbage, and a detector reading them (dead units, vanishing,
    a loss that is "not learning") would only bury the one alert that matters. So on such
    steps only the non-finite detector runs; its episode stays open and names the cause.
    Weights are read only every ``weight_norm_every`` steps, so a step whose loss is
    non-finite (what a NaN weight poisons at once) counts as broken too.
    """

    if record_is_broken(record):
        return [detector for detector in detectors if detector is detect_nonfinite]
    if trend:
        return list(detectors)
    return [detector for detector in detectors if not judges_trend(detector)]
