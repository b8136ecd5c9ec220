"""Code run inside real process groups (gloo, CPU) by tests/test_distributed.py.

Each rank runs the same scenarios a single process runs on the full batch; the parent
test compares rank 0's TensorBoard log and the final weights with that reference. Kept
out of the test module so a spawned child imports only what it needs.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import gradwatch
from gradwatch._measure.distributed import local_tensor

from .helpers import make_mlp, regression_batches, train_steps

WORLD = 2
STEPS = 4
#: Layer whose gradient rank 1 corrupts (its rank-1 shard is non-empty under FSDP2).
NAN_LAYER = "0"
NAN_STEP = 1
MAX_NORM = 0.5
CLIP_VALUE = 0.02


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_model() -> nn.Sequential:
    """Width 7: shards of uneven size, and rank 1 holds an empty shard of the last layer."""
    return make_mlp(depth=3, width=7, seed=5)


def full_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return regression_batches(STEPS, batch=16, seed=9)


def rank_batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's equal slice of every full batch (so mean losses average exactly)."""
    out = []
    for x, y in full_batches():
        size = x.shape[0] // world
        out.append((x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]))
    return out


def wrap(model: nn.Module, kind: str) -> nn.Module:
    if kind == "single":
        return model
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for module in model:
            if isinstance(module, nn.Linear):
                fully_shard(module)
        fully_shard(model)
        return model
    raise ValueError(kind)


def full_state(model: nn.Module) -> dict[str, list[float]]:
    """Every parameter as a flat list, gathered from its shards, by unwrapped name."""
    out = {}
    for name, p in model.named_parameters():
        value = p.detach()
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        out[name.removeprefix("module.")] = value.flatten().tolist()
    return out


def scenarios(kind: str, rank: int, world: int, out_dir: str) -> dict[str, Any]:
    """Run every scenario on this rank; return what the parent checks (JSON-safe)."""
    batches = full_batches() if kind == "single" else rank_batches(rank, world)
    result: dict[str, Any] = {"rank": rank}
    logdir = os.path.join(out_dir, f"{kind}-rank{rank}")

    # 1. Statistics: per-layer norms, update ratios, total norm and loss, logged.
    model = wrap(make_model(), kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with gradwatch.watch(model, optimizer, logdir=logdir, update_ratio_every=1) as gw:
        train_steps(model, optimizer, batches, gw)
        result["is_writer"] = gw.is_writer
        result["layers"] = list(gw.index.names)
        if rank == 1:  # an alert only this rank can see (e.g. from rank-local activations)
            gw._publish(
                gradwatch.Alert("saturation", "warning", 2, "2", "rank-local test alert", value=0.9)
            )
    result["stats_weights"] = full_state(model)

    # 2. Clipping: the coefficient must come from the norm of the full gradient.
    for name, clip in (("clipnorm", MAX_NORM), ("clipvalue", gradwatch.ClipValue(CLIP_VALUE))):
        model = wrap(make_model(), kind)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        shard_norms: list[float] = []

        def shard_norm(step: int, model: nn.Module = model, out: list = shard_norms) -> None:
            squares = [local_tensor(p.grad).norm() ** 2 for p in model.parameters()]
            out.append(float(torch.stack(squares).sum().sqrt()))

        with gradwatch.watch(
            model, optimizer, logdir=f"{logdir}-{name}", clip=clip, update_ratio_every=0
        ):
            train_steps(model, optimizer, batches, before_step=shard_norm)
        result[f"{name}_weights"] = full_state(model)
        result[f"{name}_shard_norms"] = shard_norms

    # 3. A NaN in one rank's gradient only, on_nonfinite="skip": every rank skips.
    model = wrap(make_model(), kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    snapshots: dict[int, dict[str, list[float]]] = {}

    def corrupt(step: int) -> None:
        snapshots[step] = full_state(model)
        if step == NAN_STEP and rank == world - 1:
            layer = dict(model.named_modules())[("module." if kind == "ddp" else "") + NAN_LAYER]
            with torch.no_grad():
                local_tensor(layer.weight.grad).view(-1)[0] = float("nan")  # type: ignore[union-attr]

    nan_logdir = logdir + "-nan"
    with gradwatch.watch(model, optimizer, logdir=nan_logdir, on_nonfinite="skip") as gw:
        train_steps(model, optimizer, batches[:3], gw, before_step=corrupt)
    after = full_state(model)
    result["nan_alerts"] = [a.to_dict() for a in gw.alerts]
    result["nan_step_unchanged"] = snapshots[NAN_STEP + 1] == snapshots[NAN_STEP]
    changed = snapshots[NAN_STEP] != snapshots[0] and after != snapshots[2]
    result["nan_other_steps_changed"] = changed
    return result


def worker(rank: int, world: int, port: int, kind: str, out_dir: str) -> None:
    """Entry point of one rank: init the group, run the scenarios, write the result."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    status: dict[str, Any]
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        try:
            status = {"ok": True, **scenarios(kind, rank, world, out_dir)}
        finally:
            dist.destroy_process_group()
    except BaseException:
        status = {"ok": False, "error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"result-{kind}-{rank}.json"), "w") as f:
        json.dump(status, f)
