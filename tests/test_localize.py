"""NaN/inf localisation names the module that produced the value, not its followers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import regression_batches


class Log(nn.Module):
    """A parameter-free module that produces NaN for negative inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


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


class CausalAttention(nn.Module):
    """Self-attention with the additive ``-inf`` causal mask that ``nn.Transformer``
    builds; ``mask_builder`` optionally builds the mask in a submodule instead."""

    def __init__(self, *, fully_mask_row: int | None = None, in_submodule: bool = False):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mask_builder = MaskBuilder() if in_submodule else None
        self.log = Log()
        self.head = nn.Linear(16, 1)
        self.fully_mask_row = fully_mask_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.mask_builder is not None:
            mask = self.mask_builder(n)
        else:
            mask = nn.Transformer.generate_square_subsequent_mask(n)
        if self.fully_mask_row is not None:
            mask[self.fully_mask_row] = float("-inf")  # this query may attend to nothing
        h = self.embed(x).unsqueeze(0)
        mixed, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        return self.head(self.log(mixed.squeeze(0)))


class MaskBuilder(nn.Module):
    def forward(self, n: int) -> torch.Tensor:
        return torch.full((n, n), float("-inf")).triu(1)


@pytest.mark.parametrize("in_submodule", [False, True], ids=["inline", "submodule"])
def test_an_absorbed_minus_inf_attention_mask_is_not_blamed(in_submodule: bool) -> None:
    """The softmax turns the mask's -inf into zeros: the NaN comes from ``log``."""
    torch.manual_seed(0)
    model = CausalAttention(in_submodule=in_submodule)
    alerts, gw = _nonfinite_alerts(model, regression_batches(1))
    assert alerts and alerts[0].layer == "log", gw.alerts
    assert "'log' (Log)" in alerts[0].message


class FullyMaskedRow(nn.Module):
    """A causal ``-inf`` mask with one query row masked entirely: softmax gives NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.mix = MaskedMix()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[0])
        mask[3] = float("-inf")  # this query may attend to nothing
        return self.head(self.mix(self.embed(x), mask=mask))


def test_a_fully_masked_row_is_traced_to_the_mask_and_its_consumer() -> None:
    """The mask holds only -inf there (no NaN), and the consumer turned it into NaN: the
    message names where the mask was made and the call that did not absorb it."""
    torch.manual_seed(0)
    alerts, gw = _nonfinite_alerts(FullyMaskedRow(), regression_batches(1))
    assert alerts, gw.alerts
    message = alerts[0].message
    assert alerts[0].layer == ""  # the mask was built in the root module's own forward
    assert "before it called 'mix'" in message
    assert "-inf mask, 'mix' turned it into a non-finite output" in message
