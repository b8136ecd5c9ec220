"""What keeps gradwatch cheap, checked structurally (no timing: this machine is noisy).

- one measurement dispatches the same ops whatever the depth: O(device x dtype groups);
- nothing on the hot path runs once per parameter (no per-tensor detach/clone/norm);
- host memory stays flat once the history window is full;
- the TensorBoard summary is refilled in place, and still carries the right values;
- the benchmark harness (``benchmarks/``): its peers measure what they claim, its
  statistics and summary read the targets right, and the GPU check fails clearly
  without a GPU (the timings themselves are never asserted).
"""

from __future__ import annotations

import collections
import gc
import importlib.util
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._sinks.tensorboard import SummaryTemplates, step_scalars

from .helpers import OpCounter, train_steps


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


@pytest.mark.parametrize(
    ("options", "norm_kernels"),
    [
        # The measured step is step 3: no weight reading at the default cadence (every
        # 10th step), so the gradients' norms are the only batched norm.
        ({"update_ratio_every": 0}, 1),
        ({"update_ratio_every": 0, "weight_norm_every": 1}, 2),  # + the weights' norms
        ({"update_ratio_every": 1}, 3),  # an update-ratio step reads weights + update too
    ],
    ids=["grad-norms", "grad+weight-norms", "norms+update-ratio"],
)
def test_ops_per_measurement_do_not_grow_with_depth(
    options: dict[str, int], norm_kernels: int
) -> None:
    shallow = _ops_of_one_measurement(_stack(4), **options)
    deep = _ops_of_one_measurement(_stack(40), **options)
    assert shallow == deep
    # one batched kernel per norm: the gradients', the weights', the update's
    assert deep["aten._foreach_norm"] == norm_kernels
    assert sum(deep.values()) < 40  # far fewer than one op per parameter (80 here)


def test_a_second_dtype_group_adds_one_kernel_per_norm() -> None:
    every_step = {"update_ratio_every": 0, "weight_norm_every": 1}  # grads and weights
    one_group = _ops_of_one_measurement(_stack(20), **every_step)
    two_groups = _ops_of_one_measurement(_stack(20, float64_from=10), **every_step)
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
        # From step 120: the first gradient-flow picture (step 100, flow_image_every)
        # builds its font and layout once; the pictures of steps 200 and 300 fall inside.
        if step + 1 in (120, 320):
            # Events still queued for the writer thread are in flight, not kept: on a busy
            # machine its backlog varies by kilobytes, so it is written out first.
            for sink in watcher._sinks:
                sink.flush()
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces(ours)
            sizes.append(sum(s.size for s in snapshot.statistics("filename")))

    # A 16-step history asks for detectors that need no more (not_learning's default 20).
    short = {"history": 16, "not_learning_steps": 16}
    with gradwatch.watch(model, optimizer, logdir=tmp_path, **short) as watcher:
        tracemalloc.start()  # after attaching: imports and writer set-up are not the point
        try:
            train_steps(model, optimizer, [(x, y)] * 320, watcher, after_step=measure)
        finally:
            tracemalloc.stop()
    assert len(watcher.history) == 16
    assert watcher.history.steps_seen == 320
    assert sizes[1] - sizes[0] < 16 * 1024, sizes  # 200 more steps, same window


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


BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


