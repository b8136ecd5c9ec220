"""Per-layer norms computed in batched kernels on the model's device.

The hot path: one ``torch._foreach_norm`` per (device, dtype) group of tensors, then one
``index_add_`` per group folds per-parameter norms into per-layer squared norms. On an
accelerator the number of kernel launches is O(groups), not O(parameters); on the CPU,
where a launch is a function call, each large tensor takes a BLAS dot product instead
(:func:`_kernel_of`: faster, and more precise). Nothing here reads a value back to the
host (no ``.item()``, no ``.cpu()``, no Python branching on tensor values), so a CUDA
stream is never synchronised (compare ``torch.nn.utils.clip_grad``).
Norms are accumulated in float32 whatever the parameters' dtype (bf16/fp16 included).
A float32 sum over tens of millions of values drifts (a 38.6M-value embedding's norm in
one ``_foreach_norm``, as in ``torch.nn.utils.get_total_norm``, is off by 2.7e-3
relative), so a contiguous tensor of more than :data:`NORM_CHUNK` values is reduced as
chunks of that size whose squares are then added: 1e-5 relative on that embedding, at
the same cost (the chunks are views, and the kernel reads the same memory once).

A watcher reaches these norms through a :class:`NormReducer`, chosen once at attach time:
:class:`LocalNorms` here, or ``GlobalNorms`` (``distributed``) when a process group
makes the statistics global.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from gradwatch._measure.devices import CPU, host_values_on, on_device
from gradwatch._measure.layers import LayerIndex

#: A bucket of tensors reduced together: their device, dtype and kernel (see _kernel_of).
_Bucket = tuple[torch.device, torch.dtype, str]
_GroupKey = tuple[torch.device, torch.dtype, str, tuple[int, ...]]
#: Tensors with more values than this are reduced in chunks of this size (see above).
NORM_CHUNK = 2**20
#: Low-precision dtypes whose norms are accumulated in float32.
_UPCAST = (torch.float16, torch.bfloat16)
#: Dtypes whose squared norms the CPU may take from BLAS dot products.
_BLAS_DOT = (torch.float32, torch.float64)
#: On the CPU, a contiguous float32/float64 tensor of at least this many values (256 KiB
#: in float32) is reduced with its own BLAS dot product (see :func:`_kernel_of`).
DOT_MIN_VALUES = 2**16
#: The two kernels: one batched ``_foreach_norm`` per bucket, or a dot product per tensor.
_FOREACH, _DOT = "foreach_norm", "dot"


def _dense_values(tensor: Tensor) -> Tensor:
    """A real, strided view of a tensor's stored values with the same L2 norm.

    A sparse gradient contributes its non-zeros; a complex tensor is viewed as pairs of
    reals (|a+bi|² = a² + b²), so every group can be reduced in float32. A real strided
    tensor (nearly every one) is returned as it is, after two attribute reads.
    """
    if tensor.layout == torch.strided and not tensor.is_complex():
        return tensor
    if tensor.layout == torch.sparse_coo:
        tensor = tensor.coalesce().values()
    elif tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    return tensor


def _kernel_of(device: torch.device, dtype: torch.dtype, numel: int, contiguous: bool) -> str:
    """How a (dense) tensor's squared norm is taken: with its own BLAS dot product (a
    large, contiguous float32/float64 tensor on the CPU), or in its bucket's
    ``_foreach_norm``.

    On an accelerator ``_foreach_norm`` is one fused multi-tensor kernel. On the CPU it is
    a loop of generic reduction kernels, while a dot product of a tensor with itself is
    the same memory pass in BLAS, vectorised with fused multiply-adds: 1.7-3x faster
    from 2^16 values up with torch on two threads (MKL), and closer to a float64 sum
    (7e-7 relative error against 1e-5 on a transformer's gradients). Below
    :data:`DOT_MIN_VALUES` the call itself costs as much as the arithmetic, so small
    tensors (biases, norms' scales) stay batched: the number of calls grows with the
    model's large tensors only, each of which is a quarter-megabyte memory pass or more.
    """
    if contiguous and numel >= DOT_MIN_VALUES and device == CPU and dtype in _BLAS_DOT:
        return _DOT
    return _FOREACH


def _squared_norms(bucket: _Bucket, values: list[Tensor]) -> Tensor:
    """The squared L2 norm of each of ``values`` (one bucket), as a float32 vector."""
    _, dtype, kernel = bucket
    if kernel == _DOT:
        flats = [value.view(-1) for value in values]  # contiguous: views, no copies
        return torch.stack([torch.dot(flat, flat) for flat in flats]).to(torch.float32)
    # float16/bfloat16 are accumulated in float32 (a norm overflows fp16 at 65504);
    # float64 and complex keep their own precision (_foreach_norm refuses to narrow
    # them), then the result is converted.
    accumulate = torch.float32 if dtype in _UPCAST else None
    norms = torch._foreach_norm(values, 2.0, dtype=accumulate)
    return torch.stack(norms).to(torch.float32).square_()


class LayerNorms:
    """Folds per-parameter L2 norms into per-layer squared norms, batched by group.

    Index tensors that map parameters to layers are built once per distinct set of
    present tensors and cached, so steady-state steps build no new host→device copies.
    """

    def __init__(self, index: LayerIndex, device: torch.device) -> None:
        self._num_layers = index.num_layers
        self._param_layer = index.param_layer
        self.device = device
        self._layer_ids_cache: dict[_GroupKey, Tensor] = {}
        # Build the index tensors of the steady state (every parameter, and every
        # gradient, present) now, at attach time, so the hot path copies nothing.
        for bucket, (_, layers) in self._groups(index.params).items():
            self._layer_ids(bucket, layers)

    def _groups(
        self, tensors: Sequence[Tensor | None]
    ) -> dict[_Bucket, tuple[list[Tensor], list[int]]]:
        """Present tensors bucketed by (device, dtype, kernel), with the layer of each."""
        groups: dict[_Bucket, tuple[list[Tensor], list[int]]] = {}
        for tensor, layer in zip(tensors, self._param_layer):
            if tensor is None:
                continue
            dense = _dense_values(tensor)
            # Every attribute read costs ~0.1 us, per tensor per step: each is read once.
            device, dtype, numel = dense.device, dense.dtype, dense.numel()
            contiguous = dense.is_contiguous()
            key = (device, dtype, _kernel_of(device, dtype, numel, contiguous))
            bucket = groups.get(key)
            if bucket is None:
                bucket = groups[key] = ([], [])
            if numel > NORM_CHUNK and contiguous:
                chunks = dense.view(-1).split(NORM_CHUNK)  # views: nothing is copied
                bucket[0].extend(chunks)
                bucket[1].extend([layer] * len(chunks))
            else:
                bucket[0].append(dense)
                bucket[1].append(layer)
        return groups

    def squared(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Per-layer sum of squared L2 norms of ``tensors`` (aligned with the parameters).

        ``None`` entries (no gradient) contribute nothing. Returns a float32 vector of
        length ``num_layers`` on ``self.device``.
        """
        # no_grad: the measurement builds no autograd graph, so parameters need no
        # per-tensor detach() (which would be one dispatched op per parameter).
        with torch.no_grad():
            out = torch.zeros(self._num_layers, dtype=torch.float32, device=self.device)
            for bucket, (values, layers) in self._groups(tensors).items():
                squares = on_device(_squared_norms(bucket, values), self.device)
                out.index_add_(0, self._layer_ids(bucket, layers), squares)
        return out

    def _layer_ids(self, bucket: _Bucket, layers: list[int]) -> Tensor:
        key = (*bucket, tuple(layers))
        ids = self._layer_ids_cache.get(key)
        if ids is None:
            # Built once per distinct group and cached (the steady state's at attach
            # time), copied without stalling the host.
            ids = host_values_on(layers, torch.long, self.device)
            if len(self._layer_ids_cache) > 64:  # parameters come and go: keep it bounded
                self._layer_ids_cache.clear()
            self._layer_ids_cache[key] = ids
        return ids


#: On the CPU, the update ratio's copy of the weights is kept between update-ratio steps
#: when the weights take at most this many bytes (see :class:`WeightSnapshot`).
KEEP_CPU_SNAPSHOT_BYTES = 256 * 2**20


def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    """A detached copy of ``params`` (the one transient copy an update ratio costs)."""
    with torch.no_grad():
        return list(torch._foreach_mul(list(params), 1.0)) if params else []


class WeightSnapshot:
    """The update ratio's copy of the weights from before the update, made cheaply.

    On an accelerator the copy is transient: made on an update-ratio step, consumed after
    the update, and its memory goes back to the caching allocator, which hands it out
    again at once (device memory stays O(layers) outside that step). The CPU allocator
    keeps no such cache: a fresh weight-sized copy is new pages the kernel must fault in
    and zero, which costs more than copying into them (1.9 ms against 1.1 ms for a
    2.9M-parameter MLP). So on the CPU, for weights of at most
    :data:`KEEP_CPU_SNAPSHOT_BYTES`, the copy's buffers are kept and refilled in place:
    host memory stays flat (one copy of those weights, for the whole run).
    """

    def __init__(self, keep_bytes: int = KEEP_CPU_SNAPSHOT_BYTES) -> None:
        self._keep_bytes = keep_bytes
        self._kept: list[Tensor] = []

    def take(self, params: Sequence[Tensor]) -> list[Tensor]:
        """A detached copy of ``params``; may reuse the previous copy's buffers."""
        params = list(params)
        if not self._keepable(params):
            self._kept = []
            return snapshot(params)
        with torch.no_grad():
            if not self._fits(params):
                self._kept = [
                    torch.empty_like(p, memory_format=torch.preserve_format) for p in params
                ]
            if params:
                torch._foreach_copy_(self._kept, params)
        return list(self._kept)

    def _keepable(self, params: list[Tensor]) -> bool:
        nbytes = 0
        for p in params:
            if p.device.type != "cpu" or p.layout != torch.strided:
                return False
            nbytes += p.numel() * p.element_size()
        return nbytes <= self._keep_bytes

    def _fits(self, params: list[Tensor]) -> bool:
        kept = self._kept
        return len(kept) == len(params) and all(
            k.shape == p.shape and k.dtype == p.dtype and k.stride() == p.stride()
            for k, p in zip(kept, params)
        )


def update_squared(index: LayerIndex, norms: LayerNorms, before: list[Tensor]) -> Tensor:
    """Per-layer ‖Δw‖² where Δw = current parameters - ``before``; consumes ``before``."""
    if before:
        with torch.no_grad():  # no autograd, so no per-parameter detach() either
            torch._foreach_sub_(before, list(index.params))
    return norms.squared(before)


class NormReducer(Protocol):
    """Turns this process's tensors into the per-layer squared norms a step records.

    Chosen once at attach time (``distributed.norm_reducer``), so the watcher never asks
    whether it is distributed. Every method returns float32 device tensors, one value
    per layer, and never reads a value back to the host.
    """

    #: This process's rank, and how many ranks' statistics are combined (0 and 1 alone).
    rank: int
    world_size: int

    def reduce_step(
        self,
        grads: Sequence[Tensor | None],
        params: Sequence[Tensor] | None,
        loss: Tensor,
        has_loss: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Per-layer squared gradient and weight norms, and the loss (shape ``(1,)``).

        ``params`` is None on a step that does not read the weights (their norms are
        measured every ``weight_norm_every`` steps); the weight norms are None then.
        """
        ...

    def snapshot(self, params: Sequence[Tensor]) -> list[Tensor]:
        """A detached copy of the parameters, for the update ratio after the update."""
        ...

    def update_squared(self, before: list[Tensor]) -> Tensor:
        """Per-layer squared norm of the update since :meth:`snapshot`; consumes ``before``."""
        ...


class LocalNorms:
    """The :class:`NormReducer` of a model watched alone: its own norms, as they are."""

    rank = 0
    world_size = 1

    def __init__(self, index: LayerIndex, device: torch.device) -> None:
        self._index = index
        self._norms = LayerNorms(index, device)
        self._snapshot = WeightSnapshot()

    def reduce_step(
        self,
        grads: Sequence[Tensor | None],
        params: Sequence[Tensor] | None,
        loss: Tensor,
        has_loss: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        weights = None if params is None else self._norms.squared(params)
        return self._norms.squared(grads), weights, loss

    def snapshot(self, params: Sequence[Tensor]) -> list[Tensor]:
        return self._snapshot.take(params)

    def update_squared(self, before: list[Tensor]) -> Tensor:
        return update_squared(self._index, self._norms, before)
