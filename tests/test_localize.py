"""NaN/inf localisation names the module that produced the value, not its followers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._measure import localize as _localize

from .helpers import regression_batches


class Log(nn.Module):
    """A parameter-free module that produces NaN for negative inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class Scale(nn.Module):
    """Multiplies by a constant: huge but finite outputs for a float64 model."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Norm(nn.Module):
    """Row norms: finite forward at a zero row, NaN gradient there (0/0 in backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((x * x).sum(dim=1, keepdim=True))


class FunctionalLog(nn.Module):
    """Produces NaN in its own forward code, between two submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(16, 16)
        self.after = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(torch.log(self.inner(x)))


def _model(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), middle, nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))


def _log_of_negatives(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A loss that is NaN whatever the model does: the forward pass stays finite."""
    return (torch.log(prediction - 1e6) - target).square().mean()


def _nonfinite_alerts(model, batches, loss_fn=nn.functional.mse_loss, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, locate_nonfinite=True, **options) as gw:
        for x, y in batches:
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    return [a for a in gw.alerts if a.kind == "nonfinite"], gw


def test_middle_module_producing_nan_is_named_not_the_layers_after_it() -> None:
    alerts, gw = _nonfinite_alerts(_model(Log()), regression_batches(2))
    assert alerts, gw.alerts
    alert = alerts[0]
    assert alert.step == 0 and alert.layer == "1"  # Log, not "2" or "4"
    assert "'1' (Log)" in alert.message and "forward" in alert.message
    assert gw.history.latest.nonfinite_origin.phase == "forward"


def test_without_locate_nonfinite_the_first_affected_layer_is_named() -> None:
    optimizer_model = _model(Log())
    optimizer = torch.optim.SGD(optimizer_model.parameters(), lr=0.01)
    with gradwatch.watch(optimizer_model, optimizer) as gw:
        x, y = regression_batches(1)[0]
        nn.functional.mse_loss(optimizer_model(x), y).backward()
        optimizer.step()
    alert = next(a for a in gw.alerts if a.kind == "nonfinite")
    assert alert.layer == "0"  # depth order of gradients: the core's fallback
    assert gw.history.latest.nonfinite_origin is None


@pytest.mark.parametrize("bad_step", [0, 2])
def test_nan_input_is_blamed_on_the_data(bad_step: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    batches = regression_batches(4)
    x, y = batches[bad_step]
    x = x.clone()
    x[3, 2] = float("nan")
    batches[bad_step] = (x, y)
    alerts, _ = _nonfinite_alerts(model, batches)
    assert alerts and alerts[0].step == bad_step
    assert alerts[0].layer is None
    assert "input" in alerts[0].message and "data" in alerts[0].message


def test_functional_op_inside_a_module_names_that_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), FunctionalLog(), nn.Linear(16, 1))
    alerts, _ = _nonfinite_alerts(model, regression_batches(1))
    assert alerts[0].layer == "1"  # FunctionalLog's own code, before it called '1.after'
    assert "'1.after'" in alerts[0].message


def test_backward_only_nonfinite_is_named_in_the_backward_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), Norm(), nn.Linear(1, 1))
    x, y = regression_batches(1)[0]
    x[0] = 0.0  # a zero row: the norm is 0 there
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()  # the forward is finite ...
    alerts, gw = _nonfinite_alerts(model, [(x, y)])
    assert alerts, gw.alerts  # ... the gradient is not: d|x|/dx = x/|x| = 0/0
    assert alerts[0].layer == "1" and "backward" in alerts[0].message


def test_loss_producing_nan_is_blamed_on_the_loss() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def log_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.log(prediction) - target).square().mean()  # log of negatives

    alerts, _ = _nonfinite_alerts(model, regression_batches(1), loss_fn=log_loss)
    assert alerts and alerts[0].layer is None and "loss" in alerts[0].message


def test_raise_policy_names_the_producer() -> None:
    model = _model(Log())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = regression_batches(1)[0]
    with gradwatch.watch(model, optimizer, locate_nonfinite=True, on_nonfinite="raise"):
        nn.functional.mse_loss(model(x), y).backward()
        with pytest.raises(gradwatch.NonFiniteError) as info:
            optimizer.step()
    assert info.value.layer == "1"


