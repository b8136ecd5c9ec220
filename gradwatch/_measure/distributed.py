"""Global statistics under ``torch.distributed``: DDP, FSDP2 and the alert relay.

Every rank calls :func:`gradwatch.watch` on its own copy of the (wrapped) model. This
module makes the numbers every rank sees global, and identical on every rank:

* **One all-reduce per step.** Each rank stacks its *local contribution* to every
  layer's squared gradient norm and squared weight norm, plus the loss, into one small
  float32 vector (``2 * layers + 2`` values) and all-reduces it with ``SUM``. Square
  roots are taken afterwards, so the total norm is the true global norm, not a
  local-shard norm (that trap is off by about √world).
* **Sharded parameters (FSDP2 ``fully_shard``, DTensor).** A rank's contribution is the
  sum of squares of its local shards (``DTensor.to_local()``). On a mesh dimension where a
  parameter is replicated (HSDP, or a plain parameter outside ``fully_shard``), only the
  replica at coordinate 0 contributes, so every element is counted exactly once.
* **Replicated parameters (DDP).** DDP has already averaged the gradients, so every rank
  holds the same gradients and weights: rank 0 contributes its local norms, the others
  contribute zeros, and the result is exactly rank 0's local value (``x + 0 == x``).
* **Non-finite values agree.** A rank that does not contribute a value still adds
  ``value * 0``: zero when finite, NaN when it is NaN or inf. So a NaN that exists on one
  rank only (a corrupted gradient, a NaN loss) turns the global statistic NaN on every
  rank, and every rank takes the same ``on_nonfinite`` decision (all skip together).
* **The loss** is the mean over the ranks that recorded one.
* **Update ratios** (every ``update_ratio_every`` steps) need the weights after the
  update, so under sharding they cost a second all-reduce of ``layers`` values on those
  steps; under DDP they are local (the weights are the same on every rank).

Only rank 0 writes logs. Alerts are decided from the global statistics, so every rank
raises the same ones; an alert that only one rank can see (e.g. from rank-local
activation statistics) is sent to rank 0 through the process group's key-value store by
:class:`AlertRelay` (host-side only, no collective, no device sync) and written there.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from gradwatch._alerts import Alert
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.record import StepRecord
from gradwatch._measure.stats import LayerNorms, LocalNorms, NormReducer, WeightSnapshot

logger = logging.getLogger(__name__)

#: Watchers created in a process group, counted per process: every rank creates its
#: watchers in the same order, so the n-th watcher on each rank shares key prefix n.
_SEQUENCE = itertools.count()


def process_group_size() -> int:
    """The default process group's world size, or 1 when there is none."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


@functools.lru_cache(maxsize=1)
def _dtensor_class() -> type | None:
    """``DTensor``, imported once (it is asked about for every parameter, every step).

    Feature-detected: the public ``torch.distributed.tensor`` path is where current torch
    keeps it; older builds had it only under ``torch.distributed._tensor``, and a build
    without either has no sharded parameters to look for (``None``).
    """
    if not dist.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def is_dtensor(tensor: object) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2 / tensor-parallel)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (a view sharing its storage), else the tensor."""
    return tensor.to_local() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def _contributes(param: Tensor, rank: int) -> bool:
    """Whether this rank adds ``param``'s local values to the global sum (see module doc)."""
    if is_dtensor(param):
        coordinate = param.device_mesh.get_coordinate()  # type: ignore[attr-defined]
        if coordinate is None:  # this rank is not in the parameter's mesh
            return False
        placements = param.placements  # type: ignore[attr-defined]
        replicated = [c for c, pl in zip(coordinate, placements) if not pl.is_shard()]
        return all(c == 0 for c in replicated)
    return rank == 0


def norm_reducer(index: LayerIndex, device: torch.device, mode: str) -> NormReducer:
    """The watcher's :class:`NormReducer`, chosen once at attach time: global statistics
    in a process group of several ranks (unless ``distributed="off"``), else local."""
    reducer = GlobalNorms.create(index, device, mode)
    return reducer if reducer is not None else LocalNorms(index, device)


