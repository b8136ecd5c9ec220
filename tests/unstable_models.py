"""Tiny real models that really have (or really do not have) unstable gradients.

Built from the reference notes' situations: deep linear chains with
W = 1.5·I and 0.5·I, a chain of scalar layers w·x + b, PyTorch's default init in a deep
ReLU stack, a deep sigmoid stack with N(0, 1) weights, dead ReLUs, too high a learning
rate; and healthy counterparts (He init, BatchNorm, pre-norm transformer, residual CNN).
"""

from __future__ import annotations

import torch
from torch import nn

from .zoo import seeds
from .zoo.seeds import ScalarLayer, scalar_chain

__all__ = ["ScalarLayer", "scalar_chain"]  # re-exported: the zoo owns them

#: The chains' data, owned by the zoo.
chain_batches = seeds.chain_data
scalar_batches = seeds.scalar_data

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def regression(n: int, d: int = 8, batch: int = 32, seed: int = 0) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, d, generator=generator)
        out.append((x, x[:, :1].sin() + 0.5 * x[:, 1:2]))
    return out


def linear_chain(scale: float, depth: int = 60, width: int = 2) -> nn.Sequential:
    """The reference's deep linear network: every layer W = scale·I, no bias."""
    layers = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(scale * torch.eye(width))
    return nn.Sequential(*layers)


def he_mlp(
    depth: int = 6, width: int = 32, batchnorm: bool = False, seed: int = 0
) -> nn.Sequential:
    """The zoo's He-initialised ReLU MLP (``tests.zoo.seeds.he_mlp``), seeded."""
    torch.manual_seed(seed)
    return seeds.he_mlp(depth, width, bn=batchnorm)


def default_init_relu_mlp(depth: int = 20, width: int = 32, seed: int = 0) -> nn.Sequential:
    """PyTorch's default Linear init (variance 1/(3·fan_in)) in a deep ReLU stack."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(8 if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def sigmoid_normal_mlp(depth: int = 20, width: int = 24, seed: int = 0) -> nn.Sequential:
    """A deep sigmoid stack with N(0, 1) weights and biases (before Glorot & Bengio)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        linear = nn.Linear(8 if i == 0 else width, width)
        nn.init.normal_(linear.weight, 0.0, 1.0)
        nn.init.normal_(linear.bias, 0.0, 1.0)
        layers += [linear, nn.Sigmoid()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def negative_bias_relu_mlp(seed: int = 0) -> nn.Sequential:
    """ReLU layers where one layer's large negative bias kills every unit."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(5):
        linear = nn.Linear(8 if i == 0 else 32, 32)
        if i == 3:
            nn.init.constant_(linear.bias, -10.0)
        layers += [linear, nn.ReLU()]
    layers.append(nn.Linear(32, 1))
    return nn.Sequential(*layers)


class PreNormTransformer(nn.Module):
    """A small causal pre-norm transformer language model."""

    def __init__(self, vocab: int = 16, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(torch.randn(1, 16, d) * 0.02)
        block = nn.TransformerEncoderLayer(
            d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        h = self.embed(tokens) + self.position[:, :n]
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def lm_batches(n: int, vocab: int = 16, length: int = 10, batch: int = 8, seed: int = 0) -> Batches:
    """Sequences counting up modulo ``vocab``; the target is the next token."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, vocab, (batch, 1), generator=generator)
        sequence = (start + torch.arange(length + 1)) % vocab
        out.append((sequence[:, :-1], sequence[:, 1:]))
    return out


class ResidualCNN(nn.Module):
    """A small ResNet-style CNN: conv-BN-ReLU stem, residual blocks, global pooling."""

    def __init__(self, channels: int = 8, blocks: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            )
            for _ in range(blocks)
        )
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h.mean((2, 3)))


def image_batches(
    n: int, classes: int = 4, batch: int = 16, size: int = 8, seed: int = 0
) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (batch,), generator=generator)
        x = torch.randn(batch, 3, size, size, generator=generator) * 0.5
        x[:, 0] += y.view(-1, 1, 1).float() - 1.5
        out.append((x, y))
    return out
