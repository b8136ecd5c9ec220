"""Small real models and data shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


def make_mlp(depth: int = 3, width: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(8 if i == 0 else width, width))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def regression_batches(
    n: int, batch: int = 32, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 8, generator=generator)
        out.append((x, x.sum(dim=1, keepdim=True).sin()))
    return out
