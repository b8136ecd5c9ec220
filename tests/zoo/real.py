"""Real architectures, trained the way people train them, and the failures people hit.

Hugging Face GPT-2, BERT, ViT, ResNet and Llama, PyTorch's own transformer and LSTM/GRU
language models (the ``word_language_model`` example's models and recipes) and a CNN on
scikit-learn's digits: small configurations, random init (nothing is downloaded), data that
can really be learned, CPU-fast (tens of milliseconds a step, one to three hundred steps).

Healthy runs use realistic hyper-parameters (AdamW 3e-4..1e-3 with warmup for transformers,
SGD with momentum for the ResNet, the example's SGD lr 20 / clip 0.25 for the LSTM) and were
checked to learn: their loss falls clearly below chance. Each failure was checked to really
fail without looking at gradwatch: the loss sits at chance, rises, starts far above chance,
or blows up; the gradient at the first time step underflows. What was measured is in each
scenario's docstring (``Scenario.about``), seed 0 unless said, on a shared 2-core CPU.

``transformers`` and ``scikit-learn`` are imported only when a scenario that needs them is
built, so importing the zoo stays cheap. Every scenario here is tagged ``"real"``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from ._core import Batch, Run, cross_entropy, register, warmup

REAL = "real"
HF = "hf"  # needs transformers
VOCAB = 128  # language-model vocabulary
LM_LENGTH = 32  # tokens a language-model batch row is trained on
CHANCE_LM = math.log(VOCAB)
CHANCE_4 = math.log(4)
CHANCE_10 = math.log(10)


def _transformers() -> Any:
    """Import transformers quietly (its logger chats about random init at warning level)."""
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


# ------------------------------------------------------------------------------------ data
def markov_copy_lm(
    n: int,
    vocab: int = VOCAB,
    length: int = LM_LENGTH,
    batch: int = 16,
    branch: int = 4,
    seed: int = 0,
) -> list[Batch]:
    """Language-model batches ``(tokens, next tokens)`` of a learnable synthetic language.

    Each row is a walk on a fixed random graph where every token has ``branch`` possible
    successors (a bigram grammar), and the walk is then repeated once (a copy, which
    attention can learn as an induction head). Chance is ln(vocab); knowing the grammar gets
    the first half to ln(branch) and copying gets the second half to ~0, so a model that
    learns ends well below chance (around 1-2.5 nats after a few hundred steps).
    """
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, vocab, (vocab, branch), generator=g)
    half = (length + 1) // 2 + 1
    out = []
    for _ in range(n):
        walk = torch.empty(batch, half, dtype=torch.long)
        walk[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(1, half):
            pick = torch.randint(0, branch, (batch,), generator=g)
            walk[:, t] = table[walk[:, t - 1], pick]
        sequence = torch.cat([walk, walk], 1)[:, : length + 1]
        out.append((sequence[:, :-1], sequence[:, 1:]))
    return out


def marker_sequences(
    n: int, vocab: int = 200, length: int = 32, batch: int = 32, classes: int = 4, seed: int = 0
) -> list[Batch]:
    """Sequence classification: random tokens with one marker token (ids 4..4+classes) at a
    random position; the label is which marker. Position 0 holds a [CLS]-like token 2, and
    0 (padding) never occurs, so a BERT pooler on position 0 must attend to find it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(10, vocab, (batch, length), generator=g)
        x[:, 0] = 2
        y = torch.randint(0, classes, (batch,), generator=g)
        position = torch.randint(1, length, (batch,), generator=g)
        x[torch.arange(batch), position] = 4 + y
        out.append((x, y))
    return out


def quadrant_images(n: int, size: int = 16, batch: int = 32, seed: int = 0) -> list[Batch]:
    """4-class images: N(0, 1) noise plus a bright 4x4 square at a random place inside the
    quadrant named by the label (all three channels)."""
    g = torch.Generator().manual_seed(seed)
    half = size // 2
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (batch,), generator=g)
        x = torch.randn(batch, 3, size, size, generator=g)
        corner = torch.randint(0, half - 3, (batch, 2), generator=g)
        for i in range(batch):
            row, col = divmod(int(y[i]), 2)
            top = row * half + int(corner[i, 0])
            left = col * half + int(corner[i, 1])
            x[i, :, top : top + 4, left : left + 4] += 2.0
        out.append((x, y))
    return out


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - x.mean()) / x.std(), torch.tensor(data.target)


