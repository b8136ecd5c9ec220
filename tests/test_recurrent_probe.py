"""RecurrentProbe: the input gradient's norm at the first and last time step of RNNs."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from gradwatch._measure.recurrent import RecurrentProbe


def _input_grad_norms(rnn: nn.Module, x: torch.Tensor, time_dim: int) -> tuple[float, float]:
    """Brute force: the gradient of the same loss with respect to a copy of the input."""
    leaf = x.detach().clone().requires_grad_()
    out, _ = rnn(leaf)
    (out.select(time_dim, -1).pow(2).sum()).backward()
    assert leaf.grad is not None
    grad = leaf.grad
    return grad.select(time_dim, 0).norm().item(), grad.select(time_dim, -1).norm().item()


def _tanh_rnn(gain: float) -> nn.RNN:
    torch.manual_seed(0)
    rnn = nn.RNN(4, 32, nonlinearity="tanh")
    with torch.no_grad():
        nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_hh_l0.mul_(gain)
        # Small inputs and no bias: tanh stays in its linear range, where an orthogonal
        # recurrence preserves norms and one scaled by 0.5 halves them at every step.
        rnn.weight_ih_l0.mul_(0.1)
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def _first_and_last(rnn: nn.Module, x: torch.Tensor, time_dim: int) -> tuple[int, float, float]:
    probe = RecurrentProbe(rnn)
    probe.arm()
    out, _ = rnn(x)
    out.select(time_dim, -1).pow(2).sum().backward()
    sample = probe.collect()
    assert sample is not None and sample.modules == ("",)
    return sample.steps[0], sample.first[0].item(), sample.last[0].item()


def test_a_contracting_recurrence_vanishes_through_time_and_an_orthogonal_one_does_not() -> None:
    x = torch.randn(50, 3, 4)
    steps, first, last = _first_and_last(_tanh_rnn(0.5), x, 0)
    assert steps == 50
    assert first / last < 1e-6  # about 0.5^49
    steps, first, last = _first_and_last(_tanh_rnn(1.0), x, 0)
    assert first / last > 0.3


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_and_gru_values_equal_autograd_along_the_right_axis(
    kind: type[nn.RNNBase], batch_first: bool
) -> None:
    torch.manual_seed(1)
    rnn = kind(5, 8, num_layers=2, batch_first=batch_first)
    x = torch.randn(3, 7, 5) if batch_first else torch.randn(7, 3, 5)
    time_dim = 1 if batch_first else 0
    steps, first, last = _first_and_last(rnn, x, time_dim)
    assert steps == 7
    expected = _input_grad_norms(rnn, x, time_dim)
    assert (first, last) == pytest.approx(expected, rel=1e-5)


def test_unbatched_input_and_input_passed_by_keyword() -> None:
    torch.manual_seed(2)
    rnn = nn.GRU(3, 6, batch_first=True)  # batch_first does not apply to (T, F) inputs
    x = torch.randn(9, 3)
    probe = RecurrentProbe(rnn)
    probe.arm()
    out, _ = rnn(input=x)
    out[-1].pow(2).sum().backward()
    sample = probe.collect()
    assert sample is not None and sample.steps == (9,)
    expected = _input_grad_norms(rnn, x, 0)
    assert (sample.first[0].item(), sample.last[0].item()) == pytest.approx(expected, rel=1e-5)


class _Tagger(nn.Module):
    """Embedding -> LSTM (its input already requires grad) -> GRU over data -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, num_layers=2, dropout=0.3, batch_first=True)
        self.gru = nn.GRU(2, 8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        a, _ = self.lstm(self.embed(ids))
        b, _ = self.gru(extra)
        return self.head(self.drop(torch.cat([a[:, -1], b[-1]], dim=-1)))


def _train(model: _Tagger, probe: RecurrentProbe | None, steps: int = 4) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(11)  # the dropout stream
    losses = []
    for step in range(steps):
        ids = torch.randint(0, 20, (4, 6), generator=generator)
        extra = torch.randn(5, 4, 2, generator=generator)
        y = torch.randint(0, 3, (4,), generator=generator)
        if probe is not None and step % 2 == 0:
            probe.arm()
        loss = nn.functional.cross_entropy(model(ids, extra), y)
        optimizer.zero_grad()
        loss.backward()
        if probe is not None and probe.armed:
            sample = probe.collect()
            assert sample is not None and sample.modules == ("lstm", "gru")
            assert sample.steps == (6, 5)
            assert not torch.isnan(sample.first).any() and not torch.isnan(sample.last).any()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_with_dropout_is_bit_identical_to_an_unwatched_run() -> None:
    torch.manual_seed(3)
    plain = _Tagger()
    torch.manual_seed(3)
    watched = _Tagger()
    assert _train(plain, None) == _train(watched, RecurrentProbe(watched))
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


def test_hooks_exist_only_while_armed_and_nothing_is_left_on_tensors() -> None:
    model = _Tagger()
    probe = RecurrentProbe(model)
    assert probe.targets == ("lstm", "gru")
    assert not model.lstm._forward_pre_hooks
    probe.arm()
    probe.arm()  # idempotent
    assert len(model.lstm._forward_pre_hooks) == 1
    ids, extra = torch.randint(0, 20, (2, 3)), torch.randn(4, 2, 2)
    embedded = model.embed(ids)
    model.lstm(embedded)
    model.gru(extra)
    assert embedded._backward_hooks  # the input that required grad got a tensor hook
    sample = probe.collect()
    assert not model.lstm._forward_pre_hooks and not embedded._backward_hooks
    # Collected before any backward: known lengths, unknown gradients.
    assert sample is not None and sample.steps == (3, 4)
    assert torch.isnan(sample.first).all() and torch.isnan(sample.last).all()
    assert probe.collect() is None  # not armed: nothing ran


def test_packed_sequences_eval_and_no_grad_forwards_are_skipped() -> None:
    rnn = nn.LSTM(3, 4)
    probe = RecurrentProbe(rnn)
    probe.arm()
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    rnn(packed)
    with torch.no_grad():
        rnn(torch.randn(5, 2, 3))
    rnn.eval()
    rnn(torch.randn(5, 2, 3))
    assert probe.collect() is None
    counting = RecurrentProbe(rnn, include_eval=True)
    counting.arm()
    out, _ = rnn(torch.randn(5, 2, 3))
    out.sum().backward()
    sample = counting.collect()
    assert sample is not None and math.isfinite(sample.first[0].item())


def test_the_probe_does_not_keep_the_model_alive() -> None:
    model = _Tagger()
    probe = RecurrentProbe(model)
    probe.arm()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert probe.collect() is None
