"""Which modules count as layers, and which parameters belong to each.

A *layer* is a module that owns parameters directly (``named_parameters(recurse=False)``),
named as in ``model.named_modules()`` (DESIGN.md). A parameter shared by several modules
(tied embeddings, weight sharing) belongs to the first module that owns it in
``named_modules()`` order, so it is counted once in every norm.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

#: TensorBoard tag used for parameters owned directly by the root module (whose
#: qualified name is the empty string).
ROOT_TAG = "_root_"


def strip_wrapper_prefix(name: str) -> str:
    """Drop prefixes added by wrappers (DDP's ``module.``, torch.compile's ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
        name = name.replace("." + prefix, ".")
    if name in ("module", "_orig_mod"):
        return ""
    return name


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if type(model).__name__ == "DistributedDataParallel":
            inner = getattr(model, "module", None)
            if isinstance(inner, nn.Module):
                model = inner
                continue
    return model


@dataclasses.dataclass(frozen=True)
class LayerIndex:
    """The model's layers in ``named_modules()`` order (input side first, usually).

    Attributes:
        names: qualified module names, one per layer.
        params: every distinct parameter, layer by layer.
        param_names: qualified parameter names, aligned with ``params``.
        param_layer: for each parameter, the index of its layer in ``names``.
        module_types: class name of each layer's module, aligned with ``names``.
        holds_sublayers: per layer, whether its module also has submodules with
            parameters: a container owning loose parameters (a learned positional
            embedding or class token on the root model), not a layer of the chain.
    """

    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]
    param_names: tuple[str, ...]
    param_layer: tuple[int, ...]
    module_types: tuple[str, ...]
    holds_sublayers: tuple[bool, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.names)

    def layer_numel(self) -> tuple[int, ...]:
        """How many parameter elements each layer owns."""
        counts = [0] * self.num_layers
        for p, layer in zip(self.params, self.param_layer):
            counts[layer] += p.numel()
        return tuple(counts)

    def tag(self, layer: int) -> str:
        """The TensorBoard tag suffix of a layer."""
        return self.names[layer] or ROOT_TAG

    @functools.cached_property
    def tags(self) -> tuple[str, ...]:
        """Every layer's TensorBoard tag suffix (computed once: sinks read it each step)."""
        return tuple(name or ROOT_TAG for name in self.names)

    @classmethod
    def from_model(cls, model: nn.Module) -> LayerIndex:
        names: list[str] = []
        types: list[str] = []
        params: list[nn.Parameter] = []
        param_names: list[str] = []
        param_layer: list[int] = []
        holds_sublayers: list[bool] = []
        seen: set[int] = set()
        for module_name, module in unwrap_model(model).named_modules():
            owned = [
                (name, p) for name, p in module.named_parameters(recurse=False) if id(p) not in seen
            ]
            if not owned:
                continue
            layer = len(names)
            names.append(strip_wrapper_prefix(module_name))
            types.append(type(module).__name__)
            holds_sublayers.append(
                any(True for child in module.children() for _ in child.parameters())
            )
            for name, p in owned:
                seen.add(id(p))
                params.append(p)
                param_names.append(f"{names[-1]}.{name}" if names[-1] else name)
                param_layer.append(layer)
        return cls(
            tuple(names),
            tuple(params),
            tuple(param_names),
            tuple(param_layer),
            tuple(types),
            tuple(holds_sublayers),
        )

    def device(self) -> torch.device:
        """The device statistics are gathered on: the first parameter's (CPU if none)."""
        return self.params[0].device if self.params else torch.device("cpu")
