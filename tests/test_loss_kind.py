"""chance_loss: ln C read from the loss's autograd graph, None for anything unrecognised."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch._measure.loss_kind import chance_loss


def _logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, requires_grad=True)


def test_cross_entropy_on_a_batch_of_vectors_is_ln_c() -> None:
    y = torch.randint(0, 7, (4,))
    assert chance_loss(F.cross_entropy(_logits(4, 7), y)) == pytest.approx(math.log(7))
    assert chance_loss(nn.CrossEntropyLoss()(_logits(4, 7), y)) == pytest.approx(math.log(7))
    assert chance_loss(F.nll_loss(F.log_softmax(_logits(4, 7), -1), y)) == pytest.approx(
        math.log(7)
    )


def test_class_dimension_is_1_from_rank_2_on_and_the_only_one_below() -> None:
    assert chance_loss(F.cross_entropy(_logits(2, 5, 9), torch.randint(0, 5, (2, 9)))) == (
        pytest.approx(math.log(5))
    )
    images = F.cross_entropy(_logits(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))
    assert chance_loss(images) == pytest.approx(math.log(3))
    assert chance_loss(F.cross_entropy(_logits(6), torch.tensor(2))) == pytest.approx(math.log(6))


def test_label_smoothing_ignore_index_weights_and_soft_targets_keep_ln_c() -> None:
    x, y = _logits(8, 10), torch.randint(0, 10, (8,))
    y[0] = -100
    c = math.log(10)
    assert chance_loss(F.cross_entropy(x, y, label_smoothing=0.1)) == pytest.approx(c)
    assert chance_loss(F.cross_entropy(x, y, ignore_index=-100)) == pytest.approx(c)
    assert chance_loss(F.cross_entropy(x, y, weight=torch.rand(10))) == pytest.approx(c)
    soft = torch.softmax(torch.randn(8, 10), -1)
    assert chance_loss(F.cross_entropy(x, soft)) == pytest.approx(c)
    assert chance_loss(F.cross_entropy(x, soft, label_smoothing=0.2)) == pytest.approx(c)
    # A per-sample loss averaged by hand, or a summed one divided by a token count.
    per_sample = F.cross_entropy(x, y.clamp_min(0), reduction="none")
    assert chance_loss(per_sample.mean()) == pytest.approx(c)
    assert chance_loss(F.cross_entropy(x, y, reduction="sum") / 7) == pytest.approx(c)


def test_binary_cross_entropy_is_ln_2() -> None:
    x, t = _logits(4, 3), torch.rand(4, 3)
    assert chance_loss(F.binary_cross_entropy_with_logits(x, t)) == pytest.approx(math.log(2))
    assert chance_loss(nn.BCEWithLogitsLoss()(x, t)) == pytest.approx(math.log(2))
    assert chance_loss(F.binary_cross_entropy(torch.sigmoid(x), t)) == pytest.approx(math.log(2))


def test_other_losses_give_none() -> None:
    x, y = _logits(4, 5), torch.randint(0, 5, (4,))
    assert chance_loss(F.mse_loss(x, torch.rand(4, 5))) is None
    assert chance_loss(F.l1_loss(x, torch.rand(4, 5))) is None
    assert chance_loss(x.pow(2).mean()) is None
    # Cross-entropy plus a weight penalty: its chance level is not ln C.
    w = torch.randn(5, requires_grad=True)
    assert chance_loss(F.cross_entropy(x, y) + 0.01 * w.pow(2).sum()) is None
    # A summed cross-entropy grows with the batch: no per-element chance level.
    assert chance_loss(F.cross_entropy(x, y, reduction="sum")) is None
    # NLL of log-probabilities that are not a log-softmax.
    assert chance_loss(F.nll_loss(torch.log(torch.sigmoid(x)), y)) is None
    # Knowledge distillation: a KL divergence.
    kl = F.kl_div(F.log_softmax(x, -1), torch.softmax(torch.randn(4, 5), -1), reduction="batchmean")
    assert chance_loss(kl) is None


def test_no_graph_or_a_freed_graph_gives_none_and_nothing_raises() -> None:
    assert chance_loss(torch.tensor(1.0)) is None
    assert chance_loss(object()) is None  # type: ignore[arg-type]
    loss = F.cross_entropy(_logits(4, 5), torch.randint(0, 5, (4,)))
    loss.backward()
    assert chance_loss(loss) is None  # saved tensors freed by backward


def test_hugging_face_losses() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=50,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    gpt2 = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50, (2, 8))
    assert chance_loss(gpt2(ids, labels=ids).loss) == pytest.approx(math.log(50))
    # The Trainer's path: a summed cross-entropy divided by the batch's token count.
    summed = gpt2(ids, labels=ids, num_items_in_batch=torch.tensor(14)).loss
    assert chance_loss(summed) == pytest.approx(math.log(50))
    bert_config = transformers.BertConfig(
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
        num_labels=3,
    )
    bert = transformers.BertForSequenceClassification(bert_config)
    assert chance_loss(bert(ids, labels=torch.tensor([0, 2])).loss) == pytest.approx(math.log(3))
