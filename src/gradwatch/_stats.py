"""Per-layer norms computed in batched kernels on the model's device.

The hot path: one ``torch._foreach_norm`` per (device, dtype, layout) group of tensors,
then one ``index_add_`` per group folds per-parameter norms into per-layer squared norms.
The number of kernel launches is O(groups), not O(parameters), and nothing here reads a
value back to the host (no ``.item()``, no ``.cpu()``, no Python branching on tensor
values), so a CUDA stream is never synchronised (compare ``torch.nn.utils.clip_grad``).
Norms are accumulated in float32 whatever the parameters' dtype (bf16/fp16 included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._layers import LayerIndex

_GroupKey = tuple[torch.device, torch.dtype, tuple[int, ...]]


def _dense_values(tensor: Tensor) -> Tensor:
    """The stored values of a tensor: a sparse gradient's non-zeros, else the tensor."""
    if tensor.layout == torch.sparse_coo:
        return tensor.coalesce().values()
    if tensor.layout != torch.strided:
        return tensor.to_dense()
    return tensor


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

    def squared(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Per-layer sum of squared L2 norms of ``tensors`` (aligned with the parameters).

        ``None`` entries (no gradient) contribute nothing. Returns a float32 vector of
        length ``num_layers`` on ``self.device``.
        """
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[int]]] = {}
        for tensor, layer in zip(tensors, self._param_layer):
            if tensor is None:
                continue
            dense = _dense_values(tensor.detach())
            key = (dense.device, dense.dtype)
            bucket = groups.get(key)
            if bucket is None:
                bucket = groups[key] = ([], [])
            bucket[0].append(dense)
            bucket[1].append(layer)
        out = torch.zeros(self._num_layers, dtype=torch.float32, device=self.device)
        for (device, dtype), (values, layers) in groups.items():
            squares = torch.stack(torch._foreach_norm(values, 2.0, dtype=torch.float32)).square_()
            if squares.device != self.device:
                # non_blocking: a device→device hop must not stall the host.
                squares = squares.to(self.device, non_blocking=True)
            out.index_add_(0, self._layer_ids(device, dtype, layers), squares)
        return out

    def _layer_ids(self, device: torch.device, dtype: torch.dtype, layers: list[int]) -> Tensor:
        key = (device, dtype, tuple(layers))
        ids = self._layer_ids_cache.get(key)
        if ids is None:
            # Built once per distinct group and cached: a host→device copy, never a sync.
            ids = torch.tensor(layers, dtype=torch.long).to(self.device, non_blocking=True)
            if len(self._layer_ids_cache) > 64:  # parameters come and go: keep it bounded
                self._layer_ids_cache.clear()
            self._layer_ids_cache[key] = ids
        return ids


def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    """A detached copy of ``params`` (the one transient copy an update ratio costs)."""
    return [p.detach().clone() for p in params]


def update_squared(index: LayerIndex, norms: LayerNorms, before: list[Tensor]) -> Tensor:
    """Per-layer ‖Δw‖² where Δw = current parameters - ``before``; consumes ``before``."""
    if before:
        torch._foreach_sub_(before, [p.detach() for p in index.params])
    return norms.squared(before)
