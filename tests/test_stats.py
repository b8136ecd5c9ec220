"""Per-layer norms (_stats): exact values for every dtype, batched kernels, no autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.stats import (
    DOT_MIN_VALUES,
    LayerNorms,
    WeightSnapshot,
    snapshot,
    update_squared,
)

from .helpers import OpCounter


def _by_hand(module: nn.Module) -> float:
    return sum(float(p.detach().double().square().sum()) for p in module.parameters(recurse=False))


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str
)
def test_layer_norms_match_float64_norms_for_each_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)
    index = LayerIndex.from_model(model)
    squared = LayerNorms(index, index.device()).squared(index.params)
    assert squared.dtype == torch.float32
    expected = torch.tensor([_by_hand(model[0]), _by_hand(model[2])])
    rtol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(squared.double(), expected.double(), rtol=rtol, atol=0.0)


def test_float16_norms_do_not_overflow() -> None:
    """A float16 tensor whose norm exceeds float16's range (65504) still measures finite."""
    layer = nn.Linear(100, 1000, bias=False).half()
    with torch.no_grad():
        layer.weight.fill_(300.0)  # norm = 300 * sqrt(1e5) ~ 94868 > 65504
    index = LayerIndex.from_model(layer)
    squared = LayerNorms(index, index.device()).squared(index.params)
    assert torch.isfinite(squared).all()
    assert squared.sqrt().item() == pytest.approx(300.0 * 1e5**0.5, rel=1e-4)


def test_mixed_dtype_model_is_measured_per_group() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).double())
    index = LayerIndex.from_model(model)
    squared = LayerNorms(index, index.device()).squared(index.params)
    expected = torch.tensor([_by_hand(model[0]), _by_hand(model[1])], dtype=torch.float64)
    torch.testing.assert_close(squared.double(), expected, rtol=1e-5, atol=0.0)


def test_missing_tensors_count_as_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    index = LayerIndex.from_model(model)
    tensors = [p if i < 2 else None for i, p in enumerate(index.params)]
    squared = LayerNorms(index, index.device()).squared(tensors)
    assert squared[1].item() == 0.0
    assert squared[0].item() == pytest.approx(_by_hand(model[0]), rel=1e-5)


def test_measurement_builds_no_autograd_graph() -> None:
    model = nn.Linear(4, 4)
    index = LayerIndex.from_model(model)
    assert not LayerNorms(index, index.device()).squared(index.params).requires_grad
    assert not any(t.requires_grad for t in snapshot(index.params))


def test_steady_state_index_tensors_are_built_at_attach_time() -> None:
    """The hot path builds no host→device index tensor once every gradient is present."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).double())
    index = LayerIndex.from_model(model)
    norms = LayerNorms(index, index.device())
    built = dict(norms._layer_ids_cache)
    assert len(built) == 2  # one per dtype group
    grads = [torch.ones_like(p) for p in index.params]
    norms.squared(grads)
    norms.squared(index.params)
    assert norms._layer_ids_cache == built


def test_update_squared_is_the_squared_norm_of_the_change() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    index = LayerIndex.from_model(model)
    norms = LayerNorms(index, index.device())
    before = snapshot(index.params)
    with torch.no_grad():
        model[1].weight.add_(0.5)  # 8 entries moved by 0.5 -> squared norm 2.0
    update = update_squared(index, norms, before)
    torch.testing.assert_close(update, torch.tensor([0.0, 2.0]))


def test_cpu_weight_snapshot_reuses_its_buffers_and_stays_exact() -> None:
    """On the CPU the update ratio's copy is refilled in place (no fresh pages per
    update-ratio step), holds the weights as they were, and measures the update exactly
    however often it is reused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).double())
    index = LayerIndex.from_model(model)
    norms = LayerNorms(index, index.device())
    keeper = WeightSnapshot()
    first = keeper.take(index.params)
    pointers = [t.data_ptr() for t in first]
    for move in (0.5, 0.25):
        before = keeper.take(index.params)
        assert [t.data_ptr() for t in before] == pointers  # the same buffers, refilled
        assert all(not t.requires_grad for t in before)
        assert all(torch.equal(b, p.detach()) for b, p in zip(before, index.params))
        with torch.no_grad():
            model[1].weight.add_(move)  # 8 entries moved -> squared norm 8·move²
        update = update_squared(index, norms, before)
        torch.testing.assert_close(update, torch.tensor([0.0, 8 * move**2]))


