"""Which modules count as layers, and which parameters belong to each.

A *layer* is a module that owns parameters directly (``named_parameters(recurse=False)``),
named as in ``model.named_modules()`` (see :mod:`gradwatch._measure.model`, whose walk
this index is read from). A parameter shared by several modules (tied embeddings, weight
sharing) belongs to the first module that owns it in ``named_modules()`` order, so it is
counted once in every norm.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from gradwatch._measure.devices import gather_device
from gradwatch._measure.model import ModelMap
from gradwatch._names import tag_of


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

    @functools.cached_property
    def tags(self) -> tuple[str, ...]:
        """Every layer's TensorBoard tag suffix (computed once: sinks read it each step)."""
        return tuple(tag_of(name) for name in self.names)

    @classmethod
    def from_model(cls, model: nn.Module | ModelMap) -> LayerIndex:
        """The layers of ``model``, or of a walk already made (:class:`ModelMap`)."""
        layers = ModelMap.of(model).layers
        params: list[nn.Parameter] = []
        param_names: list[str] = []
        param_layer: list[int] = []
        for layer, info in enumerate(layers):
            for local, p in info.params:
                params.append(p)
                param_names.append(f"{info.name}.{local}" if info.name else local)
                param_layer.append(layer)
        return cls(
            tuple(info.name for info in layers),
            tuple(params),
            tuple(param_names),
            tuple(param_layer),
            tuple(info.type_name for info in layers),
            tuple(info.has_parameterised_children for info in layers),
        )

    def device(self) -> torch.device:
        """The device statistics are gathered on: the first parameter's on an accelerator
        when any parameter is on one (see ``devices.gather_device``), else the CPU."""
        return gather_device(p.device for p in self.params)
