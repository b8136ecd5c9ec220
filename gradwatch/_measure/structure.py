"""The model-structure statistics of a sampled step: attention, output logits, recurrence.

Three probes ride on the steps that sample activation statistics (every
``activation_every`` steps), armed and collected with them:

* :class:`~gradwatch._measure.attention.AttentionProbe`: the largest pre-softmax
  attention logit and the attention entropy per attention module;
* :class:`~gradwatch._measure.logits.LogitProbe`: the log-sum-exp and largest |logit|
  of the model's output logits (and their sizes, which give a cross-entropy's number
  of classes);
* :class:`~gradwatch._measure.recurrent.RecurrentProbe`: the gradient reaching the
  first and the last time step of each ``nn.RNN/LSTM/GRU``.

:class:`StructureProbes` arms and collects them together; a :class:`StructureSample`
hands their device values to the step vector as named pieces and reads them back into
the :class:`~gradwatch._measure.record.StepRecord`. No host sync: names and lengths are
host facts known at forward time, values travel in the step's one host copy.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
from torch import Tensor

from gradwatch._measure.attention import AttentionProbe, AttentionSample
from gradwatch._measure.logits import LogitProbe
from gradwatch._measure.model import ATTENTION, RECURRENT, ModelMap
from gradwatch._measure.record import OutputLogits, StepRecord
from gradwatch._measure.recurrent import RecurrentProbe, RecurrentSample
from gradwatch._measure.step import StepVector


@dataclasses.dataclass
class StructureSample:
    """What the structure probes measured on one sampled step (device values)."""

    attention: AttentionSample | None
    logits: Tensor | None
    recurrent: RecurrentSample | None

    def pieces(self) -> dict[str, Tensor]:
        """The step vector's segments this sample fills."""
        pieces: dict[str, Tensor] = {}
        if self.attention is not None and self.attention.modules:
            pieces["attention_logit_max"] = self.attention.max_logit
            pieces["attention_entropy"] = self.attention.entropy_fraction
        if self.logits is not None:
            pieces["output_logits"] = self.logits
        if self.recurrent is not None and self.recurrent.modules:
            pieces["recurrent_first"] = self.recurrent.first
            pieces["recurrent_last"] = self.recurrent.last
        return pieces

    def fill(self, record: StepRecord, vector: StepVector, host: np.ndarray) -> None:
        """Write what ``host`` (the step vector's host copy) holds into ``record``."""
        logit_max = vector.read(host, "attention_logit_max")
        if self.attention is not None and logit_max is not None:
            record.attention_layers = self.attention.modules
            record.attention_logit_max = logit_max.astype(np.float64)
            entropy = vector.read(host, "attention_entropy")
            record.attention_entropy = None if entropy is None else entropy.astype(np.float64)
        logits = vector.read(host, "output_logits")
        if logits is not None and np.isfinite(logits).all():
            record.output_logits = OutputLogits(*(float(value) for value in logits))
        first = vector.read(host, "recurrent_first")
        last = vector.read(host, "recurrent_last")
        if self.recurrent is not None and first is not None and last is not None:
            record.recurrent_layers = self.recurrent.modules
            record.recurrent_first = first.astype(np.float64)
            record.recurrent_last = last.astype(np.float64)
            record.recurrent_length = self.recurrent.steps


class StructureProbes:
    """The attention, output-logit and recurrent probes of one watched model."""

    def __init__(self, model: ModelMap, *, include_eval: bool = False) -> None:
        root = model.root.module
        # Only where there is something to see: the attention probe's torch-function
        # mode costs a little on every op it watches.
        self.attention = (
            AttentionProbe(model, include_eval=include_eval, first_sequence=True)
            if model.with_role(ATTENTION)
            else None
        )
        self.logits = LogitProbe(root, include_eval=include_eval) if root is not None else None
        self.recurrent = (
            RecurrentProbe(model, include_eval=include_eval) if model.with_role(RECURRENT) else None
        )
        self._armed = False

    @property
    def class_dims(self) -> tuple[int, ...]:
        """Sizes of the output logits' last two dimensions, when logits were seen."""
        return self.logits.class_dims if self.logits is not None else ()

    def arm(self) -> None:
        self._armed = True
        for probe in self._probes():
            probe.arm()

    def disarm(self) -> None:
        self._armed = False
        for probe in self._probes():
            with contextlib.suppress(Exception):
                probe.disarm()

    def collect(self) -> StructureSample | None:
        """Remove the hooks and return the step's device values (None if not armed)."""
        if not self._armed:
            return None
        self._armed = False
        return StructureSample(
            attention=self.attention.collect() if self.attention is not None else None,
            logits=self.logits.collect() if self.logits is not None else None,
            recurrent=self.recurrent.collect() if self.recurrent is not None else None,
        )

    def _probes(self) -> list[AttentionProbe | LogitProbe | RecurrentProbe]:
        probes = (self.attention, self.logits, self.recurrent)
        return [probe for probe in probes if probe is not None]
