"""Detector options: documented defaults, and bad values refused at attach time."""

from __future__ import annotations

import pytest
import torch

import gradwatch
from gradwatch import WatchConfig

from .helpers import make_mlp, regression_batches


def test_detector_defaults() -> None:
    config = WatchConfig()
    assert config.exploding_rel_grad == 1e4
    assert config.exploding_growth == 100.0
    assert config.trend_window == 10
    assert config.vanishing_ratio == 1e-2
    assert config.vanishing_floor == 1e-7
    assert (config.spike_z, config.spike_ratio) == (8.0, 3.0)
    assert (config.spike_window, config.spike_warmup) == (128, 8)
    assert config.not_learning_steps == 20
    assert (config.not_learning_z, config.not_learning_min_drop) == (2.0, 1e-3)


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"exploding_rel_grad": 1.0}, ValueError, ["exploding_rel_grad", "> 1.0", "1e4"]),
        ({"exploding_rel_grad": "big"}, TypeError, ["exploding_rel_grad", "number"]),
        ({"exploding_growth": 0.5}, ValueError, ["exploding_growth", "100"]),
        ({"exploding_growth": float("inf")}, ValueError, ["exploding_growth", "finite"]),
        ({"trend_window": 2}, ValueError, ["trend_window", ">= 3"]),
        ({"trend_window": 5.0}, TypeError, ["trend_window", "int"]),
        ({"vanishing_ratio": 0}, ValueError, ["vanishing_ratio", "(0, 1]"]),
        ({"vanishing_ratio": 2}, ValueError, ["vanishing_ratio", "<= 1.0"]),
        ({"vanishing_floor": -1e-7}, ValueError, ["vanishing_floor"]),
        ({"spike_z": 0}, ValueError, ["spike_z", "> 0.0"]),
        ({"spike_ratio": 0.5}, ValueError, ["spike_ratio", ">= 1.0"]),
        ({"spike_warmup": 1}, ValueError, ["spike_warmup", ">= 3"]),
        ({"spike_warmup": 60, "spike_window": 50}, ValueError, ["spike_warmup", "spike_window"]),
        ({"not_learning_steps": 3}, ValueError, ["not_learning_steps", ">= 4"]),
        ({"not_learning_z": -1}, ValueError, ["not_learning_z", ">= 0.0"]),
        ({"not_learning_min_drop": 1.5}, ValueError, ["not_learning_min_drop", "<= 1.0"]),
        ({"not_learning_min_drop": None}, TypeError, ["not_learning_min_drop", "NoneType"]),
    ],
)
def test_bad_detector_options_are_refused(options: dict, error: type, names: list[str]) -> None:
    model = make_mlp()
    with pytest.raises(error) as info:
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)
    for name in names:
        assert name in str(info.value)
    with pytest.raises(error):
        gradwatch.check(make_mlp(), regression_batches(1), torch.nn.functional.mse_loss, **options)
