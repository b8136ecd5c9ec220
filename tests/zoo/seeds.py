"""Textbook cases: tiny models whose gradients are, or are not, unstable by construction.

The cases of the former ``benchmarks/sweep_detectors.py`` and of ``tests/unstable_models.py``
(the reference notes' situations): deep linear chains with W = 1.5·I and 0.5·I, chains of
scalar layers w·x + b, PyTorch's default init in a deep ReLU stack, a deep sigmoid stack with
N(0, 1) weights, dead ReLUs, learning rates far too high or too low; and healthy small models
(He init, BatchNorm, LayerNorm, residual MLPs and CNNs, pre- and post-norm transformers,
LSTM/GRU, several optimizers). Each runs 20 steps with Adam(lr=1e-3) unless it says
otherwise, as ``gradwatch.check()`` does, which is what the old sweep tuned against.

Every scenario here is tagged ``"seed"``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ._core import Batch, LossFn, Run, adam, cross_entropy, mse, register

STEPS = 20
SEED = ("seed",)
CHANCE_4 = math.log(4)


def _run(
    model: nn.Module,
    batches: list[Batch],
    loss_fn: LossFn,
    optimizer: Optional[torch.optim.Optimizer] = None,
) -> Run:
    """A 20-step run, with check()'s default Adam(lr=1e-3) when no optimizer is given."""
    if optimizer is None:
        optimizer = adam(model)
    return Run(model, optimizer, batches, loss_fn, steps=STEPS)


def sum_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum-reduced squared error (a VAE-style reconstruction term): large loss values."""
    return nn.functional.mse_loss(output, target, reduction="sum")


# ------------------------------------------------------------------------------------ data
def regression(n: int, d: int = 8, batch: int = 32, seed: int = 0, scale: float = 1.0) -> list:
    """Regression batches: y = scale·sin(x0) + 0.5·x1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, d, generator=g)
        out.append((x, scale * x[:, :1].sin() + 0.5 * x[:, 1:2]))
    return out


def classification(n: int, d: int = 8, classes: int = 4, batch: int = 32, seed: int = 0) -> list:
    """Linearly separable classes: y = argmax(x·W) for a fixed random W."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, classes, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(batch, d, generator=g)
        out.append((x, (x @ w).argmax(1)))
    return out


def images(n: int, classes: int = 4, batch: int = 16, size: int = 12, seed: int = 0) -> list:
    """Noisy images whose first channel is offset by the class."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 3, size, size, generator=g) * 0.5
        x[:, 0] += y.view(-1, 1, 1).float() - 1.5
        out.append((x, y))
    return out


def sequences(n: int, vocab: int = 20, length: int = 12, batch: int = 16, seed: int = 0) -> list:
    """Random token sequences labelled by their first token modulo 4."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (batch, length), generator=g)
        out.append((x, (x[:, 0] % 4)))
    return out


def lm_batches(n: int, vocab: int = 24, length: int = 12, batch: int = 8, seed: int = 0) -> list:
    """Sequences counting up modulo ``vocab``; the target is the next token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        seq = (start + torch.arange(length + 1)) % vocab
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def chain_data(n: int, width: int = 2, seed: int = 0) -> list:
    """Targets for the linear chains: the input with its features reversed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, width, generator=g)
        out.append((x, x.flip(1)))
    return out


def scalar_data(n: int, seed: int = 0) -> list:
    """Targets for the scalar chains: y = 2x + 1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 1, generator=g)
        out.append((x, 2 * x + 1))
    return out


# ---------------------------------------------------------------------------------- models
def he_mlp(
    depth: int, width: int, d_in: int = 8, d_out: int = 1, bn: bool = False
) -> nn.Sequential:
    """A ReLU MLP with He (Kaiming) init and zero biases, optionally with BatchNorm."""
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


class ResMLP(nn.Module):
    """Pre-norm residual MLP blocks: x + Linear(GELU(Linear(LayerNorm(x))))."""

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


