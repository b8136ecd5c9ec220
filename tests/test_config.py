"""Bad input to watch() fails at attach time, naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import WatchConfig

from .helpers import make_mlp


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"log_evry": 2}, TypeError, ["log_evry", "log_every"]),
        ({"colour": True}, TypeError, ["colour", "Valid options"]),
        ({"log_every": 0}, ValueError, ["log_every", ">= 1"]),
        ({"log_every": 1.5}, TypeError, ["log_every", "int"]),
        ({"log_every": True}, TypeError, ["log_every"]),
        ({"update_ratio_every": -1}, ValueError, ["update_ratio_every", "0 to switch"]),
        ({"history": 1}, ValueError, ["history"]),
        ({"on_nonfinite": "ignore"}, ValueError, ["on_nonfinite", "'warn'", "'skip'", "'raise'"]),
        ({"flush_secs": 0}, ValueError, ["flush_secs"]),
        ({"flush_secs": float("nan")}, ValueError, ["flush_secs", "finite"]),
        ({"flow_image_every": -1}, ValueError, ["flow_image_every", "0 to switch"]),
        ({"flow_image_every": 2.5}, TypeError, ["flow_image_every", "int"]),
        ({"weight_norm_every": 0}, ValueError, ["weight_norm_every", ">= 1", "Use 1"]),
        ({"weight_norm_every": 2.0}, TypeError, ["weight_norm_every", "int"]),
        ({"tensorboard_tags": "pretty"}, ValueError, ["tensorboard_tags", "'stable'", "'ordered'"]),
        ({"tensorboard_tags": None}, (TypeError, ValueError), ["tensorboard_tags"]),
    ],
)
def test_bad_options_are_refused(options: dict, error: type, names: list[str]) -> None:
    model = make_mlp()
    with pytest.raises(error) as info:
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)
    for name in names:
        assert name in str(info.value)


def test_defaults_are_documented_values() -> None:
    config = WatchConfig()
    assert config.log_every == 1
    assert config.on_nonfinite == "warn"
    assert config.update_ratio_every == 10


@pytest.mark.parametrize(
    ("model", "optimizer", "error", "names"),
    [
        ("not a model", None, TypeError, ["model", "torch.nn.Module"]),
        (lambda: make_mlp(), "adam", TypeError, ["optimizer", "torch.optim.Optimizer"]),
        (nn.ReLU, None, ValueError, ["no parameters"]),
    ],
)
def test_bad_model_or_optimizer(
    model: object, optimizer: object, error: type, names: list[str]
) -> None:
    if callable(model):
        model = model()
    with pytest.raises(error) as info:
        gradwatch.watch(model, optimizer)  # type: ignore[arg-type]
    for name in names:
        assert name in str(info.value)


def test_scheduler_passed_as_optimizer_gets_a_hint() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    with pytest.raises(TypeError, match=r"scheduler\.optimizer"):
        gradwatch.watch(model, scheduler)  # type: ignore[arg-type]


def test_optimizer_of_another_model_is_refused() -> None:
    model, other = make_mlp(), make_mlp()
    with pytest.raises(ValueError, match="does not update any parameter of model"):
        gradwatch.watch(model, torch.optim.SGD(other.parameters(), lr=0.1))


def test_logdir_that_is_a_file_is_refused(tmp_path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        gradwatch.watch(make_mlp(), logdir=path)


def test_logdir_that_cannot_be_created_is_refused(tmp_path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created"):
        gradwatch.watch(make_mlp(), logdir=blocker / "sub")


def test_logdir_of_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="logdir"):
        gradwatch.watch(make_mlp(), logdir=42)  # type: ignore[arg-type]


def test_watching_the_same_model_twice_at_once_is_refused() -> None:
    model = make_mlp()
    with gradwatch.watch(model), pytest.raises(ValueError, match="already being watched"):
        gradwatch.watch(model)
    # Once closed, watching again is fine.
    gradwatch.watch(model).close()