def _benchmark_module(name: str) -> Any:
    """A script of ``benchmarks/`` (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def bench() -> Any:
    return _benchmark_module("bench_overhead")


def test_the_benchmarks_own_time_clock_wraps_live_entry_points_and_restores_them(
    bench: Any,
) -> None:
    """``benchmarks/bench_overhead.py`` times gradwatch's own work through its entry
    points; a renamed hook would silently drop out of that column, so check they exist,
    are timed while the clock runs, and are put back afterwards."""
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


# --------------------------------------------------------------------------- the harness
def _grads_of_a_small_step(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    loss = model(torch.randn(5, 4)).square().mean()
    loss.backward()
    return model, loss


def test_lightning_style_peer_reads_every_parameter_norm_and_the_total(
    bench: Any, tmp_path
) -> None:
    model, loss = _grads_of_a_small_step()
    mode = bench.LightningNormMode()
    mode.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), str(tmp_path))
    mode.after_backward(model, loss, step=0)
    mode.detach()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert set(mode.last) == {f"grad_2.0_norm/{n}" for n in grads} | {"grad_2.0_norm_total"}
    for name, grad in grads.items():
        assert math.isclose(mode.last[f"grad_2.0_norm/{name}"], grad.norm().item(), rel_tol=1e-6)
    everything = torch.cat([g.flatten() for g in grads.values()])
    assert math.isclose(mode.last["grad_2.0_norm_total"], everything.norm().item(), rel_tol=1e-5)
    assert all(isinstance(v, float) for v in mode.last.values())  # read back to the host


def test_torchtitan_style_peer_keeps_the_total_on_the_device_and_asserts_finiteness(
    bench: Any,
) -> None:
    model, loss = _grads_of_a_small_step()
    mode = bench.TorchtitanNormMode()
    mode.after_backward(model, loss, step=0)
    everything = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert isinstance(mode.last, torch.Tensor)  # never read back by the peer
    torch.testing.assert_close(mode.last, everything.norm())
    next(model.parameters()).grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError):  # on the CPU the async assert fails at once
        mode.after_backward(model, loss, step=1)


def test_bootstrap_interval_brackets_the_median_and_is_reproducible(bench: Any) -> None:
    values = [1.0, 1.02, 0.99, 1.05, 1.01, 0.98, 1.03, 1.00, 1.04, 0.97, 1.10]
    med, lo, hi = bench.bootstrap_median_ci(values)
    assert med == 1.01
    assert min(values) <= lo <= med <= hi <= max(values)
    assert bench.bootstrap_median_ci(values) == (med, lo, hi)
    assert bench.bootstrap_median_ci([1.5] * 7) == (1.5, 1.5, 1.5)
    wider = bench.bootstrap_median_ci([2 * v - 1 for v in values])  # twice the spread
    assert wider[2] - wider[1] > hi - lo
    with pytest.raises(ValueError, match="no values"):
        bench.bootstrap_median_ci([])


def test_paired_ratios_divide_within_a_round_only(bench: Any) -> None:
    # Round 1 is missing from the first configuration (an every-3rd-round row).
    assert bench.paired_ratios({0: 2.0, 2: 3.0}, {0: 1.0, 1: 5.0, 2: 2.0}) == [2.0, 1.5]


def _result(bench: Any, name: str, **walls: float) -> Any:
    """A workload's result whose configurations have the given median wall ratios."""
    rows = [bench.RowResult(bench.BASELINE, "unwatched", 100.0, None, None)]
    for config in bench.configs()[1:]:
        med = walls.get(config.key, 1.0)
        rows.append(
            bench.RowResult(
                config.key,
                config.label,
                100.0 * med,
                (med, med - 0.01, med + 0.01),
                (med, med, med),
                target=config.target,
            )
        )
    versus = {pair: (walls.get("/".join(pair), 1.0),) * 3 for pair in bench.VERSUS}
    return bench.WorkloadResult(name, f"{name}: header", 5, rows, versus)


def test_summary_table_lines_up_every_configuration_and_reads_the_targets(bench: Any) -> None:
    results = [
        _result(
            bench,
            "transformer",
            default=1.015,
            locate=1.07,
            aa=1.004,
            **{"default/lightning": 0.98},
        ),
        _result(bench, "mlp", default=1.06, **{"default/lightning": 1.03}),
    ]
    lines = bench.summary_table(results)
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| configuration | transformer | mlp | target |"
    labels = [c.label for c in bench.configs()[1:]]
    assert [row.split(" | ")[0][2:] for row in table[2 : 2 + len(labels)]] == labels
    default = next(c for c in bench.configs() if c.key == bench.DEFAULT)
    default_row = next(row for row in table if row.startswith(f"| {default.label}"))
    assert "1.015x [1.005, 1.025]" in default_row and "1.060x" in default_row
    text = "\n".join(lines)
    assert (
        "transformer: default 1.015x [1.005, 1.025] (target <= 1.02): met by the median, "
        "not resolved" in text
    )
    assert "transformer: locate_nonfinite 1.070x" in text and "(target <= 1.05): MISSED" in text
    assert (
        "transformer: default / Lightning-style 0.980x [0.980, 0.980] (target <= 1.0): met\n"
        in text
    )
    assert "mlp: default / Lightning-style 1.030x [1.030, 1.030] (target <= 1.0): MISSED" in text
    assert "transformer: noise floor (A/A) 1.004x, CI half-width 0.010" in text