def test_finite_steps_have_no_origin_and_validation_is_ignored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Softplus(), Log(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    poison = torch.full((4, 8), float("nan"))
    with gradwatch.watch(model, optimizer, locate_nonfinite=True) as gw:
        for x, y in regression_batches(3):
            nn.functional.mse_loss(model(x), y).backward()
            with torch.no_grad():
                model(poison)  # a validation forward full of NaN: not traced
            optimizer.step()
            optimizer.zero_grad()
    assert not gw.alerts
    assert all(record.nonfinite_origin is None for record in gw.history)


class HalfBig(nn.Module):
    """Large but finite float16 outputs: their sum overflows float16 (above 65504)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 0 + 60000.0).half()


class ShiftedLog(nn.Module):
    """Back to float32, then NaN: log of a negative number."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.float() - 70000.0)


def test_large_finite_half_precision_values_are_not_mistaken_for_the_producer() -> None:
    """512 float16 values of 60000 are finite (their float16 sum would overflow and
    wrongly name ``HalfBig``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), HalfBig(), ShiftedLog(), nn.Linear(16, 1))
    alerts, gw = _nonfinite_alerts(model, regression_batches(1))
    assert alerts and alerts[0].layer == "2", gw.alerts  # ShiftedLog, not HalfBig ("1")
    assert "'2' (ShiftedLog)" in alerts[0].message


class MaskedMix(nn.Module):
    """Takes an additive attention mask as a keyword, as Hugging Face layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        scores = (x @ x.T + mask).softmax(dim=-1)
        return self.proj(scores @ x)


class MaskedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.mix = MaskedMix()
        self.log = Log()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # finfo.min above the diagonal: finite, but their float32 sum overflows to -inf
        mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
        return self.head(self.log(self.mix(self.embed(x), mask=mask)))


def test_a_finite_mask_of_finfo_min_is_not_blamed() -> None:
    """A mask filled with ``finfo(dtype).min`` is finite: the producer is ``log``."""
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(MaskedModel(), regression_batches(1))
    assert alerts and alerts[0].layer == "log", gw.alerts


class MaskBuilder(nn.Module):
    def forward(self, n: int) -> torch.Tensor:
        return torch.full((n, n), float("-inf")).triu(1)


class CausalAttention(nn.Module):
    """Self-attention with the additive ``-inf`` causal mask that ``nn.Transformer``
    builds (inline, in a submodule, or in a submodule under ``no_grad``), then a NaN
    from ``log``; ``fully_mask_row`` leaves one query nothing to attend to instead."""

    def __init__(self, *, builder: str = "inline", fully_mask_row: int | None = None):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mask_builder = MaskBuilder() if builder != "inline" else None
        self.builder = builder
        self.log = Log() if fully_mask_row is None else nn.Identity()
        self.head = nn.Linear(16, 1)
        self.fully_mask_row = fully_mask_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.mask_builder is None:
            mask = nn.Transformer.generate_square_subsequent_mask(n)
        elif self.builder == "no_grad":
            with torch.no_grad():
                mask = self.mask_builder(n)
        else:
            mask = self.mask_builder(n)
        if self.fully_mask_row is not None:
            mask[self.fully_mask_row] = float("-inf")  # this query may attend to nothing
        h = self.embed(x).unsqueeze(0)
        # need_weights=True takes the plain softmax path, which gives NaN for a fully
        # masked row (the fused kernel gives zeros)
        mixed, _ = self.attn(h, h, h, attn_mask=mask, need_weights=True)
        return self.head(self.log(mixed.squeeze(0)))


@pytest.mark.parametrize("builder", ["inline", "no_grad"])
def test_an_absorbed_minus_inf_attention_mask_is_not_blamed(builder: str) -> None:
    """The softmax turns the mask's -inf into zeros: the NaN comes from ``log``. A mask
    built by a submodule under ``no_grad`` is not part of the step's record at all."""
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(CausalAttention(builder=builder), regression_batches(1))
    assert alerts and alerts[0].layer == "log", gw.alerts
    assert "'log' (Log)" in alerts[0].message
    assert "mask" not in alerts[0].message


def test_a_mask_built_by_a_submodule_is_named_with_the_next_producer() -> None:
    """-inf made by a module may be a mask or log(0): the module is named (never hidden),
    and the alert gives the producer that comes next for the case that it is a mask."""
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(CausalAttention(builder="module"), regression_batches(1))
    assert alerts and alerts[0].layer == "mask_builder", gw.alerts
    message = alerts[0].message
    assert "which an intentional additive mask also holds" in message
    assert "look at what came next" in message and "'log' (Log)" in message


def test_a_fully_masked_row_names_the_attention_that_made_the_nan() -> None:
    """One query row masked entirely: the attention's softmax makes NaN out of a mask
    that holds only -inf. The attention is named, the mask reading is stated."""
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(CausalAttention(fully_mask_row=3), regression_batches(1))
    assert alerts and alerts[0].layer == "attn", gw.alerts
    message = alerts[0].message
    assert "'attn' (MultiheadAttention)" in message
    assert "reached 'attn' earlier and was taken for an intentional mask" in message


class FullyMaskedRow(nn.Module):
    """The same with the softmax in a custom attention's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.mix = MaskedMix()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[0])
        mask[3] = float("-inf")
        return self.head(self.mix(self.embed(x), mask=mask))


def test_a_fully_masked_row_in_custom_attention_names_its_forward() -> None:
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(FullyMaskedRow(), regression_batches(1))
    assert alerts and alerts[0].layer == "mix", gw.alerts
    message = alerts[0].message
    assert "inside the forward of 'mix' (MaskedMix)" in message
    assert "before it called 'mix.proj'" in message
    assert "if it is not one: The first non-finite value was produced inside the forward" in (
        message
    )  # the other reading: the root's own code made the -inf


class LogOfRelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.relu(x))


class Gated(nn.Module):
    """log(0) = -inf goes both into a Sigmoid module (which absorbs it) and into the
    forward's own code (-inf * 0 = NaN): the module that made the -inf is the producer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.log = LogOfRelu()
        self.gate = nn.Sigmoid()
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.log(self.fc1(x))
        return self.fc2(h * self.gate(h))


def test_log_of_zero_is_named_even_when_a_module_absorbs_its_minus_inf() -> None:
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(Gated(), regression_batches(1))
    assert alerts and alerts[0].layer == "log", gw.alerts


class MaskedBlock(nn.Module):
    """Returns ``(x, mask)`` so that blocks chain in a Sequential: the mask passes through."""

    def __init__(self, log: bool) -> None:
        super().__init__()
        self.mix = MaskedMix()
        self.log = Log() if log else nn.Identity()

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, mask = inputs
        return self.log(self.mix(x, mask=mask)), mask


class PassThroughMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.Sequential(MaskedBlock(log=False), MaskedBlock(log=True))
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[0])
        h, _ = self.blocks((self.embed(x), mask))
        return self.head(h)


