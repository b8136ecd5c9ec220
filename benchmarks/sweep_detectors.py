"""Sweep gradwatch.check() over a zoo of healthy and broken tiny models.

Used to tune the detectors' thresholds on physics and many models rather than on a handful
of tests: every healthy model must come out with no warning-or-worse alert, and every broken
one must raise the alert kinds its physics predicts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_detectors.py [--steps 20] [--seeds 3]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_detectors.py --only lstm --verbose
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import gradwatch

Case = tuple[nn.Module, list[tuple[Any, Any]], Callable[..., Any], Any]
ZOO: dict[str, tuple[Callable[[int], Case], set[str] | None]] = {}


def case(name: str, expect: set[str] | None = None) -> Callable[[Callable[[int], Case]], Any]:
    """Register a model; ``expect`` None = healthy (no warning), else kinds that must fire."""

    def register(fn: Callable[[int], Case]) -> Callable[[int], Case]:
        ZOO[name] = (fn, expect)
        return fn

    return register


def regression(n: int, d: int = 8, batch: int = 32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, d, generator=g)
        out.append((x, scale * x[:, :1].sin() + 0.5 * x[:, 1:2]))
    return out


def classification(n: int, d: int = 8, classes: int = 4, batch: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, classes, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(batch, d, generator=g)
        out.append((x, (x @ w).argmax(1)))
    return out


def images(n: int, classes: int = 4, batch: int = 16, size: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 3, size, size, generator=g) * 0.5
        x[:, 0] += y.view(-1, 1, 1).float() - 1.5
        out.append((x, y))
    return out


def sequences(n: int, vocab: int = 20, length: int = 12, batch: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (batch, length), generator=g)
        out.append((x, (x[:, 0] % 4)))
    return out


def lm_batches(n: int, vocab: int = 24, length: int = 12, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        seq = (start + torch.arange(length + 1)) % vocab
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def lm_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y)


def he_mlp(
    depth: int, width: int, d_in: int = 8, d_out: int = 1, bn: bool = False
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(d_in if i == 0 else width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if bn:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- healthy
@case("he_relu_mlp")
def _(seed: int) -> Case:
    return he_mlp(6, 64), regression(8, seed=seed), mse, None


@case("he_relu_mlp_bn")
def _(seed: int) -> Case:
    return he_mlp(8, 64, bn=True), regression(8, seed=seed), mse, None


@case("he_relu_mlp_deep_12")
def _(seed: int) -> Case:
    return he_mlp(12, 48, d_out=4), classification(8, seed=seed), ce, None


@case("default_mlp_shallow_ce")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    return model, classification(8, seed=seed), ce, None


@case("logistic_regression")
def _(seed: int) -> Case:
    return nn.Linear(8, 4), classification(8, seed=seed), ce, None


@case("gelu_layernorm_mlp_10")
def _(seed: int) -> Case:
    layers: list[nn.Module] = [nn.Linear(8, 48)]
    for _ in range(10):
        layers += [nn.LayerNorm(48), nn.Linear(48, 48), nn.GELU()]
    layers.append(nn.Linear(48, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


class ResMLP(nn.Module):
    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
            )
            for _ in range(depth)
        )
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


@case("residual_mlp_30")
def _(seed: int) -> Case:
    return ResMLP(30, 32), regression(8, seed=seed), mse, None


class PreNormTransformer(nn.Module):
    def __init__(
        self, vocab: int = 24, d: int = 32, layers: int = 2, zero_head: bool = False
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, 32, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        h = self.emb(x) + self.pos[:, :n]
        return self.head(self.norm(self.enc(h, mask=mask, is_causal=True)))


@case("prenorm_transformer_lm")
def _(seed: int) -> Case:
    return PreNormTransformer(), lm_batches(8, seed=seed), lm_ce, None


@case("prenorm_transformer_zero_head_adamw")
def _(seed: int) -> Case:
    model = PreNormTransformer(zero_head=True, layers=3)
    return (
        model,
        lm_batches(8, seed=seed),
        lm_ce,
        torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1),
    )


class PostNormClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(1))


@case("postnorm_transformer_dropout")
def _(seed: int) -> Case:
    return PostNormClassifier(), sequences(8, seed=seed), ce, None


class ResCNN(nn.Module):
    def __init__(self, c: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )
            for _ in range(blocks)
        )
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h.mean((2, 3)))


@case("residual_cnn_bn")
def _(seed: int) -> Case:
    return ResCNN(), images(8, seed=seed), ce, None


@case("residual_cnn_sgd_momentum")
def _(seed: int) -> Case:
    model = ResCNN()
    return (
        model,
        images(8, seed=seed),
        ce,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    )


@case("plain_cnn_default_init")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    return model, images(8, seed=seed), ce, None


class SeqRNN(nn.Module):
    def __init__(self, kind: str, layers: int = 1, vocab: int = 20, d: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(16, d, num_layers=layers, batch_first=True)
        self.head = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))
        return self.head(out[:, -1])


@case("lstm_2layer")
def _(seed: int) -> Case:
    return SeqRNN("lstm", 2), sequences(8, seed=seed), ce, None


@case("gru")
def _(seed: int) -> Case:
    return SeqRNN("gru"), sequences(8, seed=seed), ce, None


@case("vanilla_rnn_short")
def _(seed: int) -> Case:
    return SeqRNN("rnn"), sequences(8, length=8, seed=seed), ce, None


@case("bag_of_embeddings")
def _(seed: int) -> Case:
    model = nn.Sequential(nn.EmbeddingBag(50, 16), nn.Linear(16, 4))
    data = [((x * 2) % 50, y) for x, y in sequences(8, seed=seed)]
    return model, data, ce, None


@case("mlp_dropout_sgd")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Linear(8, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 1),
    )
    return (
        model,
        regression(8, seed=seed),
        mse,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    )


@case("mlp_big_targets")
def _(seed: int) -> Case:
    return he_mlp(4, 32), regression(8, seed=seed, scale=30.0), mse, None


@case("conv1d_net")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Conv1d(4, 16, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 16, 5, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(8):
        y = torch.randint(0, 4, (16,), generator=g)
        x = torch.randn(16, 4, 24, generator=g)
        x[torch.arange(16), y] += 1.0
        data.append((x, y))
    return model, data, ce, None


@case("autoencoder_sigmoid_out")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Linear(16, 12),
        nn.ReLU(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, 12),
        nn.ReLU(),
        nn.Linear(12, 16),
        nn.Sigmoid(),
    )
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(8):
        x = torch.rand(32, 16, generator=g)
        data.append((x, x))
    return model, data, mse, None


@case("small_tanh_mlp_xavier")
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    for i in range(5):
        lin = nn.Linear(8 if i == 0 else 32, 32)
        nn.init.xavier_normal_(lin.weight)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(32, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


@case("converged_linear_regression")
def _(seed: int) -> Case:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=g)
    data = []
    for _ in range(4):
        x = torch.randn(64, 8, generator=g)
        data.append((x, x @ w))
    model = nn.Linear(8, 1)
    with torch.no_grad():
        model.weight.copy_(w.T + 1e-3)
        model.bias.zero_()
    return model, data, mse, torch.optim.SGD(model.parameters(), lr=0.1)


@case("he_relu_mlp_20_many_classes")
def _(seed: int) -> Case:
    return he_mlp(20, 32, d_out=100), classification(8, classes=100, seed=seed), ce, None


@case("mlp_small_scale_inputs")
def _(seed: int) -> Case:
    data = [(x * 0.02, y) for x, y in regression(8, seed=seed)]
    return he_mlp(4, 32), data, mse, None


@case("vgg_like_cnn_bn")
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    c_in = 3
    for c in (8, 8, 16, 16, 32, 32):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)]
    return nn.Sequential(*layers), images(8, seed=seed), ce, None


@case("sum_reduced_vae_like_loss")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Linear(16, 64),
        nn.ReLU(),
        nn.Linear(64, 8),
        nn.ReLU(),
        nn.Linear(8, 64),
        nn.ReLU(),
        nn.Linear(64, 16),
    )
    g = torch.Generator().manual_seed(seed)
    data = [(x, x) for x in (torch.randn(128, 16, generator=g) for _ in range(8))]
    return model, data, lambda out, y: nn.functional.mse_loss(out, y, reduction="sum"), None


@case("mlp_rmsprop")
def _(seed: int) -> Case:
    model = he_mlp(5, 32)
    return model, regression(8, seed=seed), mse, torch.optim.RMSprop(model.parameters(), lr=1e-3)


@case("mlp_adagrad_ce")
def _(seed: int) -> Case:
    model = he_mlp(4, 32, d_out=4)
    return model, classification(8, seed=seed), ce, torch.optim.Adagrad(model.parameters(), lr=1e-2)


@case("mlp_plain_sgd_0.01")
def _(seed: int) -> Case:
    model = he_mlp(4, 32)
    return model, regression(8, seed=seed), mse, torch.optim.SGD(model.parameters(), lr=0.01)


# lr 0.1 is at the edge of stability for this MLP: some seeds diverge (and exploding
# must show before NaN), others train
@case("mlp_plain_sgd_0.1_edge_of_stability", set())
def _(seed: int) -> Case:
    model = he_mlp(4, 32)
    return model, regression(8, seed=seed), mse, torch.optim.SGD(model.parameters(), lr=0.1)


@case("lstm_long_sequences_sgd_clipless")
def _(seed: int) -> Case:
    model = SeqRNN("lstm", 1)
    data = sequences(8, length=50, seed=seed)
    return model, data, ce, torch.optim.SGD(model.parameters(), lr=0.1)


@case("groupnorm_cnn")
def _(seed: int) -> Case:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    return model, images(8, seed=seed), ce, None


@case("partially_frozen_mlp")
def _(seed: int) -> Case:
    model = he_mlp(4, 32)
    for p in model[0].parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, regression(8, seed=seed), mse, torch.optim.Adam(params, lr=1e-3)


@case("tied_embedding_lm")
def _(seed: int) -> Case:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(24, 32)
            self.rnn = nn.GRU(32, 32, batch_first=True)
            self.out = nn.Linear(32, 24, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.rnn(self.emb(x))[0])

    return Tied(), lm_batches(8, seed=seed), lm_ce, None


# ----------------------------------------------------------------------------- broken
class LinearChain(nn.Module):
    def __init__(self, depth: int, scale: float, width: int = 2, bias: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width, bias=bias) for _ in range(depth)])
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(scale * torch.eye(width))
                if bias:
                    layer.bias.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def chain_data(n: int, width: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, width, generator=g)
        out.append((x, x.flip(1)))
    return out


@case("linear_chain_1.5", {"exploding"})
def _(seed: int) -> Case:
    return LinearChain(60, 1.5), chain_data(4, seed=seed), mse, None


@case("linear_chain_1.5_bias_sgd", {"exploding"})
def _(seed: int) -> Case:
    model = LinearChain(60, 1.5, bias=True)
    return model, chain_data(4, seed=seed), mse, torch.optim.SGD(model.parameters(), lr=1e-3)


@case("linear_chain_0.5", {"vanishing"})
def _(seed: int) -> Case:
    return LinearChain(60, 0.5), chain_data(4, seed=seed), mse, None


@case("linear_chain_0.5_bias", {"vanishing"})
def _(seed: int) -> Case:
    return LinearChain(60, 0.5, bias=True), chain_data(4, seed=seed), mse, None


class ScalarLayer(nn.Module):
    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


def scalar_chain(w: float, n: int = 50, b: float = 0.1) -> nn.Sequential:
    return nn.Sequential(*[ScalarLayer(w, b) for _ in range(n)])


def scalar_data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 1, generator=g)
        out.append((x, 2 * x + 1))
    return out


@case("scalar_chain_1.3", {"exploding"})
def _(seed: int) -> Case:
    return scalar_chain(1.3), scalar_data(4, seed=seed), mse, None


@case("scalar_chain_0.7", {"vanishing"})
def _(seed: int) -> Case:
    return scalar_chain(0.7), scalar_data(4, seed=seed), mse, None


@case("sgd_lr_far_too_high", {"exploding", "loss_spike", "nonfinite"})
def _(seed: int) -> Case:
    model = he_mlp(4, 32)
    return model, regression(8, seed=seed), mse, torch.optim.SGD(model.parameters(), lr=3.0)


@case("sgd_lr_too_high_cnn", {"exploding", "loss_spike", "nonfinite"})
def _(seed: int) -> Case:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 4))
    return model, images(8, seed=seed), ce, torch.optim.SGD(model.parameters(), lr=5.0)


@case("default_init_relu_mlp_20", {"vanishing"})
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    for i in range(20):
        layers += [nn.Linear(8 if i == 0 else 32, 32), nn.ReLU()]
    layers.append(nn.Linear(32, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


@case("sigmoid_mlp_normal_init_20", {"vanishing"})
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    for i in range(20):
        lin = nn.Linear(8 if i == 0 else 24, 24)
        nn.init.normal_(lin.weight, 0.0, 1.0)
        nn.init.normal_(lin.bias, 0.0, 1.0)
        layers += [lin, nn.Sigmoid()]
    layers.append(nn.Linear(24, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


# wide sigmoid stacks saturate but their gradients do not vanish much: saturation is
# the activation detectors' job, so no gradient-side requirement here.
@case("sigmoid_mlp_normal_init_20_wide", set())
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    for i in range(20):
        lin = nn.Linear(8 if i == 0 else 64, 64)
        nn.init.normal_(lin.weight, 0.0, 1.0)
        layers += [lin, nn.Sigmoid()]
    layers.append(nn.Linear(64, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


@case("tanh_large_weights", set())  # saturation: the activation detectors' job
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    for i in range(8):
        lin = nn.Linear(8 if i == 0 else 32, 32)
        nn.init.normal_(lin.weight, 0.0, 3.0)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(32, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


@case("relu_large_negative_bias", {"vanishing"})
def _(seed: int) -> Case:
    layers: list[nn.Module] = []
    for i in range(6):
        lin = nn.Linear(8 if i == 0 else 32, 32)
        if i == 3:
            nn.init.constant_(lin.bias, -10.0)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(32, 1))
    return nn.Sequential(*layers), regression(8, seed=seed), mse, None


@case("frozen_lr_zero", {"not_learning"})
def _(seed: int) -> Case:
    model = he_mlp(3, 32)
    return model, regression(8, seed=seed), mse, torch.optim.SGD(model.parameters(), lr=0.0)


@case("lr_tiny_adam", {"not_learning"})
def _(seed: int) -> Case:
    model = he_mlp(3, 32, d_out=4)
    return model, classification(8, seed=seed), ce, torch.optim.Adam(model.parameters(), lr=1e-7)


class LongRNN(nn.Module):
    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(32))
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@case("relu_rnn_long_gain_1.2", {"exploding"})
def _(seed: int) -> Case:
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(8, 60, 4, generator=g).abs(), torch.randn(8, 1, generator=g)) for _ in range(4)
    ]
    model = LongRNN(1.2)
    return model, data, mse, torch.optim.SGD(model.parameters(), lr=1e-2)


@case("adam_lr_1_mlp", {"exploding", "loss_spike", "grad_spike"})
def _(seed: int) -> Case:
    model = he_mlp(4, 64)
    return model, regression(8, seed=seed), mse, torch.optim.Adam(model.parameters(), lr=1.0)


def run(name: str, seed: int, steps: int, verbose: bool, baseline: bool) -> tuple[bool, str]:
    fn, expect = ZOO[name]
    torch.manual_seed(seed)
    model, data, loss_fn, optimizer = fn(seed)
    start = time.perf_counter()
    report = gradwatch.check(
        model, data, loss_fn, optimizer=optimizer, steps=steps, baseline=baseline
    )
    elapsed = time.perf_counter() - start
    loud = {a.kind for a in report.problems}
    if expect is None:
        good = not loud
    elif not expect:
        good = True
    else:
        good = bool(loud & expect)
    kinds = ", ".join(f"{a.kind}:{a.severity[0]}@{a.step}" for a in report.alerts) or "-"
    first, last = report.losses[0], report.losses[-1]
    line = (
        f"{'ok ' if good else 'BAD'} {name:38s} s{seed} {elapsed:5.2f}s "
        f"loss {first:9.3g}->{last:9.3g} "
        f"expect={sorted(expect) if expect else 'healthy'} got={kinds}"
    )
    if verbose:
        line += "\n" + report.summary()
    return good, line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--only", default="")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bad = 0
    for name in ZOO:
        if args.only and args.only not in name:
            continue
        for seed in range(args.seeds):
            good, line = run(name, seed, args.steps, args.verbose, args.baseline)
            bad += not good
            print(line, flush=True)
    print(f"{bad} unexpected result(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