class PreNormTransformer(nn.Module):
    """A small causal pre-norm transformer language model."""

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


class PostNormClassifier(nn.Module):
    """A post-norm transformer encoder (PyTorch's default) with dropout, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(1))


class ResCNN(nn.Module):
    """A small ResNet-style CNN: conv-BN-ReLU stem, residual blocks, global pooling."""

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


class SeqRNN(nn.Module):
    """Embedding -> LSTM/GRU/RNN -> linear head on the last time step (4 classes)."""

    def __init__(self, kind: str, layers: int = 1, vocab: int = 20, d: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(16, d, num_layers=layers, batch_first=True)
        self.head = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))
        return self.head(out[:, -1])


class TiedGRULM(nn.Module):
    """A GRU language model whose output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(24, 32)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, 24, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.emb(x))[0])


class LinearChain(nn.Module):
    """The reference's deep linear network: every layer W = scale·I (bias 0.1 if any)."""

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


class ScalarLayer(nn.Module):
    """One layer of the reference's scalar chain: w·x + b with scalar w and b."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


def scalar_chain(w: float, n: int = 50, b: float = 0.1) -> nn.Sequential:
    """n scalar layers: the output is w^n·x + b·(1 - w^n)/(1 - w)."""
    return nn.Sequential(*[ScalarLayer(w, b) for _ in range(n)])


class LongReLURNN(nn.Module):
    """A ReLU RNN whose recurrent matrix is gain·I: over 60 steps the state grows as gain^t."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(32))
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# --------------------------------------------------------------------------------- healthy
@register("he_relu_mlp", tags=SEED)
def _he_relu_mlp(seed: int) -> Run:
    """6-layer He-init ReLU MLP, regression."""
    return _run(he_mlp(6, 64), regression(8, seed=seed), mse)


@register("he_relu_mlp_bn", tags=SEED)
def _he_relu_mlp_bn(seed: int) -> Run:
    """8-layer He-init ReLU MLP with BatchNorm, regression."""
    return _run(he_mlp(8, 64, bn=True), regression(8, seed=seed), mse)


@register("he_relu_mlp_deep_12", chance_loss=CHANCE_4, tags=SEED)
def _he_relu_mlp_deep_12(seed: int) -> Run:
    """12-layer He-init ReLU MLP, 4 classes."""
    return _run(he_mlp(12, 48, d_out=4), classification(8, seed=seed), cross_entropy)


@register("default_mlp_shallow_ce", chance_loss=CHANCE_4, tags=SEED)
def _default_mlp_shallow_ce(seed: int) -> Run:
    """Two hidden ReLU layers with PyTorch's default init, 4 classes."""
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    return _run(model, classification(8, seed=seed), cross_entropy)


@register("logistic_regression", chance_loss=CHANCE_4, tags=SEED)
def _logistic_regression(seed: int) -> Run:
    """One linear layer, 4 classes."""
    return _run(nn.Linear(8, 4), classification(8, seed=seed), cross_entropy)


