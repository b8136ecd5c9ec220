"""One model zoo for gradwatch's tests, benchmarks and detector sweep.

Every :class:`Scenario` is a training situation, healthy or broken, with what gradwatch
should say about it; :func:`train` runs one under :func:`gradwatch.watch` and returns an
:class:`Outcome` carrying the losses, the alerts and the verdict (OK, FALSE ALARM, MISS)::

    from tests.zoo import SCENARIOS, train

    outcome = train(SCENARIOS["gpt2_adamw_warmup"], seed=0)
    print(outcome.verdict, [a.kind for a in outcome.problems], outcome.final_loss)

Two families, told apart by their tags: ``"seed"`` (``tests.zoo.seeds``: textbook cases,
tiny and fast) and ``"real"`` (``tests.zoo.real``: real architectures such as GPT-2, BERT,
ViT, ResNet, Llama, LSTM language models and a CNN on scikit-learn's digits, at small
sizes with random init, trained the way people train them, and the failures people hit).
"""

from __future__ import annotations

from . import real, seeds
from ._core import (
    BLOWUP_FACTOR,
    LOUD,
    SCENARIOS,
    Batch,
    LossFn,
    Outcome,
    Run,
    Scenario,
    adam,
    build,
    cross_entropy,
    logits_of,
    loss_blowup_step,
    median,
    mse,
    register,
    train,
    warmup,
)

__all__ = [
    "BLOWUP_FACTOR",
    "LOUD",
    "SCENARIOS",
    "Batch",
    "LossFn",
    "Outcome",
    "Run",
    "Scenario",
    "adam",
    "build",
    "cross_entropy",
    "logits_of",
    "loss_blowup_step",
    "median",
    "mse",
    "real",
    "register",
    "seeds",
    "train",
    "warmup",
]