def digits_batches(batch: int = 64, seed: int = 0) -> list[Batch]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), standardised,
    shuffled by ``seed`` and cut into full batches (28 of 64)."""
    images, labels = _digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    return [
        (images[i : i + batch], labels[i : i + batch])
        for i in range(0, len(labels) - batch + 1, batch)
    ]


def first_step_sequences(
    n: int, length: int = 100, features: int = 8, batch: int = 32, seed: int = 0
) -> list[Batch]:
    """A long-memory task: N(0, 0.25) noise for ``length`` steps, and the 4-class label is
    written into the first step only (+2 on feature ``label``). Fresh batches, so it cannot
    be memorised from the later steps' noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (batch,), generator=g)
        x = torch.randn(batch, length, features, generator=g) * 0.5
        x[torch.arange(batch), 0, y] += 2.0
        out.append((x, y))
    return out


# ---------------------------------------------------------------------------------- models
class PositionalEncoding(nn.Module):
    """Sinusoidal positions plus dropout, as in PyTorch's word_language_model example."""

    def __init__(self, d: int, dropout: float = 0.1, max_len: int = 512) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1).float()
        rate = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
        table = torch.zeros(max_len, d)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate)
        self.register_buffer("table", table.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.table[: x.size(0)])


class WordLanguageModelTransformer(nn.Module):
    """PyTorch examples' ``word_language_model --model Transformer``: scaled embedding,
    sinusoidal positions, a post-norm ``nn.TransformerEncoder`` with a causal mask (sequence
    first inside), a linear decoder; uniform(-0.1, 0.1) init of embedding and decoder."""

    def __init__(
        self, ntoken: int = VOCAB, d: int = 64, nhead: int = 2, nhid: int = 128, layers: int = 2
    ) -> None:
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(ntoken, d)
        self.position = PositionalEncoding(d, 0.2)
        layer = nn.TransformerEncoderLayer(d, nhead, nhid, 0.2)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d, ntoken)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        src = tokens.t()
        mask = nn.Transformer.generate_square_subsequent_mask(src.size(0))
        h = self.position(self.embed(src) * math.sqrt(self.d))
        return self.decoder(self.encoder(h, mask=mask, is_causal=True)).transpose(0, 1)


class RNNLanguageModel(nn.Module):
    """PyTorch examples' ``word_language_model`` RNNModel: embedding, dropout, a multi-layer
    LSTM or GRU, dropout, linear decoder; uniform(-0.1, 0.1) init of embedding and decoder."""

    def __init__(self, kind: str, ntoken: int = VOCAB, d: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, d)
        cell = {"LSTM": nn.LSTM, "GRU": nn.GRU}[kind]
        self.rnn = cell(d, d, layers, dropout=0.2, batch_first=True)
        self.decoder = nn.Linear(d, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(output))


