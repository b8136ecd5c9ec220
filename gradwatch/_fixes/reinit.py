"""Re-initialise a model's weight layers with the initialisation that fits them.

- A model with normalisation and attention or embeddings (a transformer): every
  linear-like layer and embedding drawn from N(0, 0.02²), biases zero (the GPT-2/BERT
  recipe; such models are normalised, so small weights are what they train from).
- Otherwise, per weight layer, from the activation that follows it (``ModelFacts``):
  He (Kaiming) normal for rectifiers and other unbounded activations, Xavier uniform
  with the activation's gain for sigmoid/tanh, orthogonal (every singular value 1) for a
  square layer with no activation, Xavier uniform otherwise; biases zero. In a model with
  residual blocks, the last weight layer of each block starts at zero, so every block
  starts as the identity. Recurrent layers get orthogonal recurrent weights.

The same choices as the diagnosis's remedies (:mod:`gradwatch._diagnosis.remedies`),
carried out on a copy.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

from gradwatch._diagnosis.facts import BOUNDED, ModelFacts
from gradwatch._diagnosis.remedies import names
from gradwatch._measure.model import LINEAR_LIKE, RECURRENT, ModelMap

#: Class names of residual blocks (as :mod:`gradwatch._diagnosis.facts` reads them),
#: transformer layers left out: their own init is the small-std one.
_RESIDUAL_BLOCK = re.compile(r"Res|Residual|Block|Bottleneck")


def _weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() >= 2 else None


def _zero_bias(module: nn.Module) -> None:
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        nn.init.zeros_(bias)


def _transposed(module: nn.Module) -> bool:
    """Hugging Face's Conv1D stores its weight as (in, out), a Linear's transposed."""
    return type(module).__name__ == "Conv1D"


@torch.no_grad()
def reinitialise(model: nn.Module, facts: ModelFacts, model_map: ModelMap) -> str:
    """Re-initialise ``model`` in place (see the module docstring); return what was done
    ("" when no layer is of a kind this knows how to initialise)."""
    modules = dict(model.named_modules())
    if facts.norms and (facts.attention or facts.embedding):
        chosen = []
        for info in model_map.modules:
            module = modules.get(info.name)
            weight = None if module is None else _weight(module)
            if module is None or weight is None:
                continue
            if info.has(LINEAR_LIKE) or isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                nn.init.normal_(weight, std=0.02)
                _zero_bias(module)
                chosen.append(info.name)
        return f"N(0, 0.02^2) weights, zero biases for {len(chosen)} layers ({names(chosen)})"
    groups: dict[str, list[str]] = {}
    for name, activation in facts.activation_after:
        module = modules.get(name)
        weight = None if module is None else _weight(module)
        if module is None or weight is None:
            continue
        mode: Literal["fan_in", "fan_out"] = "fan_out" if _transposed(module) else "fan_in"
        if activation in BOUNDED:
            gain: Literal["tanh", "sigmoid"] = (
                "tanh" if activation in ("Tanh", "Hardtanh", "Softsign") else "sigmoid"
            )
            nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain(gain))
            how = f"Xavier (gain {gain})"
        elif activation:
            nn.init.kaiming_normal_(weight, mode=mode, nonlinearity="relu")
            how = "He"
        elif weight.dim() == 2 and weight.shape[0] == weight.shape[1]:
            nn.init.orthogonal_(weight)
            how = "orthogonal"
        else:
            nn.init.xavier_uniform_(weight)
            how = "Xavier"
        _zero_bias(module)
        groups.setdefault(how, []).append(name)
    parts = [f"{how} for {names(group)}" for how, group in groups.items()]
    if facts.residual:
        zeroed = _zero_block_outputs(model, model_map)
        if zeroed:
            parts.append(f"zero for the last weight layer of each residual block ({names(zeroed)})")
    recurrent = []
    for info in model_map.with_role(RECURRENT):
        module = modules.get(info.name)
        if module is None:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param_name.startswith("weight_hh"):
                # One orthogonal block per gate: each gate's recurrent matrix has gain 1.
                for block in param.split(param.shape[1], dim=0):
                    nn.init.orthogonal_(block)
                recurrent.append(info.name)
    if recurrent:
        parts.append(f"orthogonal recurrent weights for {names(sorted(set(recurrent)))}")
    return "; ".join(parts) + ", zero biases" if parts else ""


#: Names of the shortcut path of a residual block (torchvision's ``downsample``, Hugging
#: Face's ``shortcut``): never zeroed, or the block would pass nothing.
_SHORTCUT = re.compile(r"downsample|shortcut|skip|residual", re.IGNORECASE)


def _zero_block_outputs(model: nn.Module, model_map: ModelMap) -> list[str]:
    """Zero the last weight layer of the branch of each innermost residual-looking block.

    A block is a module whose class name looks residual, with at least two linear-like
    layers inside (a stem or a single conv is no branch) and no such block inside it
    (``ResNetModel`` holds the blocks, it is not one). Its shortcut layers are skipped.
    """
    modules = dict(model.named_modules())
    linear = [info.name for info in model_map.modules if info.has(LINEAR_LIKE)]
    blocks: dict[str, list[str]] = {}
    for info in model_map.modules:
        if not _RESIDUAL_BLOCK.search(info.type_name) or info.roles - {"container"}:
            continue
        prefix = info.name + "." if info.name else ""
        branch = [
            name
            for name in linear
            if name.startswith(prefix) and not _SHORTCUT.search(name[len(prefix) :])
        ]
        if len(branch) >= 2:
            blocks[info.name] = branch
    innermost = [
        name
        for name in blocks
        if not any(
            other != name and other.startswith(name + "." if name else "") for other in blocks
        )
    ]
    zeroed = []
    for name in innermost:
        last = modules.get(blocks[name][-1])
        weight = None if last is None else _weight(last)
        if last is None or weight is None:
            continue
        nn.init.zeros_(weight)
        _zero_bias(last)
        zeroed.append(blocks[name][-1])
    return zeroed
