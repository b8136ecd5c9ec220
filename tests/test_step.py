"""The step vector's layout, and step(found_inf=), the public way in for frameworks that
run their own GradScaler (Watcher(loss_baseline=) is covered by check(baseline=True))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._measure.step import SEGMENTS, StepVector

from .helpers import make_mlp, regression_batches


def test_pieces_are_packed_in_declared_order_and_read_back_by_name() -> None:
    vector = StepVector(torch.device("cpu"))
    # handed over out of order: the layout follows SEGMENTS, not the caller
    vector.add({"loss": torch.tensor([7.0]), "grad_norm": torch.tensor([1.0, 2.0])})
    vector.add({"weight_norm": torch.tensor([3.0, 4.0], dtype=torch.float64)})
    vector.pack()
    assert vector.values is not None and vector.values.dtype == torch.float32
    assert vector.values.tolist() == [1.0, 2.0, 3.0, 4.0, 7.0]
    early = vector.copy_to_host_now()
    assert vector.host is early
    vector.add({"update_ratio": torch.tensor([0.5, 0.25])})
    assert vector.get("update_ratio") is not None  # staged pieces are visible by name
    vector.pack()
    assert vector.host is None  # the early copy no longer holds the whole vector
    host = vector.values.numpy()
    assert vector.read(host, "update_ratio").tolist() == [0.5, 0.25]
    assert vector.read(host, "loss").tolist() == [7.0]
    assert vector.read(early, "update_ratio") is None  # packed after that copy
    assert vector.read(host, "clip_coef") is None  # never added on this step
    assert SEGMENTS.index("weight_norm") < SEGMENTS.index("update_ratio")


def test_a_segment_must_be_declared_and_added_once() -> None:
    vector = StepVector(torch.device("cpu"))
    with pytest.raises(KeyError, match="SEGMENTS"):
        vector.add({"no_such_segment": torch.zeros(1)})
    vector.add({"loss": torch.zeros(1)})
    vector.pack()
    with pytest.raises(ValueError, match="already"):
        vector.add({"loss": torch.zeros(1)})


def _nan_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    for p in model.parameters():
        assert p.grad is not None
        p.grad[(0,) * p.grad.dim()] = float("inf")  # what a GradScaler's unscale finds


def test_step_found_inf_makes_a_scaler_skip_an_amp_skip_not_a_nonfinite() -> None:
    model = make_mlp()
    (x, y), *_ = regression_batches(1)
    with gradwatch.watch(model, on_nonfinite="raise") as gw:
        _nan_step(model, x, y)
        gw.step(found_inf=torch.tensor(1.0))  # the framework's scaler skips this step
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        gw.step(found_inf=torch.zeros(1))  # a clean step under the scaler
    assert gw.amp_skipped_steps == 1
    kinds = {alert.kind for alert in gw.alerts}
    assert "amp_skip" in kinds and "nonfinite" not in kinds
    assert [record.amp_skipped for record in gw.history] == [True, False]


def test_step_without_found_inf_reports_the_nan() -> None:
    model = make_mlp()
    (x, y), *_ = regression_batches(1)
    with gradwatch.watch(model) as gw:
        _nan_step(model, x, y)
        gw.step()
    assert gw.amp_skipped_steps == 0
    assert "nonfinite" in {alert.kind for alert in gw.alerts}


def test_step_refuses_a_found_inf_that_is_not_one_value() -> None:
    with gradwatch.watch(make_mlp()) as gw:
        with pytest.raises(TypeError, match="found_inf"):
            gw.step(found_inf=True)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="one value"):
            gw.step(found_inf=torch.zeros(2))
        assert gw.step_count == 0  # refused before anything was measured