def test_a_mask_passed_through_blocks_is_not_blamed() -> None:
    """A block that returns the mask it was given made nothing non-finite."""
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(PassThroughMask(), regression_batches(1))
    assert alerts and alerts[0].layer == "blocks.1.log", gw.alerts


def test_an_identity_module_is_not_blamed_for_a_nan_gradient_passing_through() -> None:
    """nn.Identity returns its input: one tensor, the gradient of both its output and
    its input. The gradient reached its output first, so it produced nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Identity(), nn.Linear(16, 1))

    alerts, gw = _nonfinite_alerts(model, regression_batches(1), loss_fn=_log_of_negatives)
    assert alerts and alerts[0].layer is None and "the loss" in alerts[0].message, gw.alerts


def test_a_mask_passed_through_blocks_is_not_blamed_for_a_loss_nan() -> None:
    """With nothing else non-finite in the forward pass, the mask that the blocks pass
    along is still nobody's fault: the NaN is the loss's."""
    torch.manual_seed(0)

    model = PassThroughMask()
    model.blocks[1].log = nn.Identity()
    alerts, gw = _nonfinite_alerts(model, regression_batches(1), loss_fn=_log_of_negatives)
    assert alerts and alerts[0].layer is None, gw.alerts
    assert "the loss" in alerts[0].message and "mask" not in alerts[0].message


class ExpOverflow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.exp(self.a(x) * 100))


def test_plus_inf_from_an_overflow_is_not_read_as_a_mask() -> None:
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(ExpOverflow(), regression_batches(1))
    assert alerts and alerts[0].layer == "", gw.alerts
    assert "before it called 'b'" in alerts[0].message
    assert "mask" not in alerts[0].message


class Encoder(nn.Module):
    """nn.TransformerEncoder with bool causal and key-padding masks, which the encoder
    turns into two -inf masks in its own code; its feed-forward activation is a ``Log``
    module (NaN for the negative half of its inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation=Log())
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).view(8, 4, 16)  # (sequence, batch, features)
        causal = torch.ones(8, 8, dtype=torch.bool).triu(1)
        padding = torch.zeros(4, 8, dtype=torch.bool)
        padding[1, -2:] = True
        out = self.enc(h, mask=causal, src_key_padding_mask=padding)
        return self.head(out.reshape(32, 16))


