"""Detectors: pure functions from the recorded history to alerts.

Each detector lives in its own module so "where is vanishing decided?" has a one-file
answer. A detector is any callable ``(history, context) -> list[Alert]`` called once per
recorded step (trend detectors every few steps, see ``is_trend_step``); it reads only the
history and the context and never touches the model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._history import History
from gradwatch._measure.record import StepRecord


@dataclasses.dataclass(frozen=True)
class DetectorContext:
    """What detectors may know besides the history: layer names, types and sizes, options.

    ``loss_baseline`` is the learning-rate-zero baseline of :func:`gradwatch.check`
    (``baseline=True``): the loss of step ``i``'s batch with the weights frozen at their
    initial values, indexed by step; None when not measured. ``holds_sublayers`` marks
    layers whose module also has parameterised submodules (see ``LayerIndex``).
    """

    layer_names: tuple[str, ...]
    module_types: tuple[str, ...]
    config: WatchConfig
    layer_numel: tuple[int, ...] = ()
    loss_baseline: tuple[float, ...] | None = None
    holds_sublayers: tuple[bool, ...] = ()

    # Derived arrays detectors read every step, computed once per watcher (the fields
    # above never change; cached_property writes the instance dict, frozen or not).
    @functools.cached_property
    def numel_root(self) -> np.ndarray:
        """Per layer sqrt(numel) (at least 1): turns a norm into an RMS."""
        return np.sqrt(np.maximum(np.asarray(self.layer_numel, dtype=np.float64), 1.0))

    @functools.cached_property
    def depth_mask(self) -> np.ndarray:
        """Per layer: does it carry the signal across depth? (see ``depth_layers``)."""
        from gradwatch._detectors._common import depth_layers

        mask = depth_layers(self)
        mask.flags.writeable = False
        return mask


Detector = Callable[[History, DetectorContext], list[Alert]]


def default_detectors(config: WatchConfig) -> list[Detector]:
    """The detectors a :class:`~gradwatch.Watcher` runs, in order."""
    from gradwatch._detectors.amp_skip import detect_amp_skip
    from gradwatch._detectors.dead_units import detect_dead_units
    from gradwatch._detectors.exploding import detect_exploding
    from gradwatch._detectors.grad_spike import detect_grad_spike
    from gradwatch._detectors.loss_spike import detect_loss_spike
    from gradwatch._detectors.nonfinite import detect_nonfinite
    from gradwatch._detectors.not_learning import detect_not_learning
    from gradwatch._detectors.poor_init import detect_poor_init
    from gradwatch._detectors.saturation import detect_saturation
    from gradwatch._detectors.vanishing import detect_vanishing

    return [
        detect_nonfinite,
        detect_exploding,
        detect_vanishing,
        detect_saturation,
        detect_dead_units,
        detect_poor_init,
        detect_amp_skip,
        detect_loss_spike,
        detect_grad_spike,
        detect_not_learning,
    ]


def trend_detector(detector: Detector) -> Detector:
    """Mark ``detector`` as judging a trend over many steps (see :func:`is_trend_step`)."""
    detector.judges_trend = True  # type: ignore[attr-defined]
    return detector


def judges_trend(detector: Detector) -> bool:
    return bool(getattr(detector, "judges_trend", False))


#: The trend detectors judge at least this often: an alert episode stays open while the
#: same alert comes back within ``AlertBook``'s gap (20 steps), so a lasting condition
#: must be re-judged well within it to stay one episode.
MAX_TREND_EVERY = 10


def trend_every(config: WatchConfig) -> int:
    """How many steps apart the trend detectors judge (see :func:`is_trend_step`)."""
    return max(1, min(config.trend_window // 2, MAX_TREND_EVERY))


def is_trend_step(step: int, config: WatchConfig) -> bool:
    """Do the trend detectors judge at ``step``?

    ``vanishing`` (medians over ``trend_window`` steps) and ``not_learning`` (the loss
    since step 0) look at windows that consecutive steps almost entirely share, so they
    judge every ``trend_window // 2`` steps (at most 10; every step is seen by at least
    two of their windows), at the last step before the history forgets step 0 (the last
    chance for ``not_learning``), and once more at ``close()``, instead of every step:
    their host-side cost is the largest of all detectors. An alert may so come a few
    steps later than the step that first showed the trend.
    """
    return (step + 1) % trend_every(config) == 0 or step == config.history - 1


def detectors_for_step(
    detectors: Sequence[Detector], record: StepRecord, *, trend: bool = True
) -> list[Detector]:
    """The detectors worth running on ``record``; with ``trend=False``, leave out those
    marked with :func:`trend_detector`.

    Once a weight holds NaN/inf the model is broken: every norm, activation and loss
    measured after that is garbage, and a detector reading them (dead units, vanishing,
    a loss that is "not learning") would only bury the one alert that matters. So on such
    steps only the non-finite detector runs; its episode stays open and names the cause.
    """
    from gradwatch._detectors.nonfinite import detect_nonfinite

    if not bool(record.weight_finite.all()):
        return [detector for detector in detectors if detector is detect_nonfinite]
    if trend:
        return list(detectors)
    return [detector for detector in detectors if not judges_trend(detector)]
