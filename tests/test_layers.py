"""Odd but valid models: layers are found, named and measured correctly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._measure.layers import LayerIndex

from .helpers import make_mlp, regression_batches


def test_layers_are_modules_owning_parameters_in_module_order() -> None:
    model = make_mlp(depth=2)
    index = LayerIndex.from_model(model)
    assert index.names == ("0", "2", "4")
    assert index.module_types == ("Linear", "Linear", "Linear")
    assert index.param_names[:2] == ("0.weight", "0.bias")


def test_root_module_parameters_get_an_empty_name_and_a_root_tag(tmp_path) -> None:
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, optimizer, logdir=tmp_path) as gw:
        x, y = regression_batches(1)[0]
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    assert gw.index.names == ("",)
    assert "grad_norm/_root_" in read_run(tmp_path).scalars


def test_sparse_gradients_are_measured() -> None:
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Flatten(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, optimizer) as gw:
        tokens = torch.tensor([[1, 2], [2, 3], [1, 1]])
        model(tokens).sum().backward()
        expected = model[0].weight.grad.to_dense().norm().item()
        optimizer.step()
    assert gw.history.latest.grad_norm[0] == pytest.approx(expected, rel=1e-5)
    assert not gw.alerts


def test_complex_parameters_are_measured() -> None:
    class ComplexScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, dtype=torch.cfloat))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.weight * x).abs()

    torch.manual_seed(0)
    model = ComplexScale()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradwatch.watch(model, optimizer) as gw:
        model(torch.randn(3, 4, dtype=torch.cfloat)).sum().backward()
        expected = model.weight.grad.abs().pow(2).sum().sqrt().item()
        weight = model.weight.detach().abs().pow(2).sum().sqrt().item()
        optimizer.step()
    record = gw.history.latest
    assert record.grad_norm[0] == pytest.approx(expected, rel=1e-5)
    assert record.weight_norm[0] == pytest.approx(weight, rel=1e-5)


def test_tuple_and_dict_outputs_and_eval_and_no_grad_forwards() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.head_a = nn.Linear(8, 1)
            self.head_b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
            h = torch.relu(self.body(x))
            return {"out": (self.head_a(h), self.head_b(h))}

    torch.manual_seed(0)
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, update_ratio_every=1) as gw:
        for x, y in regression_batches(4):
            a, b = model(x)["out"]
            (nn.functional.mse_loss(a, y) + b.pow(2).mean()).backward()
            optimizer.step()
            optimizer.zero_grad()
            model.eval()
            with torch.no_grad():
                model(x)  # a validation forward between steps changes nothing
            model.train()
    assert gw.step_count == 4 and not gw.alerts


def test_parameters_added_after_watch_are_not_watched_and_break_nothing() -> None:
    model = make_mlp(depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer) as gw:
        model.extra = nn.Linear(1, 1)
        optimizer.add_param_group({"params": model.extra.parameters()})
        for x, y in regression_batches(2):
            nn.functional.mse_loss(model.extra(model(x)), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert "extra" not in gw.index.names  # documented: re-watch to include new layers
    assert gw.step_count == 2 and not gw.alerts


def test_unused_branch_has_no_gradient_rather_than_a_zero_one() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(8, 1)
            self.unused = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = Branchy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer) as gw:
        x, y = regression_batches(1)[0]
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    assert list(gw.history.latest.has_grad) == [True, False]


def test_statistics_are_gathered_on_an_accelerator_when_any_parameter_is_on_one() -> None:
    """An embedding kept on the CPU before the model's other layers: its norms are copied
    to the accelerator (safe at once), never the accelerator's to the CPU (a non-blocking
    device-to-host copy may be read before it lands). ``meta`` stands in for a GPU."""
    from gradwatch._measure.devices import gather_device
    from gradwatch._measure.layers import LayerIndex

    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert gather_device([cpu, meta, cpu]) == meta
    assert gather_device([cpu, cpu]) == cpu
    assert gather_device([]) == cpu
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4, device="meta"))
    assert LayerIndex.from_model(model).device() == meta
    assert LayerIndex.from_model(nn.Linear(2, 2)).device() == cpu
