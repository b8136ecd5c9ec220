"""A ``history`` too short for a detector is refused at attach, never silently accepted.

The detectors read their windows from the history: with ``history=8`` the default
``not_learning`` (20 steps from step 0) could never judge, with ``history=2`` neither
could ``vanishing``; those runs used to pass as healthy.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import make_mlp, regression_batches

mse = nn.functional.mse_loss


@pytest.mark.parametrize(
    ("history", "words"),
    [
        (8, ["history=8", "not_learning_steps (20)", "history >= 20"]),
        (2, ["history=2", "trend_window (10)", "not_learning_steps (20)", "history >= 20"]),
    ],
)
def test_a_history_too_short_for_the_detectors_is_refused(history: int, words: list[str]) -> None:
    model = make_mlp()
    with pytest.raises(ValueError) as info:
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), history=history)
    for word in words:
        assert word in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="history"):
        gradwatch.check(model, regression_batches(2), mse, steps=2, history=history)


def test_each_need_names_its_option() -> None:
    model = make_mlp()
    options = {
        "history": 12,
        "not_learning_steps": 12,
        "trend_window": 13,
        "spike_warmup": 12,
        "activation_every": 12,
    }
    with pytest.raises(ValueError) as info:
        gradwatch.watch(model, **options)
    text = str(info.value)
    for words in ("trend_window (13)", "spike_warmup (12)", "activation_every (12)"):
        assert words in text, text
    assert "not_learning_steps" not in text  # 12 steps fit in a history of 12
    assert "history >= 13" in text


def test_the_minimum_is_enough_not_learning_fires_at_it() -> None:
    """At the minimum the history says, the detector that needed it does judge: an lr=0
    model is caught as not learning."""
    model = make_mlp()
    report = gradwatch.check(
        model,
        regression_batches(6),
        mse,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        steps=30,
        history=20,
    )
    assert "not_learning" in [alert.kind for alert in report.alerts]


def test_lowering_the_needs_allows_a_short_history() -> None:
    model = make_mlp()
    short = {"not_learning_steps": 8, "trend_window": 8, "spike_warmup": 7, "activation_every": 7}
    with gradwatch.watch(model, history=8, **short) as watcher:
        assert watcher.config.history == 8