class DigitsCNN(nn.Module):
    """A LeNet-sized CNN for 8x8 digits: two 3x3 convs, max-pool, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class EncoderLM(nn.Module):
    """A causal LM on ``nn.TransformerEncoderLayer``: learned positions, ``layers`` blocks,
    post-norm (PyTorch's default, the original Transformer) or pre-norm with a final
    LayerNorm (GPT-2 style)."""

    def __init__(
        self,
        layers: int,
        norm_first: bool,
        d: int = 64,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.position = nn.Embedding(64, d)
        block = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, batch_first=True, norm_first=norm_first
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d) if norm_first else nn.Identity()
        self.head = nn.Linear(d, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        h = self.embed(tokens) + self.position(torch.arange(n))
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


class QKNormBlock(nn.Module):
    """A pre-norm GPT block whose queries and keys are LayerNormed per head (QK-norm, as in
    ViT-22B and OLMo 2), which keeps attention logits bounded."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.LayerNorm(d // heads)
        self.k_norm = nn.LayerNorm(d // heads)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(
            self.q_norm(q), self.k_norm(k), v, is_causal=True
        )
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class QKNormGPT(nn.Module):
    """A small pre-norm GPT with QK-norm; ``final_norm=False`` leaves out the LayerNorm
    before the output head (the mistake that lets the output logits run away)."""

    def __init__(self, final_norm: bool, d: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.position = nn.Embedding(64, d)
        self.blocks = nn.Sequential(*[QKNormBlock(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.head = nn.Linear(d, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position(torch.arange(tokens.shape[1]))
        return self.head(self.norm(self.blocks(h)))


class FirstStepRNN(nn.Module):
    """A vanilla tanh ``nn.RNN`` read out at the last step, with its recurrent matrix set to
    ``gain`` x a random orthogonal matrix (gain < 1: the state forgets as gain^t)."""

    def __init__(self, gain: float, features: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.rnn = nn.RNN(features, hidden, batch_first=True)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0)
            self.rnn.weight_hh_l0.mul_(gain)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def gpt2(**config: Any) -> nn.Module:
    """A Hugging Face GPT2LMHeadModel: 2 layers, width 64, 4 heads, vocabulary 128."""
    transformers = _transformers()
    settings: dict[str, Any] = dict(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4
    )
    settings.update(config)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings))


def vit() -> nn.Module:
    """A Hugging Face ViTForImageClassification: 16x16 images, 4x4 patches, 2 layers of 64."""
    transformers = _transformers()
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=4,
    )
    return transformers.ViTForImageClassification(config)


def adamw(model: nn.Module, lr: float, **options: Any) -> torch.optim.AdamW:
    """AdamW over the model's parameters (weight decay 0.01 unless given)."""
    options.setdefault("weight_decay", 0.01)
    return torch.optim.AdamW(model.parameters(), lr=lr, **options)


# --------------------------------------------------------------------------------- healthy
@register("gpt2_adamw_warmup", chance_loss=CHANCE_LM, tags=(REAL, HF))
def _gpt2_adamw_warmup(seed: int) -> Run:
    """HF GPT-2 (2 layers, width 64, vocab 128) on the Markov+copy language, AdamW lr 1e-3 wd 0.01,
    20 warmup steps then linear decay, 200 steps. Measured: loss 4.86 -> 4.04 at step 50,
    3.44 at 100, 3.06 at 150, 2.98 over the last 20 steps (chance 4.85)."""
    model = gpt2()
    optimizer = adamw(model, 1e-3)
    return Run(
        model,
        optimizer,
        markov_copy_lm(64, seed=seed),
        cross_entropy,
        warmup(optimizer, 20, 200),
        steps=200,
    )


@register("bert_classifier_adamw_warmup", chance_loss=CHANCE_4, tags=(REAL, HF))
def _bert_classifier(seed: int) -> Run:
    """HF BertForSequenceClassification (2 layers, width 64, 4 labels) on the marker task, AdamW lr
    5e-4 wd 0.01, 20 warmup steps then linear decay, 200 steps. Measured: loss 1.38, still
    1.38 at step 50 (a plateau at chance), then 0.86 at 100, 0.39 at 150, 0.28 over the last
    20 steps (chance 1.39)."""
    transformers = _transformers()
    config = transformers.BertConfig(
        vocab_size=200,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=4,
    )
    model = transformers.BertForSequenceClassification(config)
    optimizer = adamw(model, 5e-4)
    return Run(
        model,
        optimizer,
        marker_sequences(32, seed=seed),
        cross_entropy,
        warmup(optimizer, 20, 200),
        steps=200,
    )


@register("vit_adamw_warmup", chance_loss=CHANCE_4, tags=(REAL, HF))
def _vit_adamw_warmup(seed: int) -> Run:
    """HF ViTForImageClassification (16x16 images, 4x4 patches, 2 layers of 64) on the quadrant
    images, AdamW lr 1e-3 wd 0.05, 20 warmup steps, 200 steps. Measured: loss 1.37, a
    plateau near chance to step 100 (1.37 at 50, 1.44 at 100), then 0.76 at 150, 0.35 over
    the last 20 steps (chance 1.39)."""
    model = vit()
    optimizer = adamw(model, 1e-3, weight_decay=0.05)
    return Run(
        model,
        optimizer,
        quadrant_images(32, seed=seed),
        cross_entropy,
        warmup(optimizer, 20),
        steps=200,
    )


@register("resnet_sgd_momentum_warmup", chance_loss=CHANCE_4, tags=(REAL, HF))
def _resnet_sgd(seed: int) -> Run:
    """HF ResNetForImageClassification (basic blocks, stages 16/32/64, one block each) on 32x32
    quadrant images, SGD lr 0.1 momentum 0.9 wd 5e-4 with 20 warmup steps, the ImageNet
    recipe, 150 steps. Measured: loss 1.40 -> 0.002 at step 37, 0.0004 over the last 15
    steps (chance 1.39)."""
    transformers = _transformers()
    config = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        num_labels=4,
    )
    model = transformers.ResNetForImageClassification(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return Run(
        model,
        optimizer,
        quadrant_images(32, size=32, seed=seed),
        cross_entropy,
        warmup(optimizer, 20),
        steps=150,
    )


def _llama_lm(vocab: int, width: int, layers: int, **config: Any) -> nn.Module:
    """HF LlamaForCausalLM with 4 heads, 2 KV heads, an MLP twice the width, 64 positions."""
    transformers = _transformers()
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **config,
        )
    )


@register("llama_adamw_cosine", chance_loss=CHANCE_LM, tags=(REAL, HF))
def _llama(seed: int) -> Run:
    """HF LlamaForCausalLM (2 layers, width 64, 4 heads, 2 KV heads, vocab 128) on the Markov+copy
    language, AdamW lr 1e-3 betas (0.9, 0.95) wd 0.1, 20 warmup steps then cosine to 10%,
    200 steps. Measured: loss 4.87 -> 3.70 at step 50, 2.86 at 100, 2.45 at 150, 2.33 over
    the last 20 steps (chance 4.85)."""
    model = _llama_lm(VOCAB, 64, layers=2)
    optimizer = adamw(model, 1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    return Run(
        model,
        optimizer,
        markov_copy_lm(64, seed=seed),
        cross_entropy,
        warmup(optimizer, 20, 200, floor=0.1, cosine=True),
        steps=200,
    )


#: A realistic vocabulary for an untied output layer (Llama's own, 32,000 words).
LLAMA_VOCAB = 32_000


@register("llama_untied_32k_vocab_adamw", chance_loss=math.log(LLAMA_VOCAB), tags=(REAL, HF))
def _llama_untied_32k(seed: int) -> Run:
    """HF LlamaForCausalLM with its default untied ``lm_head`` over a 32,000-word vocabulary
    (4 layers, width 128, 4 heads, 2 KV heads) on the Markov+copy language over that
    vocabulary, AdamW lr 3e-4 betas (0.9, 0.95) wd 0.1, 120 steps. Healthy: the head's
    ‖g‖·‖w‖ is 27-33, the blocks' layers 0.19-0.26 (vanishing warned from step 4 on while
    the head was the layers' reference). Measured: loss 10.4 (chance 10.37) -> 9.7 at step
    100."""
    model = _llama_lm(LLAMA_VOCAB, 128, layers=4, tie_word_embeddings=False)
    optimizer = adamw(model, 3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    return Run(
        model,
        optimizer,
        markov_copy_lm(64, vocab=LLAMA_VOCAB, seed=seed),
        cross_entropy,
        steps=120,
    )


@register("torch_transformer_lm_sgd_clip", chance_loss=CHANCE_LM, tags=(REAL,))
def _torch_transformer_lm(seed: int) -> Run:
    """word_language_model's Transformer (post-norm nn.TransformerEncoder, 2 layers, width 64, 2
    heads, dropout 0.2) trained with the example's recipe for it: plain SGD lr 5, gradient
    norm clipped to 0.25; 200 steps. Measured: loss 4.95 -> 2.19 at step 50, 1.94 at 150,
    1.86 over the last 20 steps (chance 4.85); its largest attention logit creeps from 2.2
    to 10.7."""
    model = WordLanguageModelTransformer()
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    return Run(model, optimizer, markov_copy_lm(64, seed=seed), cross_entropy, steps=200, clip=0.25)


@register("lstm_lm_sgd_clip", chance_loss=CHANCE_LM, tags=(REAL,))
def _lstm_lm_sgd(seed: int) -> Run:
    """word_language_model's 2-layer LSTM (width 64, dropout 0.2) with the example's default
    recipe: plain SGD lr 20, gradient norm clipped to 0.25; 300 steps. Measured: loss 4.85,
    a plateau near the unigram level (4.82 at step 75, 4.62 at 150), then 3.16 at 225, 2.46
    over the last 30 steps (chance 4.85)."""
    model = RNNLanguageModel("LSTM")
    optimizer = torch.optim.SGD(model.parameters(), lr=20.0)
    return Run(model, optimizer, markov_copy_lm(64, seed=seed), cross_entropy, steps=300, clip=0.25)


@register("lstm_lm_adam", chance_loss=CHANCE_LM, tags=(REAL,))
def _lstm_lm_adam(seed: int) -> Run:
    """word_language_model's 2-layer LSTM (width 64, dropout 0.2), Adam lr 3e-3, 200 steps.
    Measured: loss 4.85 -> 4.73 at step 50, 4.32 at 100, 3.37 at 150, 2.99 over the last 20
    steps (chance 4.85)."""
    model = RNNLanguageModel("LSTM")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Run(model, optimizer, markov_copy_lm(64, seed=seed), cross_entropy, steps=200)


@register("gru_lm_adam", chance_loss=CHANCE_LM, tags=(REAL,))
def _gru_lm_adam(seed: int) -> Run:
    """word_language_model's 2-layer GRU (width 64, dropout 0.2), Adam lr 3e-3, 200 steps.
    Measured: loss 4.86 -> 4.45 at step 50, 3.19 at 100, 2.61 at 150, 2.31 over the last 20
    steps (chance 4.85)."""
    model = RNNLanguageModel("GRU")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Run(model, optimizer, markov_copy_lm(64, seed=seed), cross_entropy, steps=200)


@register("digits_cnn_adam", chance_loss=CHANCE_10, tags=(REAL, "sklearn"))
def _digits_cnn_adam(seed: int) -> Run:
    """CNN on scikit-learn's digits (batches of 64), Adam lr 1e-3, 200 steps. Measured: loss 2.32
    -> 0.52 at step 50, 0.10 at 100, 0.07 over the last 20 steps (chance 2.30)."""
    model = DigitsCNN()
    return Run(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        digits_batches(seed=seed),
        cross_entropy,
        steps=200,
    )


@register("digits_cnn_sgd_momentum", chance_loss=CHANCE_10, tags=(REAL, "sklearn"))
def _digits_cnn_sgd(seed: int) -> Run:
    """CNN on scikit-learn's digits, SGD lr 0.05 momentum 0.9, 200 steps. Measured: loss 2.32 ->
    0.38 at step 50, 0.03 at 100, 0.006 over the last 20 steps (chance 2.30)."""
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Run(model, optimizer, digits_batches(seed=seed), cross_entropy, steps=200)


@register("postln_transformer_warmup", chance_loss=CHANCE_LM, tags=(REAL, "slow"))
def _postln_warmup(seed: int) -> Run:
    """The twin of ``postln_transformer_no_warmup`` that works: the same 6-layer post-norm LM and
    Adam lr 1e-2 betas (0.9, 0.98), with 40 warmup steps; 120 steps. Measured: loss 5.00 ->
    3.94 at step 30, 2.52 at 60, 2.05 over the last 12 steps (seed 1: 2.23) (chance 4.85)."""
    return _postln(seed, warmup_steps=40)


@register("qknorm_gpt_final_norm_lr_0.1", set(), chance_loss=CHANCE_LM, tags=(REAL, "control"))
def _qknorm_gpt_final_norm(seed: int) -> Run:
    """Control for ``gpt_no_final_norm_output_logits``: the same model and schedule with the final
    LayerNorm in place learns (no demand either way: its learning rate is very high, yet it
    trains). Measured: loss 5.06 -> 2.83 at step 25, 2.39 at 50, 2.05 over the last 10
    steps; the largest |logit| stays below 11."""
    return _qknorm_gpt(seed, final_norm=True)


# ---------------------------------------------------------------------------------- broken
@register(
    "gpt2_adamw_lr_0.1",
    {"update_size", "not_learning", "exploding"},
    chance_loss=CHANCE_LM,
    tags=(REAL, HF),
)
def _gpt2_lr_high(seed: int) -> Run:
    """HF GPT-2 as in ``gpt2_adamw_warmup`` with AdamW lr 0.1, no warmup, 150 steps: the updates
    are as large as the weights. Measured: loss 4.86 rises to 6.80 at step 4, then sits at
    chance (4.82 at steps 37 and 75, 4.78 over the last 15 steps), never learning."""
    model = gpt2()
    return Run(model, adamw(model, 0.1), markov_copy_lm(64, seed=seed), cross_entropy, steps=150)


@register("gpt2_init_range_2", {"poor_init"}, chance_loss=CHANCE_LM, tags=(REAL, HF))
def _gpt2_init_range(seed: int) -> Run:
    """HF GPT-2 with ``initializer_range=2.0`` (weights N(0, 4) instead of N(0, 0.0004)), otherwise
    as ``gpt2_adamw_warmup``, 100 steps. Measured: first loss 40.8, 8.4x chance (4.85), with
    logits up to 66; 33.1 at step 50, 27.7 over the last 10 steps."""
    model = gpt2(initializer_range=2.0)
    optimizer = adamw(model, 1e-3)
    return Run(
        model,
        optimizer,
        markov_copy_lm(64, seed=seed),
        cross_entropy,
        warmup(optimizer, 20),
        steps=100,
    )


@register(
    "vit_adamw_lr_0.1", {"not_learning", "update_size"}, chance_loss=CHANCE_4, tags=(REAL, HF)
)
def _vit_lr_high(seed: int) -> Run:
    """HF ViT as in ``vit_adamw_warmup`` with AdamW lr 0.1, no warmup, 150 steps. Measured: loss
    1.37 jumps to 5.7 at step 5, then sits at chance (1.38 at step 37, 1.35 at 75, 1.40 over
    the last 15 steps; chance 1.39)."""
    model = vit()
    return Run(
        model,
        adamw(model, 0.1, weight_decay=0.05),
        quadrant_images(32, seed=seed),
        cross_entropy,
        steps=150,
    )


@register(
    "digits_cnn_adadelta_lr_100",
    {"not_learning", "update_size"},
    chance_loss=CHANCE_10,
    tags=(REAL, "sklearn"),
)
def _digits_adadelta(seed: int) -> Run:
    """The digits CNN with Adadelta at lr 100 (its default is 1.0), 150 steps. Measured: loss 2.32,
    262 at step 1 (logits up to 343), then stuck at chance (2.28 at step 37, 2.37 at 75,
    2.33 over the last 15 steps; chance 2.30)."""
    model = DigitsCNN()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=100.0)
    return Run(model, optimizer, digits_batches(seed=seed), cross_entropy, steps=150)


@register(
    "digits_cnn_sgd_warmup_to_lr_0.5",
    {"exploding", "loss_spike", "grad_spike", "update_size", "nonfinite"},
    chance_loss=CHANCE_10,
    develops=True,
    tags=(REAL, "sklearn"),
)
def _digits_warmup_too_high(seed: int) -> Run:
    """The digits CNN with SGD momentum 0.9 warmed up linearly over 100 steps to a peak lr
    of 0.5 (ten times ``digits_cnn_sgd_momentum``'s), 150 steps: it learns while the rate
    is low, then turns unstable as the rate climbs past what the model can take, and
    diverges. Measured: loss 2.32 -> 0.2-0.7 over steps 40-64 (lr 0.2-0.3), 1.88 at 65,
    7.35 at 66 (above 3x its start), back near chance, then 42 at 77, 1e4 at 80, NaN from
    83; the largest |logit| 20-47 until 64, 72 at 66. Seed 1: fine until 69, 12.2 at 71,
    NaN from 78."""
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return Run(
        model,
        optimizer,
        digits_batches(seed=seed),
        cross_entropy,
        warmup(optimizer, 100),
        steps=150,
    )


@register("rnn_tanh_T100_orthogonal_0.5", {"vanishing"}, chance_loss=CHANCE_4, tags=(REAL,))
def _rnn_vanishing(seed: int) -> Run:
    """A vanilla tanh nn.RNN (64 units) on the first-step task with T = 100, recurrent weights
    orthogonal x 0.5, Adam lr 1e-3, 150 steps. Measured: the largest |dL/dx| at the first
    time step is 4.9e-34 against 2.3e-3 at the last (its norm computes as 0: the square
    underflows); the loss stays at chance (1.39 throughout, 1.39 over the last 15 steps,
    chance 1.39). With gain 1.0 the same run learns (1.26 at step 150)."""
    model = FirstStepRNN(0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Run(model, optimizer, first_step_sequences(150, seed=seed), cross_entropy, steps=150)


def _postln(seed: int, warmup_steps: int) -> Run:
    model = EncoderLM(6, norm_first=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    scheduler = warmup(optimizer, warmup_steps) if warmup_steps else None
    return Run(model, optimizer, markov_copy_lm(64, seed=seed), cross_entropy, scheduler, steps=120)


@register(
    "postln_transformer_no_warmup", {"not_learning"}, chance_loss=CHANCE_LM, tags=(REAL, "slow")
)
def _postln_no_warmup(seed: int) -> Run:
    """A 6-layer post-norm transformer LM (nn.TransformerEncoderLayer, norm_first=False, width 64,
    dropout 0.1), Adam lr 1e-2 betas (0.9, 0.98) without warmup, 120 steps: stuck near
    chance, while ``postln_transformer_warmup`` learns. Measured: 4.83 at step 30, 4.78 at
    60, 4.76 over the last 12 steps (seed 1: 4.71; chance 4.85) while the largest attention
    logit drifts from 5.7 to 23; lr 7e-3 also sticks (4.77), lr 5e-3 and below learn, and so
    does the same at 4 layers."""
    return _postln(seed, warmup_steps=0)


@register(
    "preln_transformer_adam_lr_0.1",
    {"attention_logits", "update_size", "exploding"},
    chance_loss=CHANCE_LM,
    tags=(REAL,),
)
def _preln_high_lr(seed: int) -> Run:
    """A 2-layer pre-norm transformer LM (nn.TransformerEncoderLayer, norm_first=True, width 64, no
    dropout), Adam lr 0.1, 150 steps. Measured: the largest attention logit q.k/sqrt(d)
    grows from 2.6 to 141 by step 7, 1.7e3 by 37, 1.1e4 by 75 and 5.6e4 by 150 (attention
    collapses onto single tokens) while the loss barely moves (5.05 -> 4.61 at step 75, 4.48
    over the last 15; chance 4.85). At lr 1e-3 it stays below 5."""
    model = EncoderLM(2, norm_first=True, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    return Run(model, optimizer, markov_copy_lm(64, seed=seed), cross_entropy, steps=150)


def _qknorm_gpt(seed: int, final_norm: bool) -> Run:
    model = QKNormGPT(final_norm=final_norm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    return Run(
        model,
        optimizer,
        markov_copy_lm(64, seed=seed),
        cross_entropy,
        warmup(optimizer, 60),
        steps=100,
    )


@register(
    "gpt_no_final_norm_output_logits",
    # output_logits names the cause; the loss and gradient spikes that come first are the
    # symptoms a user sees before the divergence, so they count as fitting too.
    {"output_logits", "loss_spike", "grad_spike"},
    chance_loss=CHANCE_LM,
    develops=True,
    tags=(REAL,),
)
def _gpt_no_final_norm(seed: int) -> Run:
    """A 2-layer pre-norm GPT with QK-norm (so attention logits stay bounded) but no final
    LayerNorm before the head, AdamW (no weight decay) warmed up over 60 steps to lr 0.1,
    100 steps. It learns (5.3 -> 2.7 by step 30), then, as the learning rate climbs, the
    output logits run away and the loss diverges. Measured: loss 2.90 at step 25, 2.86 at
    50, above 3x its start from step 66, 421 at 75; the largest |logit| 12.7 at step 25,
    15.7 at 50, 19 at 60, 30 at 63, 50 at 66, 609 at 75 (seed 1: 20 at 57, 30 at 60, 110 at
    63; loss 10.5 at 60, 74 at 63)."""
    return _qknorm_gpt(seed, final_norm=False)
