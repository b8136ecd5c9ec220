"""gradwatch.check(): a few real training steps under watch, turned into a Report."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import make_mlp, regression_batches


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def test_healthy_mlp_is_ok_and_trained_in_place() -> None:
    model = make_mlp(depth=3)
    before = copy.deepcopy(model.state_dict())
    report = gradwatch.check(model, regression_batches(4), mse, steps=12)
    assert report.ok, report.summary()
    assert report.steps == 12 and report.steps_requested == 12
    assert len(report.losses) == 12
    assert report.losses[-1] < report.losses[0]
    changed = [not torch.equal(before[k], v) for k, v in model.state_dict().items()]
    assert all(changed)
    assert [layer.name for layer in report.layers] == ["0", "2", "4", "6"]
    assert all(layer.final_grad_norm > 0 for layer in report.layers)
    assert all(layer.max_grad_norm >= layer.final_grad_norm for layer in report.layers)


def test_check_matches_a_hand_written_adam_loop() -> None:
    batches = regression_batches(3)
    checked, plain = make_mlp(seed=5), make_mlp(seed=5)
    report = gradwatch.check(checked, batches, mse, steps=7)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3)
    expected = []
    for step in range(7):
        x, y = batches[step % 3]
        optimizer.zero_grad()
        loss = mse(plain(x), y)
        loss.backward()
        optimizer.step()
        expected.append(loss.item())
    assert list(report.losses) == pytest.approx(expected, rel=0, abs=0)
    for a, b in zip(checked.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def test_summary_and_to_dict() -> None:
    report = gradwatch.check(make_mlp(), regression_batches(2), mse, steps=5)
    text = report.summary()
    assert text.startswith("gradwatch check: HEALTHY after 5 step(s)")
    assert "Per-layer norms" in text and "grad/weight" in text
    for layer in report.layers:
        assert layer.name in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["steps"] == 5
    assert len(data["losses"]) == 5
    assert {layer["name"] for layer in data["layers"]} == {"0", "2", "4", "6"}
    assert set(data["layers"][0]) >= {"final_grad_norm", "max_grad_norm", "final_weight_norm"}
    assert str(report) == text


def test_nonfinite_run_is_not_ok_and_report_stays_json_safe() -> None:
    model = make_mlp()
    x = torch.randn(16, 8)
    x[0, 0] = float("nan")
    report = gradwatch.check(model, [(x, torch.zeros(16, 1))], mse, steps=3)
    assert not report.ok
    assert any(a.kind == "nonfinite" and a.severity == "error" for a in report.alerts)
    assert "UNHEALTHY" in report.summary()
    assert "Try:" in report.summary()
    json.dumps(report.to_dict(), allow_nan=False)


def test_on_nonfinite_raise_stops_early_and_reports_it() -> None:
    model = make_mlp()
    x = torch.randn(16, 8)
    x[0, 0] = float("inf")
    report = gradwatch.check(model, [(x, torch.zeros(16, 1))], mse, steps=5, on_nonfinite="raise")
    assert not report.ok
    assert report.steps == 0 and report.stopped is not None
    assert "Stopped early" in report.summary()


def test_generator_data_is_cycled_and_given_optimizer_is_used() -> None:
    batches = regression_batches(2)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    report = gradwatch.check(model, (b for b in batches), mse, optimizer=optimizer, steps=5)
    assert report.steps == 5
    # batches 0,1,0,1,0: the same batch gives the same loss only once the weights moved
    assert report.losses[0] != report.losses[2]
    assert optimizer.state_dict()["param_groups"][0]["lr"] == 0.01


def test_dataloader_and_mode_restored() -> None:
    x = torch.randn(40, 8)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16
    )
    model = make_mlp().eval()
    report = gradwatch.check(model, loader, mse, steps=7)
    assert report.steps == 7
    assert not model.training


def test_baseline_measures_frozen_losses_without_changing_the_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    batches = regression_batches(3)
    frozen = copy.deepcopy(model)
    report = gradwatch.check(model, batches, mse, steps=6, baseline=True)
    assert report.baseline_losses is not None and len(report.baseline_losses) == 6
    # the first step's loss is measured before any update: it equals the baseline's
    assert report.losses[0] == pytest.approx(report.baseline_losses[0], rel=1e-6)
    # the baseline left BatchNorm's running statistics alone: a twin trained without the
    # baseline ends bit-identical
    gradwatch.check(frozen, batches, mse, steps=6)
    for a, b in zip(model.state_dict().values(), frozen.state_dict().values()):
        assert torch.equal(a, b)
    assert "baseline" in report.summary()
    assert len(report.to_dict()["baseline_losses"]) == 6


class _NotAModule:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": _NotAModule()}, TypeError, "model must be a torch.nn.Module"),
        ({"data": torch.randn(4, 8)}, TypeError, "data must be an iterable of"),
        ({"data": 3}, TypeError, "data must be an iterable of"),
        ({"data": []}, ValueError, "data yielded no batches"),
        ({"data": [torch.randn(4, 8)]}, TypeError, r"\(inputs, targets\) pairs"),
        ({"data": [(1, 2, 3)]}, TypeError, "length 3"),
        ({"loss_fn": "mse"}, TypeError, "loss_fn must be callable"),
        ({"loss_fn": lambda out, y: 1.0}, TypeError, "scalar torch.Tensor"),
        ({"loss_fn": lambda out, y: (out - y) ** 2}, ValueError, "reduction='mean'"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"baseline": "yes"}, TypeError, "baseline must be True or False"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
        ({"log_evry": 3}, TypeError, "Did you mean 'log_every'"),
        ({"history": 1}, ValueError, "history must be >= 2"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs, error, match) -> None:
    args = {"model": make_mlp(), "data": regression_batches(1), "loss_fn": mse, "steps": 2}
    args.update(kwargs)
    model, data, loss_fn = args.pop("model"), args.pop("data"), args.pop("loss_fn")
    with pytest.raises(error, match=match):
        gradwatch.check(model, data, loss_fn, **args)


def test_optimizer_of_another_model_is_refused() -> None:
    other = make_mlp()
    with pytest.raises(ValueError, match="does not update any parameter"):
        gradwatch.check(
            make_mlp(),
            regression_batches(1),
            mse,
            optimizer=torch.optim.SGD(other.parameters(), lr=0.1),
        )


# ------------------------------------------------------- Hugging Face models (issue 18.6)
def _tiny_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config)


def _tiny_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def _layer_names(model: nn.Module) -> list[str]:
    """The modules that own a parameter no earlier module owns (a tied head owns none)."""
    seen: set[int] = set()
    names = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen |= {id(p) for p in own}
        if own:
            names.append(name)
    return names


def test_hf_classifier_output_goes_to_loss_fn_as_logits() -> None:
    model = _tiny_vit()
    names = _layer_names(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (6,), generator=generator)
    report = gradwatch.check(model, [(images, labels)], nn.functional.cross_entropy, steps=3)
    assert report.steps == 3 and all(math.isfinite(v) for v in report.losses)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(_tiny_vit()(images).logits, labels)
    assert report.losses[0] == pytest.approx(float(expected), rel=1e-5)
    # layer names are the model's own: no wrapper prefix
    assert [layer.name for layer in report.layers] == names


def test_hf_model_own_loss_with_loss_fn_none_and_dict_inputs() -> None:
    model = _tiny_gpt2()
    names = _layer_names(model)
    ids = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(0))
    report = gradwatch.check(model, [({"input_ids": ids}, ids)], None, steps=3)
    with torch.no_grad():
        expected = _tiny_gpt2()(input_ids=ids, labels=ids).loss
    assert report.losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert [layer.name for layer in report.layers] == names
    # tensor inputs work too: model(ids, labels=ids)
    again = gradwatch.check(_tiny_gpt2(), [(ids, ids)], steps=2)
    assert again.losses[0] == pytest.approx(float(expected), rel=1e-5)


def test_loss_fn_none_needs_a_model_with_its_own_loss() -> None:
    with pytest.raises(TypeError, match="loss_fn=None uses the model's own loss") as info:
        gradwatch.check(make_mlp(), regression_batches(1), None, steps=2)
    assert "Pass loss_fn" in str(info.value) and "Sequential" in str(info.value)


# --------------------------------------------- losses that cannot train (issue 20.9)
@pytest.mark.parametrize(
    ("loss_fn", "error", "words"),
    [
        (lambda out, y: mse(out, y).detach(), ValueError, ["does not depend on the model's"]),
        (lambda out, y: torch.tensor(mse(out, y).item()), ValueError, ["torch.no_grad()"]),
        (lambda out, y: (out.argmax() == 0).sum(), TypeError, ["integer tensor (torch.int64)"]),
        (
            lambda out, y: (out * (1 + 1j)).abs().sum().to(torch.complex64) * 1j,
            TypeError,
            ["complex tensor (torch.complex64)", "real loss"],
        ),
    ],
)
def test_a_loss_that_cannot_train_is_refused_naming_loss_fn(loss_fn, error, words) -> None:
    with pytest.raises(error) as info:
        gradwatch.check(make_mlp(), regression_batches(1), loss_fn, steps=2)
    text = str(info.value)
    assert text.startswith("loss_fn returned") and "at step 0" in text
    for word in words:
        assert word in text


def test_an_all_frozen_model_with_an_optimizer_is_refused() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="model has no trainable parameters") as info:
        gradwatch.check(model, regression_batches(1), mse, optimizer=optimizer, steps=2)
    assert "optimizer has nothing to update" in str(info.value)
    assert "requires_grad_(True)" in str(info.value)
