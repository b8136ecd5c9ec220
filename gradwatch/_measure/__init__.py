"""The measuring stage: what happens on the device during a training step.

Hooks on the model and optimizer (``hooks``), the model's layers and structure
(``layers``), per-layer norms (``stats``) reduced locally or across ranks
(``distributed``), sampled activation statistics (``activations``), NaN/inf localisation
(``localize``), AMP (``amp``), ``torch.compile`` (``compile``), the optimizer's kind and
rate (``optimizer``), and the copy of the step's values to the host (``transfer``) that
ends in a :class:`~gradwatch._measure.record.StepRecord`. Nothing here judges: detectors
do (``gradwatch._detectors``). See docs/architecture.md.
"""