def test_arguments_quick_mode_and_clear_errors(bench: Any, capsys) -> None:
    args = bench.parse_args(["--quick"])
    assert (args.rounds, args.memory_steps, args.own_steps) == (2, 300, 10)
    assert args.sections == set(bench.SECTIONS)
    full = bench.parse_args(["--only", "timing,memory", "--rounds", "7"])
    assert (full.rounds, full.memory_steps, full.sections) == (7, 10_000, {"timing", "memory"})
    assert full.threads == 2 and full.block == 10
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "timing,speed"])
    assert "unknown section(s) ['speed']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--own-steps", "5"])
    assert "--own-steps: 0 (none) or at least 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--workloads", "resnet"])
    assert "--workloads: choose from" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.parse_args(["--device", "cuda"])
        assert "sees no CUDA device" in capsys.readouterr().err


def test_results_file_is_named_by_date_and_machine(bench: Any) -> None:
    import datetime

    path = bench.default_out_path(torch.device("cpu"), datetime.date(2026, 11, 30), "/r")
    assert path == "/r/bench_overhead-2026-11-30-cpu.md"


@pytest.mark.slow
def test_quick_run_times_every_configuration_on_a_real_model(bench: Any, tmp_path) -> None:
    out = tmp_path / "bench.md"
    args = [
        "--quick",
        "--only",
        "timing",
        "--workloads",
        "mlp",
        "--rounds",
        "2",
        "--own-steps",
        "10",
        "--out",
        str(out),
    ]
    (result,) = bench.main(args)
    assert [row.key for row in result.rows] == [c.key for c in bench.configs()]
    assert all(row.wall is not None for row in result.rows[1:])
    assert set(result.versus) == set(bench.VERSUS)
    timed_alone = ("norms", "default", "lightning", "torchtitan")  # gradwatch and the peers
    assert all(row.own_ms for row in result.rows if row.key.startswith(timed_alone))
    assert not any(row.own_ms for row in result.rows if row.key in ("unwatched", "aa"))
    text = out.read_text()
    assert "## Summary" in text and "| configuration | mlp | target |" in text
    assert "| own time per step: lightning |" in text and "against Lightning-style" in text


def _junit_of_a_real_pytest_run(pytester: Any, outcomes: str) -> pathlib.Path:
    """JUnit XML from pytest itself, for a file with one test per letter of ``outcomes``
    (p: passes, f: fails, s: skipped)."""
    body = {"p": "pass", "f": "assert False", "s": "pytest.skip('no GPU')"}
    source = "import pytest\n" + "".join(
        f"def test_{i}():\n    {body[o]}\n" for i, o in enumerate(outcomes)
    )
    pytester.makepyfile(test_cuda_like=source)
    xml = pytester.path / "junit.xml"
    pytester.runpytest_inprocess(f"--junitxml={xml}", "-p", "no:cacheprovider")
    return xml


def _bench_text(bench: Any) -> str:
    lines = ["# bench_overhead", "", "gradwatch 0.1.0, torch 2.13.0, GPU NVIDIA H200", ""]
    lines += bench.workload_table(_result(bench, "mlp"))
    lines += bench.summary_table([_result(bench, "mlp")])
    return "\n".join(lines)


