"""What keeps gradwatch cheap, checked structurally (no timing: this machine is noisy).

- one measurement dispatches the same ops whatever the depth: O(device x dtype groups);
- nothing on the hot path runs once per parameter (no per-tensor detach/clone/norm);
- host memory stays flat once the history window is full;
- the TensorBoard summary is refilled in place, and still carries the right values.
"""

from __future__ import annotations

import collections
import gc
import tracemalloc
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._sinks.tensorboard import SummaryTemplates, step_scalars

from .helpers import train_steps


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched at the top level (what would be kernel launches)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _stack(depth: int, *, float64_from: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for i in range(depth):
        dtype = torch.float64 if float64_from is not None and i >= float64_from else None
        layers.append(nn.Linear(8, 8, dtype=dtype))
    return nn.Sequential(*layers)


def _ops_of_one_measurement(model: nn.Module, **options: Any) -> collections.Counter[str]:
    def loss() -> torch.Tensor:
        x = torch.randn(2, 8)
        for layer in model:
            x = layer(x.to(layer.weight.dtype))
        return x.float().square().mean()

    with gradwatch.watch(model, **options) as watcher:
        for _ in range(3):  # warm-up: the first steps may build cached index tensors
            loss().backward()
            watcher.step()
            model.zero_grad()
        value = loss()
        value.backward()
        watcher.record_loss(value)
        with OpCounter() as counter:
            watcher.step()
    return counter.ops


@pytest.mark.parametrize("update_ratio_every", [0, 1], ids=["norms", "norms+update-ratio"])
def test_ops_per_measurement_do_not_grow_with_depth(update_ratio_every: int) -> None:
    shallow = _ops_of_one_measurement(_stack(4), update_ratio_every=update_ratio_every)
    deep = _ops_of_one_measurement(_stack(40), update_ratio_every=update_ratio_every)
    assert shallow == deep
    # grad norms + weight norms (+ the update's norms): one batched kernel each
    assert deep["aten._foreach_norm"] == 2 + update_ratio_every
    assert sum(deep.values()) < 40  # far fewer than one op per parameter (80 here)


def test_a_second_dtype_group_adds_one_kernel_per_norm() -> None:
    one_group = _ops_of_one_measurement(_stack(20), update_ratio_every=0)
    two_groups = _ops_of_one_measurement(_stack(20, float64_from=10), update_ratio_every=0)
    assert one_group["aten._foreach_norm"] == 2
    assert two_groups["aten._foreach_norm"] == 4


def test_host_memory_is_flat_once_the_history_is_full(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    ours = [tracemalloc.Filter(True, "*gradwatch*")]
    sizes = []

    def measure(step: int) -> None:
        if step + 1 in (50, 200):
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces(ours)
            sizes.append(sum(s.size for s in snapshot.statistics("filename")))

    # A 16-step history asks for detectors that need no more (not_learning's default 20).
    short = {"history": 16, "not_learning_steps": 16}
    with gradwatch.watch(model, optimizer, logdir=tmp_path, **short) as watcher:
        tracemalloc.start()  # after attaching: imports and writer set-up are not the point
        try:
            train_steps(model, optimizer, [(x, y)] * 200, watcher, after_step=measure)
        finally:
            tracemalloc.stop()
    assert len(watcher.history) == 16
    assert watcher.history.steps_seen == 200
    assert sizes[1] - sizes[0] < 16 * 1024, sizes  # 150 more steps, same window


def test_summary_templates_refill_values_and_keep_tags() -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    templates = SummaryTemplates(Summary)
    first = templates.pack([("a", 1.0), ("b", 2.0)])
    again = templates.pack([("a", 3.0), ("b", float("nan"))])
    assert again is first  # same tags: the cached message is refilled
    assert [v.tag for v in again.value] == ["a", "b"]
    assert again.value[0].simple_value == 3.0
    assert again.value[1].simple_value != again.value[1].simple_value  # NaN kept
    other = templates.pack([("a", 5.0)])
    assert [(v.tag, v.simple_value) for v in other.value] == [("a", 5.0)]
    for i in range(SummaryTemplates.MAX_TEMPLATES + 2):  # stays bounded
        templates.pack([(f"t{i}", 0.0)])
    assert len(templates._templates) <= SummaryTemplates.MAX_TEMPLATES


def test_logged_scalars_equal_step_scalars_when_layers_lose_gradients(tmp_path) -> None:
    """Refilled summaries must not leak values across steps whose tag sets differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    with gradwatch.watch(model, optimizer, logdir=tmp_path, update_ratio_every=2) as watcher:
        for step in range(6):
            model[1].requires_grad_(step % 3 != 1)  # layer 1 has no gradient every 3rd step
            x = torch.randn(8, 4)
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        watcher.close()
        for record in watcher.history:
            for tag, value in step_scalars(record, watcher.index):
                expected[tag].append((record.step, value))
    run = read_run(tmp_path)
    for tag, series in expected.items():
        logged = run.scalars[tag]
        assert [s for s, _ in logged] == [s for s, _ in series], tag
        torch.testing.assert_close(
            torch.tensor([v for _, v in logged]), torch.tensor([v for _, v in series])
        )
    assert [s for s, _ in run.scalars["grad_norm/1"]] == [0, 2, 3, 5]


def test_the_benchmarks_own_time_clock_wraps_live_entry_points_and_restores_them() -> None:
    """``benchmarks/bench_overhead.py`` times gradwatch's own work through its entry
    points; a renamed hook would silently drop out of that column, so check they exist,
    are timed while the clock runs, and are put back afterwards."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_overhead.py"
    spec = importlib.util.spec_from_file_location("bench_overhead", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    entry_points = bench._entry_points()
    originals = [owner.__dict__[name] for owner, name in entry_points]
    model = _stack(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with bench.own_time_clock() as clock:
        wrapped = [owner.__dict__[name] for owner, name in entry_points]
        assert all(now is not then for now, then in zip(wrapped, originals))
        with gradwatch.watch(model, optimizer, activation_every=1, locate_nonfinite=True) as gw:
            loss = model(torch.randn(2, 8)).square().mean()
            assert clock[0] > 0  # activation and localisation hooks ran in the forward
            before = clock[0]
            loss.backward()
            gw.record_loss(loss)
            optimizer.step()
        assert clock[0] > before
    assert [owner.__dict__[name] for owner, name in entry_points] == originals
