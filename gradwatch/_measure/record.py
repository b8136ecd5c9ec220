"""What one optimizer step measured, on the host: the record every later stage reads.

:class:`StepRecord` is the output of the measuring stage (``gradwatch._measure``) once the
step's device vector has been copied to the host; the history keeps them, detectors read
them, sinks write them. :class:`NonfiniteOrigin` is the localiser's answer, carried in it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class NonfiniteOrigin:
    """Where a step's first non-finite value was produced.

    Attributes:
        layer: the producing module's qualified name; ``None`` when the producer is
            outside the model (the input batch, or the loss).
        phase: ``"forward"``, ``"backward"``, ``"input"`` or ``"loss"``.
        sentence: one sentence for the alert.
    """

    layer: str | None
    phase: str
    sentence: str


@dataclasses.dataclass(frozen=True)
class OutputLogits:
    """Statistics of the model's output logits on one sampled step."""

    lse_mean: float
    lse_max: float
    abs_max: float


@dataclasses.dataclass
class StepRecord:
    """Statistics of one optimizer step, on the host.

    Per-layer arrays are aligned with :attr:`gradwatch._layers.LayerIndex.names`. A layer
    with no gradient this step (frozen, unused) has ``has_grad`` False and a NaN
    ``grad_norm``: it is reported as "no gradient", never as a zero gradient.

    ``clip_coef`` is the factor the clipper scaled the gradient's global norm by (None
    without clipping); ``skipped`` marks a step gradwatch dropped (``on_nonfinite="skip"``,
    ``skip_spikes``); ``amp_skipped`` one the ``GradScaler`` skipped for inf/NaN.
    """

    step: int
    grad_norm: np.ndarray
    weight_norm: np.ndarray
    has_grad: np.ndarray
    total_grad_norm: float
    loss: float | None = None
    #: Whether this step measured ``weight_norm``; on other steps it holds the latest
    #: measurement (weights are read every ``weight_norm_every`` steps: they move slowly).
    weight_norm_measured: bool = True
    update_ratio: np.ndarray | None = None
    clip_coef: float | None = None
    skipped: bool = False
    amp_skipped: bool = False
    #: The optimizer's learning rate for this step (first parameter group), read on the
    #: host from ``param_groups`` (None without an optimizer, or when it is a tensor).
    lr: float | None = None
    #: The loss of a uniform guess, ln(classes), when the loss is recognisably a
    #: cross-entropy (read from its autograd graph); None otherwise.
    chance_loss: float | None = None
    activations: dict[str, np.ndarray] | None = None
    activation_layers: tuple[str, ...] | None = None
    #: Role of each module in ``activation_layers`` (``"mixing"``, ``"bounded"``, ...).
    activation_roles: tuple[str, ...] | None = None
    #: Attention modules seen on a sampled step (execution order), with per module the
    #: largest pre-softmax logit q·k/√d and the mean attention entropy divided by its
    #: maximum ln(keys) (NaN where unknown): see ``_measure/attention.py``.
    attention_layers: tuple[str, ...] | None = None
    attention_logit_max: np.ndarray | None = None
    attention_entropy: np.ndarray | None = None
    #: The model's output logits on a sampled step: mean and max over positions of their
    #: log-sum-exp, and the largest |logit| (None when the output had no logits).
    output_logits: OutputLogits | None = None
    #: Recurrent modules (nn.RNN/LSTM/GRU) on a sampled step: the gradient norm reaching
    #: their input at the first and at the last time step, and the sequence length.
    recurrent_layers: tuple[str, ...] | None = None
    recurrent_first: np.ndarray | None = None
    recurrent_last: np.ndarray | None = None
    recurrent_length: tuple[int, ...] | None = None
    #: Which module produced the step's first NaN/inf (``locate_nonfinite=True`` only).
    nonfinite_origin: NonfiniteOrigin | None = None
    #: Values detectors derive from this record, cached so that each is computed once.
    derived: dict[str, np.ndarray] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def grad_finite(self) -> np.ndarray:
        """Per layer: True where the gradient is finite or absent."""
        return np.isfinite(self.grad_norm) | ~self.has_grad

    @property
    def weight_finite(self) -> np.ndarray:
        return np.isfinite(self.weight_norm)

    @property
    def loss_finite(self) -> bool:
        return self.loss is None or bool(np.isfinite(self.loss))