def test_two_masks_in_a_transformer_encoder_do_not_hide_the_producer() -> None:
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(Encoder(), regression_batches(1))
    assert alerts and alerts[0].layer == "enc.layers.0.activation", gw.alerts
    assert "taken for an intentional mask" in alerts[0].message


class Scores(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return q @ k.T + mask


class ExpandMask(nn.Module):
    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return mask[None].expand(2, -1, -1).reshape(-1, mask.shape[-1])[: mask.shape[0]]


class MaskCarriers(nn.Module):
    """Submodules that carry a mask on: one adds it to the scores, one reshapes it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.prepare = ExpandMask()
        self.scores = Scores()
        self.softmax = nn.Softmax(dim=-1)
        self.log = Log()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        mask = self.prepare(nn.Transformer.generate_square_subsequent_mask(x.shape[0]))
        return self.head(self.log(self.softmax(self.scores(h, h, mask)) @ h))


def test_modules_that_carry_a_mask_on_are_not_blamed() -> None:
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(MaskCarriers(), regression_batches(1))
    assert alerts and alerts[0].layer == "log", gw.alerts


class Checkpointed(nn.Module):
    """Blocks under non-reentrant activation checkpointing: their forward runs again
    during the backward pass, which must not be taken for new calls."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)) for _ in range(2)
        )
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return self.head(x)


def test_recomputation_under_activation_checkpointing_is_not_a_new_call() -> None:
    torch.manual_seed(0)

    batches = regression_batches(1)
    alerts, gw = _nonfinite_alerts(Checkpointed(), batches, loss_fn=_log_of_negatives)
    assert alerts and alerts[0].layer is None and "the loss" in alerts[0].message, gw.alerts


def test_minus_inf_in_the_batch_is_blamed_on_the_data() -> None:
    """-inf as the data itself (not riding along with it, as a mask does) is a fault."""
    batches = regression_batches(1)
    batches[0][0][3, 2] = float("-inf")
    alerts, gw = _nonfinite_alerts(_model(nn.Identity()), batches)
    assert alerts and alerts[0].layer is None, gw.alerts
    assert "the data did" in alerts[0].message


def test_accumulated_micro_batches_are_all_recorded() -> None:
    """Forward calls are ignored only while a backward pass runs (checkpoint
    recomputation): the forward of the next micro-batch after a backward still counts."""
    torch.manual_seed(0)
    model = _model(Log())
    finite, poisoned = regression_batches(2)
    finite = (torch.full_like(finite[0], 5.0), finite[1])  # Log stays finite on this one
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(1.0)
    with gradwatch.watch(model, optimizer, locate_nonfinite=True) as gw:
        for x, y in (finite, (poisoned[0] * -100.0, poisoned[1])):
            nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    alerts = [a for a in gw.alerts if a.kind == "nonfinite"]
    assert alerts and alerts[0].layer == "1", gw.alerts


def test_each_checked_tensor_keeps_its_min_and_max() -> None:
    """NaN shows in both slots, a -inf mask in the min only, and a finfo.min mask (whose
    sum would overflow) stays finite; a conjugate view is checked without an error."""
    locator = _localize.NonfiniteLocator(nn.Identity())
    mask, nan = torch.zeros(64, 64), torch.zeros(64, 64)
    nan[3, 5], mask[3:, :] = math.nan, -math.inf
    finfo_min = torch.full((64, 64), torch.finfo(torch.float32).min)
    conj = torch.randn(8, dtype=torch.complex64).conj()
    slots = [locator._slots(t) for t in (finfo_min, mask, nan, conj)]
    values = _localize._stack_float32(locator._values).numpy()
    (o_low, o_high), (m_low, m_high), (n_low, n_high), (c_low, c_high) = slots
    assert values[o_low] == values[o_high] == torch.finfo(torch.float32).min
    assert values[m_low] == -math.inf and values[m_high] == 0.0
    assert np.isnan(values[[n_low, n_high]]).all()
    assert np.isfinite(values[[c_low, c_high]]).all()