@register("gelu_layernorm_mlp_10", tags=SEED)
def _gelu_layernorm_mlp_10(seed: int) -> Run:
    """10 LayerNorm-Linear-GELU layers, regression."""
    layers: list[nn.Module] = [nn.Linear(8, 48)]
    for _ in range(10):
        layers += [nn.LayerNorm(48), nn.Linear(48, 48), nn.GELU()]
    layers.append(nn.Linear(48, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("residual_mlp_30", tags=SEED)
def _residual_mlp_30(seed: int) -> Run:
    """30 pre-norm residual MLP blocks, regression."""
    return _run(ResMLP(30, 32), regression(8, seed=seed), mse)


@register("prenorm_transformer_lm", chance_loss=math.log(24), tags=SEED)
def _prenorm_transformer_lm(seed: int) -> Run:
    """2-layer causal pre-norm transformer LM on counting sequences."""
    return _run(PreNormTransformer(), lm_batches(8, seed=seed), cross_entropy)


@register("prenorm_transformer_zero_head_adamw", chance_loss=math.log(24), tags=SEED)
def _prenorm_transformer_zero_head_adamw(seed: int) -> Run:
    """3-layer pre-norm transformer LM with a zero-initialised head, AdamW lr 3e-3, wd 0.1."""
    model = PreNormTransformer(zero_head=True, layers=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    return _run(model, lm_batches(8, seed=seed), cross_entropy, optimizer)


@register("postnorm_transformer_dropout", chance_loss=CHANCE_4, tags=SEED)
def _postnorm_transformer_dropout(seed: int) -> Run:
    """2-layer post-norm transformer classifier with dropout 0.1."""
    return _run(PostNormClassifier(), sequences(8, seed=seed), cross_entropy)


@register("residual_cnn_bn", chance_loss=CHANCE_4, tags=SEED)
def _residual_cnn_bn(seed: int) -> Run:
    """Residual CNN with BatchNorm, 4 classes."""
    return _run(ResCNN(), images(8, seed=seed), cross_entropy)


@register("residual_cnn_sgd_momentum", chance_loss=CHANCE_4, tags=SEED)
def _residual_cnn_sgd_momentum(seed: int) -> Run:
    """Residual CNN with BatchNorm, SGD lr 0.05 momentum 0.9."""
    model = ResCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return _run(model, images(8, seed=seed), cross_entropy, optimizer)


@register("plain_cnn_default_init", chance_loss=CHANCE_4, tags=SEED)
def _plain_cnn_default_init(seed: int) -> Run:
    """Two conv layers and an MLP head, PyTorch's default init."""
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
    return _run(model, images(8, seed=seed), cross_entropy)


@register("lstm_2layer", chance_loss=CHANCE_4, tags=SEED)
def _lstm_2layer(seed: int) -> Run:
    """2-layer LSTM classifier, sequences of 12."""
    return _run(SeqRNN("lstm", 2), sequences(8, seed=seed), cross_entropy)


@register("gru", chance_loss=CHANCE_4, tags=SEED)
def _gru(seed: int) -> Run:
    """GRU classifier, sequences of 12."""
    return _run(SeqRNN("gru"), sequences(8, seed=seed), cross_entropy)


@register("vanilla_rnn_short", chance_loss=CHANCE_4, tags=SEED)
def _vanilla_rnn_short(seed: int) -> Run:
    """tanh RNN classifier on short sequences (8 steps)."""
    return _run(SeqRNN("rnn"), sequences(8, length=8, seed=seed), cross_entropy)


@register("bag_of_embeddings", chance_loss=CHANCE_4, tags=SEED)
def _bag_of_embeddings(seed: int) -> Run:
    """EmbeddingBag + linear classifier."""
    model = nn.Sequential(nn.EmbeddingBag(50, 16), nn.Linear(16, 4))
    data = [((x * 2) % 50, y) for x, y in sequences(8, seed=seed)]
    return _run(model, data, cross_entropy)


@register("mlp_dropout_sgd", tags=SEED)
def _mlp_dropout_sgd(seed: int) -> Run:
    """MLP with dropout 0.2, SGD lr 0.05 momentum 0.9."""
    model = nn.Sequential(
        nn.Linear(8, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 1),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return _run(model, regression(8, seed=seed), mse, optimizer)


@register("mlp_big_targets", tags=SEED)
def _mlp_big_targets(seed: int) -> Run:
    """He MLP regressing targets of scale 30 (a large but healthy loss)."""
    return _run(he_mlp(4, 32), regression(8, seed=seed, scale=30.0), mse)


@register("conv1d_net", chance_loss=CHANCE_4, tags=SEED)
def _conv1d_net(seed: int) -> Run:
    """Two Conv1d layers, pooled, 4 classes."""
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
    return _run(model, data, cross_entropy)


@register("autoencoder_sigmoid_out", tags=SEED)
def _autoencoder_sigmoid_out(seed: int) -> Run:
    """Small ReLU autoencoder with a sigmoid output."""
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
    data = [(x, x) for x in (torch.rand(32, 16, generator=g) for _ in range(8))]
    return _run(model, data, mse)


@register("small_tanh_mlp_xavier", tags=SEED)
def _small_tanh_mlp_xavier(seed: int) -> Run:
    """5-layer tanh MLP with Xavier init."""
    layers: list[nn.Module] = []
    for i in range(5):
        lin = nn.Linear(8 if i == 0 else 32, 32)
        nn.init.xavier_normal_(lin.weight)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(32, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("converged_linear_regression", tags=SEED)
def _converged_linear_regression(seed: int) -> Run:
    """Linear regression started next to its exact solution (the loss is ~0 throughout)."""
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
    return _run(model, data, mse, torch.optim.SGD(model.parameters(), lr=0.1))


@register("he_relu_mlp_20_many_classes", chance_loss=math.log(100), tags=SEED)
def _he_relu_mlp_20_many_classes(seed: int) -> Run:
    """20-layer He-init ReLU MLP, 100 classes."""
    return _run(he_mlp(20, 32, d_out=100), classification(8, classes=100, seed=seed), cross_entropy)


@register("mlp_small_scale_inputs", tags=SEED)
def _mlp_small_scale_inputs(seed: int) -> Run:
    """He MLP on inputs scaled by 0.02 (small activations, healthy)."""
    data = [(x * 0.02, y) for x, y in regression(8, seed=seed)]
    return _run(he_mlp(4, 32), data, mse)


@register("vgg_like_cnn_bn", chance_loss=CHANCE_4, tags=SEED)
def _vgg_like_cnn_bn(seed: int) -> Run:
    """Six conv-BN-ReLU layers, pooled, 4 classes."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in (8, 8, 16, 16, 32, 32):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)]
    return _run(nn.Sequential(*layers), images(8, seed=seed), cross_entropy)


@register("sum_reduced_vae_like_loss", tags=SEED)
def _sum_reduced_vae_like_loss(seed: int) -> Run:
    """Autoencoder with a sum-reduced squared error (losses in the thousands, healthy)."""
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
    return _run(model, data, sum_mse)


@register("mlp_rmsprop", tags=SEED)
def _mlp_rmsprop(seed: int) -> Run:
    """He MLP, RMSprop lr 1e-3."""
    model = he_mlp(5, 32)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    return _run(model, regression(8, seed=seed), mse, optimizer)


@register("mlp_adagrad_ce", chance_loss=CHANCE_4, tags=SEED)
def _mlp_adagrad_ce(seed: int) -> Run:
    """He MLP classifier, Adagrad lr 1e-2."""
    model = he_mlp(4, 32, d_out=4)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    return _run(model, classification(8, seed=seed), cross_entropy, optimizer)


@register("mlp_plain_sgd_0.01", tags=SEED)
def _mlp_plain_sgd_001(seed: int) -> Run:
    """He MLP, plain SGD lr 0.01."""
    model = he_mlp(4, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return _run(model, regression(8, seed=seed), mse, optimizer)


@register("mlp_plain_sgd_0.1_edge_of_stability", set(), develops=True, tags=SEED)
def _mlp_plain_sgd_01_edge(seed: int) -> Run:
    """He MLP, plain SGD lr 0.1: at the edge of stability, some seeds diverge (exploding must
    then show before NaN), others train; so no demand either way."""
    model = he_mlp(4, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return _run(model, regression(8, seed=seed), mse, optimizer)


@register("lstm_long_sequences_sgd_clipless", chance_loss=CHANCE_4, tags=SEED)
def _lstm_long_sequences_sgd_clipless(seed: int) -> Run:
    """LSTM classifier on 50-step sequences, plain SGD lr 0.1 without clipping."""
    model = SeqRNN("lstm", 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return _run(model, sequences(8, length=50, seed=seed), cross_entropy, optimizer)


@register("groupnorm_cnn", chance_loss=CHANCE_4, tags=SEED)
def _groupnorm_cnn(seed: int) -> Run:
    """Two conv-GroupNorm-SiLU layers, pooled, 4 classes."""
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
    return _run(model, images(8, seed=seed), cross_entropy)


@register("partially_frozen_mlp", tags=SEED)
def _partially_frozen_mlp(seed: int) -> Run:
    """He MLP whose first layer is frozen (no gradient there, which is not vanishing)."""
    model = he_mlp(4, 32)
    for p in model[0].parameters():
        p.requires_grad_(False)
    return _run(model, regression(8, seed=seed), mse)


@register("tied_embedding_lm", chance_loss=math.log(24), tags=SEED)
def _tied_embedding_lm(seed: int) -> Run:
    """GRU language model with tied input and output embeddings."""
    return _run(TiedGRULM(), lm_batches(8, seed=seed), cross_entropy)


# ---------------------------------------------------------------------------------- broken
@register("linear_chain_1.5", {"exploding"}, tags=SEED)
def _linear_chain_15(seed: int) -> Run:
    """60 linear layers W = 1.5·I: activations and gradients grow as 1.5^depth."""
    return _run(LinearChain(60, 1.5), chain_data(4, seed=seed), mse)


@register("linear_chain_1.5_bias_sgd", {"exploding"}, tags=SEED)
def _linear_chain_15_bias_sgd(seed: int) -> Run:
    """60 linear layers W = 1.5·I with biases, SGD lr 1e-3."""
    model = LinearChain(60, 1.5, bias=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return _run(model, chain_data(4, seed=seed), mse, optimizer)


@register("linear_chain_0.5", {"vanishing"}, tags=SEED)
def _linear_chain_05(seed: int) -> Run:
    """60 linear layers W = 0.5·I: gradients shrink as 0.5^depth towards the input."""
    return _run(LinearChain(60, 0.5), chain_data(4, seed=seed), mse)


@register("linear_chain_0.5_bias", {"vanishing"}, tags=SEED)
def _linear_chain_05_bias(seed: int) -> Run:
    """60 linear layers W = 0.5·I with biases 0.1."""
    return _run(LinearChain(60, 0.5, bias=True), chain_data(4, seed=seed), mse)


@register("scalar_chain_1.3", {"exploding"}, tags=SEED)
def _scalar_chain_13(seed: int) -> Run:
    """50 scalar layers w·x + b with w = 1.3."""
    return _run(scalar_chain(1.3), scalar_data(4, seed=seed), mse)


@register("scalar_chain_0.7", {"vanishing"}, tags=SEED)
def _scalar_chain_07(seed: int) -> Run:
    """50 scalar layers w·x + b with w = 0.7."""
    return _run(scalar_chain(0.7), scalar_data(4, seed=seed), mse)


@register(
    "sgd_lr_far_too_high",
    {"exploding", "loss_spike", "nonfinite", "update_size"},
    develops=True,
    tags=SEED,
)
def _sgd_lr_far_too_high(seed: int) -> Run:
    """He MLP, SGD lr 3.0: diverges."""
    model = he_mlp(4, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0)
    return _run(model, regression(8, seed=seed), mse, optimizer)


@register(
    "sgd_lr_too_high_cnn",
    {"exploding", "loss_spike", "nonfinite", "update_size"},
    chance_loss=CHANCE_4,
    develops=True,
    tags=SEED,
)
def _sgd_lr_too_high_cnn(seed: int) -> Run:
    """Small CNN, SGD lr 5.0: diverges."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    return _run(model, images(8, seed=seed), cross_entropy, optimizer)


@register("default_init_relu_mlp_20", {"vanishing"}, tags=SEED)
def _default_init_relu_mlp_20(seed: int) -> Run:
    """20 ReLU layers with PyTorch's default init (variance 1/(3·fan_in)): the signal and the
    gradients shrink layer by layer."""
    layers: list[nn.Module] = []
    for i in range(20):
        layers += [nn.Linear(8 if i == 0 else 32, 32), nn.ReLU()]
    layers.append(nn.Linear(32, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("sigmoid_mlp_normal_init_20", {"vanishing"}, tags=SEED)
def _sigmoid_mlp_normal_init_20(seed: int) -> Run:
    """20 sigmoid layers with N(0, 1) weights and biases (before Glorot & Bengio)."""
    layers: list[nn.Module] = []
    for i in range(20):
        lin = nn.Linear(8 if i == 0 else 24, 24)
        nn.init.normal_(lin.weight, 0.0, 1.0)
        nn.init.normal_(lin.bias, 0.0, 1.0)
        layers += [lin, nn.Sigmoid()]
    layers.append(nn.Linear(24, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("sigmoid_mlp_normal_init_20_wide", set(), tags=SEED)
def _sigmoid_mlp_normal_init_20_wide(seed: int) -> Run:
    """Wide sigmoid stack with N(0, 1) weights: it saturates but its gradients do not vanish
    much; saturation is the activation detectors' job, so no gradient-side demand."""
    layers: list[nn.Module] = []
    for i in range(20):
        lin = nn.Linear(8 if i == 0 else 64, 64)
        nn.init.normal_(lin.weight, 0.0, 1.0)
        layers += [lin, nn.Sigmoid()]
    layers.append(nn.Linear(64, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("tanh_large_weights", set(), tags=SEED)
def _tanh_large_weights(seed: int) -> Run:
    """tanh MLP with N(0, 9) weights: saturation, the activation detectors' job."""
    layers: list[nn.Module] = []
    for i in range(8):
        lin = nn.Linear(8 if i == 0 else 32, 32)
        nn.init.normal_(lin.weight, 0.0, 3.0)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(32, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("relu_large_negative_bias", {"vanishing"}, tags=SEED)
def _relu_large_negative_bias(seed: int) -> Run:
    """ReLU MLP whose fourth layer has bias -10: every unit after it is dead."""
    layers: list[nn.Module] = []
    for i in range(6):
        lin = nn.Linear(8 if i == 0 else 32, 32)
        if i == 3:
            nn.init.constant_(lin.bias, -10.0)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(32, 1))
    return _run(nn.Sequential(*layers), regression(8, seed=seed), mse)


@register("frozen_lr_zero", {"not_learning"}, tags=SEED)
def _frozen_lr_zero(seed: int) -> Run:
    """He MLP, SGD lr 0: nothing moves."""
    model = he_mlp(3, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return _run(model, regression(8, seed=seed), mse, optimizer)


@register("lr_tiny_adam", {"not_learning"}, chance_loss=CHANCE_4, tags=SEED)
def _lr_tiny_adam(seed: int) -> Run:
    """He MLP classifier, Adam lr 1e-7: far too small to learn."""
    model = he_mlp(3, 32, d_out=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)
    return _run(model, classification(8, seed=seed), cross_entropy, optimizer)


@register("relu_rnn_long_gain_1.2", {"exploding"}, tags=SEED)
def _relu_rnn_long_gain_12(seed: int) -> Run:
    """ReLU RNN with recurrent matrix 1.2·I over 60 steps, SGD lr 1e-2."""
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(8, 60, 4, generator=g).abs(), torch.randn(8, 1, generator=g)) for _ in range(4)
    ]
    model = LongReLURNN(1.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    return _run(model, data, mse, optimizer)


@register(
    "adam_lr_1_mlp",
    {"exploding", "loss_spike", "grad_spike", "update_size"},
    develops=True,
    tags=SEED,
)
def _adam_lr_1_mlp(seed: int) -> Run:
    """He MLP, Adam lr 1.0."""
    model = he_mlp(4, 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    return _run(model, regression(8, seed=seed), mse, optimizer)