def test_weight_snapshot_makes_a_fresh_copy_above_its_memory_limit() -> None:
    model = nn.Linear(4, 4)
    index = LayerIndex.from_model(model)
    keeper = WeightSnapshot(keep_bytes=16)  # smaller than the weights: nothing is kept
    first, second = keeper.take(index.params), keeper.take(index.params)
    assert first[0].data_ptr() != second[0].data_ptr()
    assert torch.equal(second[0], model.weight.detach())
    assert keeper._kept == []


def test_a_huge_layer_norm_is_accurate_to_float64() -> None:
    """A 38.6M-value embedding (GPT-2's wte): one float32 sum drifts by ~3e-3 relative;
    the chunked reduction stays within 1e-4 of the float64 norm (issue 20 item 12)."""
    torch.manual_seed(0)
    model = nn.Embedding(50257, 768)
    with torch.no_grad():
        model.weight.mul_(0.02).add_(0.01)  # a mean offset, where float32 sums drift most
    index = LayerIndex.from_model(model)
    norms = LayerNorms(index, torch.device("cpu"))
    ours = norms.squared(index.params).sqrt()[0].item()
    exact = torch.linalg.vector_norm(model.weight.detach().double()).item()
    one_sum = torch._foreach_norm([model.weight.detach()], 2.0)[0].item()
    assert abs(one_sum - exact) / exact > 1e-3  # what a single float32 reduction gives
    assert abs(ours - exact) / exact < 1e-4


def _large_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Two layers above DOT_MIN_VALUES (one of them in chunks) and small ones around."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 8),  # small: the batched norm
        nn.Linear(512, 256),  # 131,072 weights: a dot product
        nn.LayerNorm(256),
        nn.Linear(256, 5000, bias=False),  # 1.28M weights: two chunks, a dot each
    ).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_cpu_tensors_take_dot_products_and_match_float64(dtype: torch.dtype) -> None:
    model = _large_model(dtype)
    index = LayerIndex.from_model(model)
    assert max(p.numel() for p in index.params) >= DOT_MIN_VALUES
    with OpCounter() as counter:
        squared = LayerNorms(index, index.device()).squared(index.params)
    assert counter.ops["aten.dot"] == 3  # 131,072 weights, and 1.28M in two chunks
    assert counter.ops["aten._foreach_norm"] == 1  # everything else, batched
    expected = torch.tensor([_by_hand(layer) for layer in model], dtype=torch.float64)
    torch.testing.assert_close(squared.double(), expected, rtol=1e-5, atol=0.0)


def test_a_large_tensor_that_is_not_contiguous_keeps_the_norm_kernel() -> None:
    model = _large_model()
    with torch.no_grad():  # a transposed layout: a dot product would need a copy
        model[1].weight = nn.Parameter(model[1].weight.detach().t().contiguous().t())
    assert not model[1].weight.is_contiguous()
    index = LayerIndex.from_model(model)
    with OpCounter() as counter:
        squared = LayerNorms(index, index.device()).squared(index.params)
    assert counter.ops["aten.dot"] == 2  # only the contiguous 1.28M weights, in two chunks
    expected = torch.tensor([_by_hand(layer) for layer in model], dtype=torch.float64)
    torch.testing.assert_close(squared.double(), expected, rtol=1e-5, atol=0.0)


def test_dot_products_carry_nan_and_inf_like_norms() -> None:
    model = _large_model()
    with torch.no_grad():
        model[1].weight[3, 7] = float("nan")
        model[3].weight[0, 0] = float("inf")
    index = LayerIndex.from_model(model)
    squared = LayerNorms(index, index.device()).squared(index.params)
    assert torch.isnan(squared[1]) and torch.isinf(squared[3])
    assert torch.isfinite(squared[0]) and torch.isfinite(squared[2])
