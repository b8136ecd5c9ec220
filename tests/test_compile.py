"""Watching ``torch.compile``'d models: same numbers and names as eager, no graph breaks.

Compiled with ``backend="aot_eager"``: Dynamo traces the forward and AOTAutograd builds the
joint forward/backward graph exactly as for inductor, but without generating C++ code, so
the tests need no compiler toolchain and compile in about a second on a small CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._measure.compile import compiled_modules

from .helpers import regression_batches, train_steps

BACKEND = "aot_eager"
STEPS = 12  # crosses two activation-sampling steps (0 and 10) at the default of 10


class Net(nn.Module):
    """A small user-defined model (``model.compile()`` skips pure ``nn.Sequential``s,
    whose code lies entirely inside torch.nn)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.act = nn.Tanh()
        self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.inp(x)))
        return self.out(h + self.block(h))


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Each test compiles from scratch and counts only its own graphs."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _compile(model: nn.Module, how: str) -> nn.Module:
    if how == "torch.compile":
        return torch.compile(model, backend=BACKEND)
    model.compile(backend=BACKEND)
    return model


def _train(
    forward: nn.Module, model: nn.Module, logdir: Path | None, watched: bool = True, **options
) -> tuple[list[float], gradwatch.Watcher | None]:
    """A plain loop; ``forward`` is what is called, ``model`` owns the parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    watcher = gradwatch.watch(forward, optimizer, logdir=logdir, **options) if watched else None
    losses = train_steps(forward, optimizer, regression_batches(STEPS, batch=8), watcher)
    if watcher is not None:
        watcher.close()
    return [loss.item() for loss in losses], watcher


@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_compiled_run_logs_what_the_eager_run_logs(tmp_path: Path, how: str) -> None:
    eager_model = Net()
    eager_losses, eager_watcher = _train(eager_model, eager_model, tmp_path / "eager")
    model = Net()
    compiled_losses, watcher = _train(_compile(model, how), model, tmp_path / "compiled")
    assert eager_watcher is not None and watcher is not None

    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5, atol=1e-7)
    assert watcher.index.names == eager_watcher.index.names == ("inp", "norm", "block.0", "out")
    compiled_history, eager_history = list(watcher.history), list(eager_watcher.history)
    assert len(compiled_history) == len(eager_history) == STEPS
    for got, want in zip(compiled_history, eager_history):
        np.testing.assert_allclose(got.grad_norm, want.grad_norm, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got.weight_norm, want.weight_norm, rtol=1e-5)
        assert got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-7)

    eager_run, compiled_run = read_run(tmp_path / "eager"), read_run(tmp_path / "compiled")
    eager_tags = {tag for tag in eager_run.scalars if not tag.startswith("act_")}
    assert set(compiled_run.scalars) == eager_tags  # activations are off when compiled
    assert {"grad_norm/inp", "weight_norm/out", "update_ratio/block.0"} <= eager_tags
    assert {"total/grad_norm", "total/loss"} <= eager_tags
    for tag in ("total/loss", "grad_norm/inp", "weight_norm/block.0"):
        got = [value for _, value in compiled_run.scalars[tag]]
        want = [value for _, value in eager_run.scalars[tag]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_watching_compiles_the_same_graphs_as_not_watching() -> None:
    """A watched compiled model compiles one graph with the same ops, like an unwatched
    one: no graph break, no recompile (the step hooks run outside the graph).

    The root module's localisation hooks run around the compiled forward (torch.nn's
    ``_call_impl`` is not traced); Dynamo converts them as frames of their own, which
    capture nothing.
    """
    model = Net()
    _train(torch.compile(model, backend=BACKEND), model, None, watched=False)
    unwatched = dict(counters["stats"])
    assert not counters["graph_break"]
    torch._dynamo.reset()
    counters.clear()
    model = Net()
    _train(torch.compile(model, backend=BACKEND), model, None, locate_nonfinite=True)
    assert dict(counters["stats"]) == unwatched
    assert unwatched["unique_graphs"] == 1
    assert not counters["graph_break"]
    assert counters["frames"]["ok"] == counters["frames"]["total"]


@pytest.mark.parametrize("activation_every", [1, 0])
def test_hooks_installed_before_compile_add_no_graph_break_or_op(activation_every: int) -> None:
    """Forward hooks present when Dynamo traces (watch() first, compile later) are inlined
    and return at once: the graph is the unwatched one, op for op."""
    x = regression_batches(1, batch=8)[0][0]
    model = Net()
    plain = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(
        model, optimizer, activation_every=activation_every, locate_nonfinite=True
    ) as watcher:
        armed = watcher._probe is not None and watcher._probe.armed
        assert armed == bool(activation_every)
        assert watcher._locator is not None
        hooked = torch._dynamo.explain(model)(x)
    assert plain.graph_break_count == hooked.graph_break_count == 0
    assert plain.graph_count == hooked.graph_count == 1
    assert [str(op) for op in hooked.ops_per_graph[0]] == [str(op) for op in plain.ops_per_graph[0]]


@pytest.mark.parametrize(("activation_every", "graphs"), [(0, 1), (10, 2)])
def test_training_compiled_after_watch_matches_eager(activation_every: int, graphs: int) -> None:
    """watch() on the eager model, then torch.compile: the same losses, no graph break.

    Dynamo guards on a module's hook dicts, so activation hooks armed at step 0 and removed
    after it cost one recompile (a graph with them, inert, and one without); re-arming at
    step 10 finds the first graph in the cache.
    """
    eager = Net()
    eager_losses, _ = _train(eager, eager, None)
    torch._dynamo.reset()
    counters.clear()
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with gradwatch.watch(
        model, optimizer, locate_nonfinite=True, activation_every=activation_every
    ) as watcher:
        compiled = torch.compile(model, backend=BACKEND)
        batches = regression_batches(STEPS, batch=8)
        losses = [loss.item() for loss in train_steps(compiled, optimizer, batches, watcher)]
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5, atol=1e-7)
    assert watcher.step_count == STEPS
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"]
    assert not any(record.activations for record in watcher.history)  # compiled: not sampled


@pytest.mark.parametrize("how", ["torch.compile", "module.compile", "submodule"])
def test_compiled_modules_are_found_and_names_unwrapped(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = Net()
    if how == "submodule":
        model.block = torch.compile(model.block, backend=BACKEND)  # type: ignore[assignment]
        watched: nn.Module = model
        expected = ["block"]
    else:
        watched = _compile(model, how)
        expected = [""]
    assert compiled_modules(watched) == expected
    assert compiled_modules(Net()) == []
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        watcher = gradwatch.watch(watched)
    with watcher:
        assert watcher.index.names == ("inp", "norm", "block.0", "out")
        assert watcher._probe is None
    assert "activation statistics are off for a torch.compile'd model" in caplog.text


# torch's own Adam, traced by Dynamo, touches a deprecated torch.jit API.
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
@pytest.mark.slow
def test_compiled_optimizer_step_runs_the_step_hooks_eagerly() -> None:
    """``torch.compile(optimizer.step)``: the watcher's step hooks are never traced, so the
    step compiles the graphs it compiles unwatched, and the statistics are eager ones."""
    norms = {}
    for watched in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = Net()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        step = torch.compile(optimizer.step, backend=BACKEND)
        watcher = gradwatch.watch(model, optimizer) if watched else None
        eager_norms = []
        for x, y in regression_batches(4, batch=8):
            nn.functional.mse_loss(model(x), y).backward()
            eager_norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
            step()
            optimizer.zero_grad()
        norms[watched] = dict(counters["stats"])
        if watcher is not None:
            watcher.close()
            logged = [record.total_grad_norm for record in watcher.history]
            np.testing.assert_allclose(logged, torch.stack(eager_norms).numpy(), rtol=1e-5)
    assert norms[True] == norms[False]


def test_jit_trace_and_export_of_a_watched_model_record_only_the_model() -> None:
    """``torch.jit.trace`` and ``torch.export`` right after a step (activation hooks
    armed, localisation on): the trace passes its own two-trace check, neither graph
    holds gradwatch's checks, and the watcher goes on measuring and locating after."""
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    (x, y), *_ = regression_batches(1)
    with gradwatch.watch(model, optimizer, activation_every=1, locate_nonfinite=True) as gw:
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in torch 2.13
            traced = torch.jit.trace(model, x)  # raised TracingCheckError before
        graph = str(traced.inlined_graph)
        assert "aminmax" not in graph and "aten::sum" not in graph, graph
        torch.testing.assert_close(traced(x), model(x))
        exported = str(torch.export.export(model, (x,)).graph)
        assert "aminmax" not in exported and "aten.sum" not in exported, exported
        with torch.no_grad():
            model.inp.bias.fill_(float("nan"))  # the next step's NaN comes from `inp`
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    nonfinite = [a for a in gw.alerts if a.kind == "nonfinite"]
    assert len(gw.history) == 2 and nonfinite and nonfinite[0].layer == "inp", gw.alerts
