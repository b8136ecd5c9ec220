"""What every detector shares: the :class:`DetectorContext` it may read besides the
history, the ``Detector`` signature, and when the trend detectors judge.

A detector is any callable ``(history, context) -> list[Alert]`` called once per recorded
step (trend detectors every few steps, see :func:`is_trend_step`); it reads only the
history and the context and never touches the model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from gradwatch._alerts import Alert
from gradwatch._config import WatchConfig
from gradwatch._history import History
from gradwatch._measure.optimizer import OptimizerFacts


@dataclasses.dataclass(frozen=True)
class DetectorContext:
    """What detectors may know besides the history: layer names, types and sizes, options.

    ``optimizer`` says what kind of optimizer updates the model (None without one).
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
    optimizer: OptimizerFacts | None = None

    # Derived arrays detectors read every step, computed once per watcher (the fields
    # above never change; cached_property writes the instance dict, frozen or not).
    @functools.cached_property
    def numel_root(self) -> np.ndarray:
        """Per layer sqrt(numel) (at least 1): turns a norm into an RMS."""
        return np.sqrt(np.maximum(np.asarray(self.layer_numel, dtype=np.float64), 1.0))

    @functools.cached_property
    def depth_mask(self) -> np.ndarray:
        """Per layer: does it carry the signal across depth? (see ``depth_layers``)."""
        mask = depth_layers(self)
        mask.flags.writeable = False
        return mask

    @functools.cached_property
    def weight_mask(self) -> np.ndarray:
        """Per layer: does it hold weights whose size means something (not a
        normalisation scale near 1, not an embedding table updated a few rows at a time)?"""
        mask = np.array(
            [not any(word in kind for word in _NOT_DEPTH_TYPES) for kind in self.module_types],
            dtype=bool,
        )
        mask.flags.writeable = False
        return mask


#: Module types whose parameters are not "weights" in the depth sense: normalisation
#: scales/shifts sit near 1/0 whatever the depth, and embedding tables get sparse
#: gradients (only the rows of the tokens seen), so neither says anything about how well
#: gradients flow across depth.
_NOT_DEPTH_TYPES = ("Norm", "Embedding")


#: Module types that are layers of the chain even when they also hold parameterised
#: submodules (``nn.MultiheadAttention`` owns ``in_proj_weight`` and an ``out_proj``).
_CHAIN_TYPES = ("Linear", "Conv", "Bilinear", "MultiheadAttention", "RNN", "LSTM", "GRU")

#: Last name parts of the projections that build attention *scores* (queries and keys,
#: alone or fused with the values), across torch and Hugging Face models.
SCORE_PROJECTION_NAMES = frozenset(
    {
        "q_proj", "k_proj", "query", "key", "q", "k", "wq", "wk", "to_q", "to_k", "q_lin",
        "k_lin", "qkv", "qkv_proj", "c_attn", "in_proj", "wqkv", "query_key_value", "w_pack",
    }
)  # fmt: skip


def is_score_projection(name: str, module_type: str) -> bool:
    """Does this layer build attention scores (q·k) rather than carry the signal?

    Queries and keys enter the loss only through the product q·kᵀ, so the gradient of
    each is scaled by the other and, while attention is near uniform (at init, and
    whenever the scores are small), it is small by construction, not because it
    vanished on the way back: under Adam these layers move as much as any other (the
    signal itself flows through the values and the output projection). An
    ``nn.MultiheadAttention`` owns its fused ``in_proj_weight`` directly; its
    ``out_proj`` is a separate layer and stays in the chain.
    """
    return module_type == "MultiheadAttention" or name.rsplit(".", 1)[-1].lower() in (
        SCORE_PROJECTION_NAMES
    )


def depth_layers(context: DetectorContext) -> np.ndarray:
    """Boolean mask of the layers that carry the signal across depth (weight layers).

    Not counted: normalisation and embedding layers (see ``_NOT_DEPTH_TYPES``), the
    projections that build attention scores (see :func:`is_score_projection`), and
    containers that own loose parameters next to their submodules (a learned positional
    embedding or class token on the root model): such a parameter is added to the
    signal, not multiplied into it, and its small gradient says nothing about depth.
    """
    types = context.module_types
    holds = context.holds_sublayers if len(context.holds_sublayers) == len(types) else ()
    mask = []
    for i, (name, kind) in enumerate(zip(context.layer_names, types)):
        chain = not any(word in kind for word in _NOT_DEPTH_TYPES)
        chain = chain and not is_score_projection(name, kind)
        if chain and holds and holds[i]:
            chain = any(word in kind for word in _CHAIN_TYPES)
        mask.append(chain)
    return np.array(mask, dtype=bool)


Detector = Callable[[History, DetectorContext], list[Alert]]


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