def test_checks_on_several_devices_and_dtypes_are_gathered_on_the_accelerator() -> None:
    """The step's vector lives on the non-CPU device (``meta`` stands in for one here),
    with every dtype group in its slots."""
    values = [
        torch.tensor(0.0),
        torch.tensor(1e300, dtype=torch.float64),
        torch.tensor(-math.inf, dtype=torch.float16),
        torch.tensor(2.0, device="meta"),
    ]
    stacked = _localize._stack_float32(values)
    assert stacked.device.type == "meta" and stacked.dtype == torch.float32
    assert stacked.shape == (4,)
    on_cpu = _localize._stack_float32(values[:3]).numpy()
    assert on_cpu[0] == 0.0 and np.isfinite(on_cpu[1]) and on_cpu[2] == -math.inf


def test_float64_values_beyond_float32_range_are_not_mistaken_for_inf() -> None:
    """A float64 model's finite 1e300 stays finite in the float32 record of the step."""
    torch.manual_seed(0)
    model = nn.Sequential(Scale(1e300), nn.Linear(8, 8), Log(), nn.Linear(8, 1)).double()
    x, y = torch.rand(16, 8, dtype=torch.float64) + 0.5, torch.zeros(16, 1, dtype=torch.float64)
    model[1].bias.data.fill_(-1e305)  # log of a negative: the NaN comes from "2"
    alerts, _ = _nonfinite_alerts(model, [(x, y)])
    assert alerts and alerts[0].layer == "2", alerts


# ----------------------------- real GPT-2 and language-model calls (issue 20 item 10)


def _gpt2(n_layer: int = 2) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=n_layer, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0
    )
    config.eos_token_id = 0
    return transformers.GPT2LMHeadModel(config)


def _gpt2_nonfinite_alert(model: nn.Module, after_watch=None):
    """One step of ``model`` on token ids, localised; the first nonfinite alert."""
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, locate_nonfinite=True, activation_every=0) as gw:
        if after_watch is not None:
            after_watch(model)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    return next(a for a in gw.alerts if a.kind == "nonfinite")


def _sqrt_at_zero_in_forward(module: nn.Module) -> None:
    """A real backward-only fault inside ``module``'s own forward: ``sqrt(x * 0)`` adds
    nothing forward, and its gradient is ``0 * inf = NaN`` (a custom layer's sqrt of a
    norm that can be 0)."""
    original = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        return original(x + torch.sqrt(x * 0))

    module.forward = forward


@pytest.mark.parametrize(
    ("child", "parent"),
    [("transformer.h.0.mlp.c_fc", "GPT2MLP"), ("transformer.h.1.attn.c_attn", "GPT2Attention")],
)
def test_a_backward_nan_in_a_child_given_its_parents_input_names_the_child(child, parent):
    model = _gpt2()
    module = model.get_submodule(child)
    parent_name = child.rsplit(".", 1)[0]
    assert type(model.get_submodule(parent_name)).__name__ == parent
    _sqrt_at_zero_in_forward(module)
    alert = _gpt2_nonfinite_alert(model)
    assert alert.layer == child, alert.message  # not the parent handing it its input
    assert "backward" in alert.message


class CausalLM(nn.Module):
    """The standard language-model call: ``model(ids, attn_mask=mask)`` with an additive
    causal mask of -inf above the diagonal next to integer token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 40)

    def forward(self, ids: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids), src_mask=attn_mask))


def _causal_lm_alert(model: CausalLM):
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = nn.Transformer.generate_square_subsequent_mask(10)
    assert mask.isneginf().any()  # -inf above the diagonal, 0 elsewhere
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, locate_nonfinite=True, activation_every=0) as gw:
        logits = model(ids, attn_mask=mask)
        nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
        optimizer.step()
    return next(a for a in gw.alerts if a.kind == "nonfinite")


def test_a_minus_inf_mask_next_to_integer_ids_is_not_blamed_on_the_data() -> None:
    torch.manual_seed(0)
    model = CausalLM()
    with torch.no_grad():
        model.head.weight.fill_(3e38)  # a real overflow: the logits are inf
    alert = _causal_lm_alert(model)
    assert alert.layer == "head", alert.message
    # The finding is the head; the mask is named only as the other reading of a -inf.
    finding = alert.message.index("produced in the forward pass by 'head' (Linear)")
    assert finding < alert.message.find("taken for an intentional mask")


def test_a_minus_inf_mask_next_to_integer_ids_with_a_loss_fault_names_the_loss() -> None:
    torch.manual_seed(0)
    model = CausalLM()
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = nn.Transformer.generate_square_subsequent_mask(10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, locate_nonfinite=True, activation_every=0) as gw:
        logits = model(ids, attn_mask=mask)
        torch.log(logits.softmax(-1) * 0).mean().neg().backward()  # log(0): the loss's fault
        optimizer.step()
    alert = next(a for a in gw.alerts if a.kind == "nonfinite")
    assert alert.layer is None and "loss" in alert.message, alert.message


def test_a_nan_made_by_a_forward_hook_registered_after_watch_names_its_module() -> None:
    def rescale_by_zero(module, args, output):  # a steering hook dividing by a 0 norm
        return output / (output.norm(dim=-1, keepdim=True) * 0)

    alert = _gpt2_nonfinite_alert(
        _gpt2(),
        after_watch=lambda m: m.transformer.h[0].mlp.register_forward_hook(rescale_by_zero),
    )
    assert alert.layer == "transformer.h.0.mlp", alert.message  # not the enclosing block
    assert "forward" in alert.message


class SqrtAbs(nn.Module):
    """sqrt(|x|): finite forward at 0, NaN gradient there (0 * inf in backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.abs())