def test_gpu_summary_passes_only_when_every_part_passed(bench: Any, pytester: Any) -> None:
    summary = _benchmark_module("gpu_summary")
    passing = summary.read_junit(str(_junit_of_a_real_pytest_run(pytester, "ppp")))
    assert (passing.tests, passing.passed, passing.skipped) == (3, 3, 0)
    lines, ok = summary.summarise(0, passing, 0, _bench_text(bench))
    text = "\n".join(lines)
    assert ok and text.endswith("verdict: PASS")
    assert "machine: gradwatch 0.1.0, torch 2.13.0, GPU NVIDIA H200" in text
    assert "CUDA tests: 3 passed, 0 failed, 0 skipped of 3" in text
    assert "## Summary" in text and "| configuration | mlp | target |" in text
    assert "### mlp: header" not in text  # one summary, not every table

    failing = summary.read_junit(str(_junit_of_a_real_pytest_run(pytester, "pfs")))
    assert failing.failed_names == ["test_cuda_like::test_1"]
    lines, ok = summary.summarise(1, failing, 0, _bench_text(bench))
    assert not ok and "CUDA tests failed" in lines[-1] and "skipped" in lines[-1]

    lines, ok = summary.summarise(0, passing, 124, "gradwatch 0.1.0\n### mlp: part")
    assert not ok and "ran out of time" in lines[-1]
    assert "overhead table: incomplete" in lines
    lines, ok = summary.summarise(0, None, 0, _bench_text(bench))
    assert not ok and "did not report" in lines[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_fails_clearly_without_a_gpu() -> None:
    done = _gpu_check({**os.environ, "GPU_CHECK_PYTHON": sys.executable}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "FAILED: no CUDA device" in done.stderr
    assert "CUDA-only tests" not in done.stderr  # stopped before running anything


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks a machine without one")
@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA torch is a ready interpreter")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_installs_nothing_where_nvidia_smi_lists_no_gpu(tmp_path) -> None:
    """Without a ready interpreter the check would build a venv and install a CUDA torch
    (several GB): where no NVIDIA GPU is visible it stops first, saying so."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_PYTHON"}
    env["GPU_CHECK_VENV"] = str(venv)
    # python3 on PATH is this interpreter, whose torch is a CPU build: not "ready".
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    done = _gpu_check(env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no NVIDIA GPU found" in done.stderr
    assert not venv.exists()


def _gpu_check(env: dict[str, str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """``bash benchmarks/gpu_check.sh`` in ``env``, its output captured."""
    return subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_profile_step_clocks_time_what_they_find_and_put_it_back() -> None:
    import threading

    profile = _benchmark_module("profile_step")
    from gradwatch._watcher import Watcher

    original = Watcher.__dict__["record_loss"]
    components = [
        ("record_loss", "gradwatch._watcher:Watcher.record_loss"),
        ("gone", "gradwatch._watcher:Watcher.no_such_method"),
        ("gone module", "gradwatch.no_such_module:Thing.method"),
    ]
    model = _stack(2)
    with profile.component_clocks(components, threading.get_ident()) as (totals, missing):
        assert Watcher.__dict__["record_loss"] is not original
        with gradwatch.watch(model) as watcher:
            loss = model(torch.randn(2, 8)).square().mean()
            loss.backward()
            watcher.record_loss(loss)
            watcher.step()
    assert Watcher.__dict__["record_loss"] is original
    assert totals["record_loss"] > 0 and totals["self: record_loss"] > 0
    assert [m.split(" (")[0] for m in missing] == ["gone", "gone module"]
    assert profile.parse_options(["locate_nonfinite=True", "log_every=5", "x=abc"]) == {
        "locate_nonfinite": True,
        "log_every": 5,
        "x": "abc",
    }
    threads = profile.thread_cpu_seconds()
    assert threads["main (training) thread"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-scale", "0"], "--batch-scale: expected an integer >= 1, got 0"),
        (["--device", "cuda"], "sees no CUDA device"),
    ],
)
def test_profile_step_refuses_bad_options_naming_them(argv, message, capsys) -> None:
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("checks a machine without a GPU")
    profile = _benchmark_module("profile_step")
    with pytest.raises(SystemExit) as stopped:
        profile.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_localisation_benchmark_measures_the_floor_of_what_a_step_checks() -> None:
    """``benchmarks/bench_localize.py`` spies on the locator's one check per tensor to
    size its floor line: a renamed internal would silently empty that line, so count what
    it sees on a small stack and check the spy is put back."""
    from gradwatch._measure.localize import NonfiniteLocator

    localize = _benchmark_module("bench_localize")
    model = localize.make_model(depth=2, width=8)  # (Linear, LayerNorm, GELU) x2, Linear
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 8), torch.randn(4, 1)

    def step(i: int) -> None:
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    original = NonfiniteLocator._slots
    with gradwatch.watch(model, optimizer, locate_nonfinite=True):
        step(0)
        shapes = localize.checked_shapes(step, 1)
    assert NonfiniteLocator._slots is original
    # Forward: the batch and the 7 modules' outputs; backward: the gradient of each
    # output (the input needs none): each tensor once.
    assert len(shapes) == 1 + 7 + 7
    assert all(dtype == torch.float32 for _, dtype in shapes)
    assert localize.read_once_ms(shapes, torch.device("cpu"), repeats=1) > 0