class GlobalNorms:
    """Per-layer squared norms and the loss, summed over the ranks in one all-reduce.

    The :class:`NormReducer` of a process group. Built once at attach time from the layer
    index; ``reduce_step`` is called once per optimizer step by the watcher, on every
    rank, in the same order (it is a collective).
    """

    def __init__(
        self, index: LayerIndex, device: torch.device, *, rank: int, world_size: int
    ) -> None:
        self.index = index
        self.device = device
        self.rank = rank
        self.world_size = world_size
        #: True when some parameter is a DTensor with a sharded placement (FSDP2).
        self.sharded = any(
            is_dtensor(p) and any(pl.is_shard() for pl in p.placements)  # type: ignore[attr-defined]
            for p in index.params
        )
        self._contributes = tuple(_contributes(p, rank) for p in index.params)
        self._norms = LayerNorms(index, device)
        self._snapshot = WeightSnapshot()

    @classmethod
    def create(cls, index: LayerIndex, device: torch.device, mode: str) -> GlobalNorms | None:
        """The reducer for this process group, or None when statistics stay local."""
        if mode == "off" or process_group_size() <= 1:
            return None
        return cls(index, device, rank=int(dist.get_rank()), world_size=process_group_size())

    # ------------------------------------------------------------------ per step
    def contribution(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """This rank's share of each layer's squared norm (NaN/inf kept visible, see doc)."""
        local = [None if t is None else local_tensor(t) for t in tensors]
        if all(self._contributes):
            return self._norms.squared(local)
        if not any(self._contributes):
            # `* 0.0` rather than zeros: a NaN/inf here must still poison the global sum.
            return self._norms.squared(local) * 0.0
        own = self._norms.squared([t if c else None for t, c in zip(local, self._contributes)])
        rest = self._norms.squared([None if c else t for t, c in zip(local, self._contributes)])
        return own + rest * 0.0

    def reduce_step(
        self,
        grads: Sequence[Tensor | None],
        params: Sequence[Tensor] | None,
        loss: Tensor,
        has_loss: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Global per-layer squared grad and weight norms and the mean loss (shape ``(1,)``).

        One ``all_reduce(SUM)`` of ``2 * layers + 2`` floats (``layers + 2`` on a step
        that does not read the weights: ``params`` None, weight norms None). On NCCL it
        is queued on the device stream and the host does not wait for it; nothing here
        reads a value back.
        """
        num = self.index.num_layers
        if has_loss:
            loss_part = torch.cat([loss.reshape(1), torch.ones(1, device=self.device)])
        else:
            loss_part = torch.zeros(2, device=self.device)
        parts = [self.contribution(grads)]
        if params is not None:
            parts.append(self.contribution(params))
        payload = torch.cat([*parts, loss_part])
        dist.all_reduce(payload, op=dist.ReduceOp.SUM)
        end = len(parts) * num
        mean_loss = payload[end : end + 1] / payload[end + 1]
        weights = payload[num : 2 * num] if params is not None else None
        return payload[:num], weights, mean_loss

    def snapshot(self, params: Sequence[Tensor]) -> list[Tensor]:
        """A copy of this rank's local parameter values, for the update ratio."""
        return self._snapshot.take([local_tensor(p) for p in params])

    def update_squared(self, before: list[Tensor]) -> Tensor:
        """Global per-layer ‖Δw‖² from :meth:`snapshot`'s copy; consumes ``before``.

        Under DDP every rank holds the same weights, so this is local; under sharding it
        costs one all-reduce of ``layers`` floats (only on update-ratio steps).
        """
        after = [local_tensor(p.detach()) for p in self.index.params]
        if before:
            torch._foreach_sub_(before, after)
        if not self.sharded:
            return self._norms.squared(before)
        squared = self.contribution(before)
        dist.all_reduce(squared, op=dist.ReduceOp.SUM)
        return squared


def has_dtensor(tensors: Sequence[Tensor]) -> bool:
    """True when some tensor is a DTensor (a sharded or tensor-parallel value)."""
    return any(is_dtensor(t) for t in tensors)


def sharded_l2_norm(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Global L2 norm of ``tensors`` when some are DTensor shards: the norm of the full
    tensors, each element counted once (see the module doc). One all-reduce of a scalar.

    Clippers use it for the norm *after* clipping (``ClipValue``, ``AGC``), which the
    per-step reduction cannot know in advance. Returns a float32 scalar on ``device``.
    """
    rank = int(dist.get_rank()) if process_group_size() > 1 else 0
    squares = [torch.zeros((), device=device)]
    for tensor in tensors:
        square = torch.linalg.vector_norm(
            local_tensor(tensor.detach()), dtype=torch.float32
        ).square()
        # non_blocking: a device-to-device hop must not stall the host.
        square = square.to(device, non_blocking=True)
        squares.append(square if _contributes(tensor, rank) else square * 0.0)
    total = torch.stack(squares).sum()
    if process_group_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.sqrt()


def full_value(tensor: Tensor) -> Tensor:
    """A DTensor's full value (a replicated norm from ``get_total_norm``), else the tensor."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


#: Alert kinds a rank can raise from what only it sees: activation statistics of its own
#: micro-batch, and a non-finite value whose producing module its localisation hooks
#: found. Every other kind comes from the global statistics, identical on every rank.
RANK_LOCAL_KINDS = frozenset({"saturation", "dead_units", "poor_init", "nonfinite"})


class AlertRelay:
    """Carries alerts raised on ranks other than 0 to rank 0, through the c10d store.

    On a non-writing rank it is a sink (``write_alert`` posts the alert); on rank 0 the
    watcher calls :meth:`receive` to collect posted alerts and :meth:`finish` at close.
    Store operations are small host-side messages (no collective, no device sync), so a
    rank that raises nothing costs nothing, and rank 0 polls at most once a second.
    """

    #: Rank 0 waits at most this long at close for the other ranks to close.
    CLOSE_TIMEOUT_S = 10.0
    POLL_INTERVAL_S = 1.0

    def __init__(self, store: Any, prefix: str, rank: int, world_size: int) -> None:
        self._store = store
        self._prefix = prefix
        self.rank = rank
        self.world_size = world_size
        self._seen = 0
        self._last_poll = float("-inf")
        self._held: list[Alert] = []

    @classmethod
    def create(cls, reducer: NormReducer) -> AlertRelay | None:
        """A relay for this process group, or None (no group, or no store to use)."""
        if not isinstance(reducer, GlobalNorms):
            return None
        sequence = next(_SEQUENCE)
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # a backend without a store: alerts stay on their rank
            logger.debug("gradwatch: no c10d store; alerts stay on the rank raising them")
            return None
        return cls(store, f"gradwatch/{sequence}/", reducer.rank, reducer.world_size)

    # ------------------------------------------------------------ sending ranks
    def write_step(self, record: StepRecord, index: LayerIndex) -> None:
        """Steps are logged by rank 0 from the same global statistics: nothing to send."""

    def write_alert(self, alert: Alert) -> None:
        if alert.kind not in RANK_LOCAL_KINDS:
            return  # from the global statistics: rank 0 raises the same alert itself
        payload = json.dumps({"rank": self.rank, **alert.to_dict()})
        slot = int(self._store.add(self._prefix + "count", 1))
        self._store.set(f"{self._prefix}alert/{slot}", payload)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Tell rank 0 this rank has sent everything it will send."""
        self._store.add(self._prefix + "closed", 1)

    # -------------------------------------------------------------- rank 0 side
    def receive(self, up_to_step: int | None, *, force: bool = False) -> list[Alert]:
        """Alerts posted by other ranks for steps <= ``up_to_step`` (None: all of them).

        Alerts for later steps are held back until rank 0 has consumed that step itself,
        so an alert every rank raises is published as rank 0's own.
        """
        now = time.monotonic()
        if force or now - self._last_poll >= self.POLL_INTERVAL_S:
            self._last_poll = now
            self._held.extend(self._fetch())
        ready: list[Alert] = []
        held: list[Alert] = []
        for alert in self._held:
            (ready if up_to_step is None or alert.step <= up_to_step else held).append(alert)
        self._held = held
        return ready

    def finish(self) -> list[Alert]:
        """At close on rank 0: wait (bounded) for the other ranks to close, then collect."""
        deadline = time.monotonic() + self.CLOSE_TIMEOUT_S
        while time.monotonic() < deadline:
            if int(self._store.add(self._prefix + "closed", 0)) >= self.world_size - 1:
                break
            time.sleep(0.02)
        else:
            logger.warning(
                "gradwatch: not every rank closed its watcher within %.0f s; alerts they "
                "raise later will not reach rank 0's log",
                self.CLOSE_TIMEOUT_S,
            )
        return self.receive(None, force=True)

    def _fetch(self) -> Iterator[Alert]:
        count = int(self._store.add(self._prefix + "count", 0))
        while self._seen < count:
            key = f"{self._prefix}alert/{self._seen + 1}"
            if not self._store.check([key]):  # slot claimed, not written yet: next poll
                return
            data = json.loads(self._store.get(key))
            self._seen += 1
            yield _alert_from_dict(data)


def _alert_from_dict(data: dict[str, Any]) -> Alert:
    rank = data.pop("rank")
    for key in ("value", "threshold"):
        if isinstance(data[key], str):
            data[key] = float(data[key])
    data["message"] = f"(raised on rank {rank}) {data['message']}"
    return Alert(**data)
