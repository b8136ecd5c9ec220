"""Distributed runs in real process groups (gloo backend, 2 CPU processes).

With DDP and with FSDP2 (``fully_shard``), rank 0's log must equal a single process
trained on the full batch, clipping must use the global norm, rank 1 must write
nothing, and a NaN on one rank must be reported by rank 0 and skipped on every rank.
"""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest
import torch

import gradwatch
from gradwatch._cli.logreader import read_run
from gradwatch._measure.distributed import GlobalNorms, sharded_l2_norm

from . import distributed_workers as workers

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

JOIN_TIMEOUT_S = 240


def spawn(kind: str, out_dir: str) -> list[dict]:
    """Run the scenarios on 2 ranks; fail (never hang) if a rank errs or stalls."""
    context = multiprocessing.get_context("spawn")
    port = workers.free_port()
    procs = [
        context.Process(
            target=workers.worker, args=(rank, workers.WORLD, port, kind, out_dir), daemon=True
        )
        for rank in range(workers.WORLD)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(JOIN_TIMEOUT_S)
    stalled = [proc for proc in procs if proc.is_alive()]
    for proc in stalled:
        proc.kill()
        proc.join(10)
    assert not stalled, f"{kind}: ranks still running after {JOIN_TIMEOUT_S}s"
    results = []
    for rank, proc in enumerate(procs):
        path = os.path.join(out_dir, f"result-{kind}-{rank}.json")
        assert os.path.exists(path), f"{kind}: rank {rank} exited {proc.exitcode} with no result"
        with open(path) as f:
            result = json.load(f)
        assert result["ok"], f"{kind} rank {rank} failed:\n{result['error']}"
        results.append(result)
    return results


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("single"))
    return out, workers.scenarios("single", 0, 1, out)


def _compare_logs(dist_dir: str, single_dir: str) -> None:
    logged, expected = read_run(dist_dir), read_run(single_dir)
    assert sorted(logged.scalars) == sorted(expected.scalars)
    for tag, series in expected.scalars.items():
        if tag.startswith("act_"):
            continue  # activation statistics are of rank 0's own micro-batch (documented)
        steps, values = zip(*series)
        got_steps, got = zip(*logged.scalars[tag])
        assert got_steps == steps, tag
        # Update ratios divide a small difference of weights: allow for its rounding.
        rtol = 1e-4 if tag.startswith("update_ratio/") else 1e-5
        np.testing.assert_allclose(got, values, rtol=rtol, atol=1e-7, err_msg=tag)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_distributed_matches_single_process(kind: str, tmp_path, reference) -> None:
    single_dir, single = reference
    rank0, rank1 = spawn(kind, str(tmp_path))

    # Layer names are those of the unwrapped model; only rank 0 writes.
    assert rank0["layers"] == rank1["layers"] == single["layers"] == ["0", "2", "4", "6"]
    assert rank0["is_writer"] and not rank1["is_writer"]
    assert not [path for path in os.listdir(tmp_path) if "rank1" in path]

    # Rank 0's per-layer statistics equal the single process's on the full batch.
    _compare_logs(str(tmp_path / f"{kind}-rank0"), os.path.join(single_dir, "single-rank0"))
    for name, values in single["stats_weights"].items():
        np.testing.assert_allclose(rank0["stats_weights"][name], values, rtol=1e-5, atol=1e-6)

    # An alert raised on rank 1 alone reaches rank 0's log.
    texts = [text for _, text in read_run(tmp_path / f"{kind}-rank0").alerts]
    assert any("(raised on rank 1)" in t and "rank-local test alert" in t for t in texts), texts

    # Clipping (watch(clip=...)) under DDP/FSDP2 equals single-process clipping.
    for name in ("clipnorm", "clipvalue"):
        _compare_logs(
            str(tmp_path / f"{kind}-rank0-{name}"), os.path.join(single_dir, f"single-rank0-{name}")
        )
        coefs = [
            v
            for _, v in read_run(os.path.join(single_dir, f"single-rank0-{name}")).scalars[
                "total/clip_coef"
            ]
        ]
        assert min(coefs) < 0.99, (name, coefs)  # the clip did act
        for result in (rank0, rank1):
            for param, values in single[f"{name}_weights"].items():
                np.testing.assert_allclose(
                    result[f"{name}_weights"][param], values, rtol=1e-5, atol=1e-6
                )
    if kind == "fsdp2":  # the trap the reduction avoids: a rank's shard norm is not the norm
        logged = [
            v for _, v in read_run(tmp_path / f"{kind}-rank0-clipnorm").scalars["total/grad_norm"]
        ]
        assert not np.allclose(rank0["clipnorm_shard_norms"], logged, rtol=1e-3)

    # A NaN in rank 1's gradient only: reported on rank 0, skipped on both ranks.
    for result in (rank0, rank1):
        nonfinite = [a for a in result["nan_alerts"] if a["kind"] == "nonfinite"]
        assert [a["step"] for a in nonfinite] == [workers.NAN_STEP], result["nan_alerts"]
        assert nonfinite[0]["layer"] == workers.NAN_LAYER
        assert result["nan_step_unchanged"] and result["nan_other_steps_changed"]
    nan_log = read_run(tmp_path / f"{kind}-rank0-nan")
    assert [step for step, text in nan_log.alerts if "nonfinite" in text] == [workers.NAN_STEP]


def test_without_a_process_group_statistics_stay_local(mlp) -> None:
    with gradwatch.watch(mlp) as gw:
        assert gw.is_writer
        assert GlobalNorms.create(gw.index, torch.device("cpu"), "auto") is None


def test_sharded_norm_without_a_group_is_the_plain_norm(mlp, batches) -> None:
    x, y = batches[0]
    torch.nn.functional.mse_loss(mlp(x), y).backward()
    grads = [p.grad for p in mlp.parameters()]
    expected = torch.nn.utils.get_total_norm(grads)
    torch.testing.assert_close(sharded_l2_norm(grads, torch.device("cpu")), expected)


@pytest.mark.parametrize(
    ("value", "error"), [("on", ValueError), (True, ValueError), ("ddp", ValueError)]
)
def test_bad_distributed_option_is_refused(value: object, error: type, mlp) -> None:
    with pytest.raises(error) as info:
        gradwatch.watch(mlp, distributed=value)
    assert "distributed" in str(info.value) and "'auto'" in str(info.value)