class Residual(nn.Module):
    """x + inner(x): the addition hands its output's gradient, the same tensor, to the
    inner module's output too."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def _residual_model(inner: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16, bias=False), Residual(inner), nn.Linear(16, 1))


def _one_traced_step(model: nn.Module, x: torch.Tensor) -> _localize.StepTrace:
    locator = _localize.NonfiniteLocator(model)
    try:
        model(x).square().mean().backward()
        trace = locator.take()
    finally:
        locator.remove()
    assert trace is not None and trace.values is not None
    return trace


def _gradient_slots(trace: _localize.StepTrace, name: str) -> tuple[int, ...]:
    """The slots of the gradient reaching the output of the call of module ``name``."""
    return next(
        event.slots
        for event in trace.events
        if event.kind == _localize._Kind.GOUT and trace.calls[event.call].name == name
    )


def test_a_gradient_shared_through_a_residual_is_checked_once_and_its_producer_named() -> None:
    """The residual's output and its branch get one gradient tensor: checked once (both
    events read the same slots), and the branch that made the NaN is still named."""
    model = _residual_model(SqrtAbs())
    x, y = regression_batches(1)[0]
    x[0] = 0.0  # the branch sees a zero row: sqrt's gradient is NaN there
    trace = _one_traced_step(model, x)
    assert _gradient_slots(trace, "1") == _gradient_slots(trace, "1.inner")
    alerts, gw = _nonfinite_alerts(_residual_model(SqrtAbs()), [(x, y)])
    assert alerts and alerts[0].layer == "1.inner", gw.alerts
    assert "backward" in alerts[0].message


class PoisonsItsOutputGradient(nn.Module):
    """Its forward puts a hook on its output that writes NaN into the gradient in place
    (before gradwatch's hook on that tensor runs, which is added after the forward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * 2.0
        out.register_hook(lambda grad: grad.fill_(math.nan))
        return out


def test_a_gradient_changed_in_place_after_its_check_is_checked_again() -> None:
    """The shared gradient was finite when the residual's output was checked; changed in
    place before the branch's check, it is checked again there, as it then is."""
    trace = _one_traced_step(_residual_model(PoisonsItsOutputGradient()), torch.ones(4, 8))
    values = trace.values.numpy()
    outer, inner = _gradient_slots(trace, "1"), _gradient_slots(trace, "1.inner")
    assert np.isfinite(values[list(outer)]).all()
    assert np.isnan(values[list(inner)]).all()


def test_a_failing_check_never_breaks_the_forward_or_backward(caplog) -> None:
    """A failure inside a localisation hook (forward or gradient) is logged once and
    swallowed: the user's training step goes on."""
    model = _model(nn.Identity())
    locator = _localize.NonfiniteLocator(model)

    def fail(*args: object) -> None:
        raise RuntimeError("injected")

    locator._grad = fail  # type: ignore[method-assign]
    x, _ = regression_batches(1)[0]
    with caplog.at_level("WARNING", logger="gradwatch"):
        model(x).sum().backward()
        locator._slots = fail  # type: ignore[method-assign]
        model(x).sum().backward()
    locator.remove()
    assert all(p.grad is not None for p in model.parameters())
    failed = [r.getMessage() for r in caplog.records if "failed and was skipped" in r.getMessage()]
    assert any("NonfiniteLocator._grad" in m for m in failed), failed
    assert any("NonfiniteLocator._before" in m for m in failed), failed
