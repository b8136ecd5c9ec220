"""Root-cause diagnosis: the top diagnosis names the true cause of each seed failure of
the zoo, healthy runs get none, remedies fit the model, and the Report carries them."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._diagnosis import CAUSES, ModelFacts, diagnose
from gradwatch._history import History
from gradwatch._measure.model import ModelMap
from gradwatch._measure.optimizer import OptimizerFacts

from .zoo import SCENARIOS, train

#: Seed failures and the causes that are the truth for each (either is right where the
#: textbook names two: a W = 0.5·I chain is both badly initialised and too deep to be bare).
TRUE_CAUSES = {
    "sigmoid_mlp_normal_init_20": {"poor_initialisation", "saturating_activations"},
    "default_init_relu_mlp_20": {"poor_initialisation", "depth_without_skip_or_norm"},
    "linear_chain_0.5": {"depth_without_skip_or_norm", "poor_initialisation"},
    "linear_chain_0.5_bias": {"depth_without_skip_or_norm", "poor_initialisation"},
    "linear_chain_1.5": {"depth_without_skip_or_norm", "poor_initialisation"},
    "linear_chain_1.5_bias_sgd": {"depth_without_skip_or_norm", "poor_initialisation"},
    "scalar_chain_1.3": {"depth_without_skip_or_norm", "poor_initialisation"},
    "scalar_chain_0.7": {"depth_without_skip_or_norm", "poor_initialisation"},
    "tanh_large_weights": {"poor_initialisation", "saturating_activations"},
    "sgd_lr_far_too_high": {"learning_rate_too_high"},
    "sgd_lr_too_high_cnn": {"learning_rate_too_high"},
    "adam_lr_1_mlp": {"learning_rate_too_high"},
    "frozen_lr_zero": {"learning_rate_too_low"},
    "lr_tiny_adam": {"learning_rate_too_low"},
    "relu_large_negative_bias": {"dead_relus"},
    "relu_rnn_long_gain_1.2": {"recurrent_instability"},
}

HEALTHY_SEEDS = [
    name for name, s in SCENARIOS.items() if "seed" in s.tags and s.healthy and "slow" not in s.tags
]


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="gradwatch")


@pytest.mark.parametrize("name", sorted(TRUE_CAUSES))
def test_top_diagnosis_names_the_true_cause(name: str) -> None:
    outcome = train(SCENARIOS[name], seed=0)
    assert outcome.diagnoses, [a.format() for a in outcome.problems]
    top = outcome.diagnoses[0]
    assert top.cause in TRUE_CAUSES[name], [d.format() for d in outcome.diagnoses]
    # One cause explains the symptoms: every problem is somebody's evidence.
    explained = {id(a) for d in outcome.diagnoses for a in d.evidence}
    assert all(id(a) in explained for a in outcome.problems)
    assert top.remedies and top.summary
    assert top.step == min(a.step for a in top.evidence)


@pytest.mark.parametrize("name", HEALTHY_SEEDS)
def test_no_diagnosis_on_a_healthy_run(name: str) -> None:
    outcome = train(SCENARIOS[name], seed=0)
    assert outcome.diagnoses == []


def test_one_diagnosis_for_the_deep_sigmoid_stack() -> None:
    """Saturation, scale drift and vanishing share one cause, and the remedy is the
    initialisation that fits sigmoid, for the layers that need it, in code."""
    outcome = train(SCENARIOS["sigmoid_mlp_normal_init_20"], seed=0)
    assert len(outcome.diagnoses) == 1
    diagnosis = outcome.diagnoses[0]
    kinds = {a.kind for a in diagnosis.evidence}
    assert {"poor_init", "vanishing"} <= kinds
    assert "calculate_gain('sigmoid')" in diagnosis.remedies[0]
    assert "model[0]" in diagnosis.remedies[0]
    assert "kaiming" not in " ".join(diagnosis.remedies)


def test_dead_relu_names_the_layer_that_feeds_it() -> None:
    diagnosis = train(SCENARIOS["relu_large_negative_bias"], seed=0).diagnoses[0]
    assert diagnosis.layer == "6"
    assert "nn.init.constant_(model[6].bias" in diagnosis.remedies[0]


def _facts(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> ModelFacts:
    return ModelFacts.of(ModelMap.of(model), OptimizerFacts.of(optimizer))


def test_remedies_never_suggest_what_the_model_has() -> None:
    model = nn.Sequential(
        nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.GELU(),
        nn.Linear(32, 4),
    )  # fmt: skip
    facts = _facts(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert facts.norms == {"LayerNorm"} and not facts.bounded
    alert = gradwatch.Alert("poor_init", "warning", 2, None, "The loss starts at 40.", 40.0)
    (diagnosis,) = diagnose([alert], History(8), facts)
    assert diagnosis.cause == "poor_initialisation"
    text = " ".join(diagnosis.remedies)
    assert "add normalisation" not in text and "xavier" not in text
    # Adam divides the gradient's scale out: clipping is no cure for its step size.
    spike = gradwatch.Alert("update_size", "error", 0, None, "Each step changes...", 2.0, 1.0)
    (too_high,) = diagnose([spike], History(8), facts)
    assert too_high.cause == "learning_rate_too_high"
    assert not any("clip" in remedy for remedy in too_high.remedies)
    assert "AdamW" in too_high.remedies[0] and "0.001" in too_high.summary


def test_nothing_to_diagnose_without_a_warning() -> None:
    facts = _facts(nn.Linear(2, 2))
    info = gradwatch.Alert("vanishing", "info", 4, "0", "borderline")
    assert diagnose([], History(4), facts) == []
    assert diagnose([info], History(4), facts) == []


def test_nonfinite_input_is_the_data() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    x[3, 1] = float("nan")
    with gradwatch.watch(model, optimizer, locate_nonfinite=True) as gw:
        loss = nn.functional.mse_loss(model(x), torch.zeros(8, 1))
        loss.backward()
        gw.record_loss(loss)
        optimizer.step()
    assert gw.diagnoses[0].cause == "nonfinite_data"


def test_nonfinite_loss_is_the_loss() -> None:
    model = nn.Sequential(nn.Linear(4, 1), nn.ReLU())
    nn.init.constant_(model[0].bias, -100.0)  # output 0: log(0) in the loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer, locate_nonfinite=True) as gw:
        loss = -torch.log(model(torch.randn(8, 4))).mean()
        loss.backward()
        gw.record_loss(loss)
        optimizer.step()
    assert gw.diagnoses[0].cause == "nonfinite_loss"


def test_diagnoses_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> list[gradwatch.Diagnosis]:
        raise RuntimeError("boom")

    monkeypatch.setattr("gradwatch._watcher.diagnose", broken)
    outcome = train(SCENARIOS["frozen_lr_zero"], seed=0)
    assert outcome.problems and outcome.diagnoses == []


def test_diagnosis_record() -> None:
    alert = gradwatch.Alert("nonfinite", "error", 3, "fc1", "boom", float("nan"))
    diagnosis = gradwatch.Diagnosis(
        "nonfinite_data", "NaN in the batch.", (alert,), ("fix",), None, 3
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        diagnosis.cause = "x"  # type: ignore[misc]
    data = json.loads(json.dumps(diagnosis.to_dict(), allow_nan=False))
    assert data["cause"] == "nonfinite_data" and data["evidence"][0]["value"] == "nan"
    assert set(CAUSES) >= {"learning_rate_too_high", "missing_warmup", "numeric_overflow"}
    with pytest.raises(ValueError, match="cause"):
        gradwatch.Diagnosis("bad_luck", "", (), (), None, 0)


def test_report_puts_the_cause_first() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    data = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    report = gradwatch.check(model, data, nn.functional.mse_loss, optimizer=optimizer, steps=20)
    assert not report.ok
    assert report.diagnoses[0].cause == "learning_rate_too_low"
    text = report.summary()
    assert text.index("Cause 1: learning_rate_too_low") < text.index("Alerts")
    assert "problem(s): 1 cause(s)" in text and "Change:" in text and "Evidence:" in text
    data_out = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data_out["diagnoses"][0]["cause"] == "learning_rate_too_low"
    healthy = gradwatch.check(
        nn.Linear(4, 1), [(torch.randn(16, 4), torch.randn(16, 1))], nn.functional.mse_loss, steps=3
    )
    assert healthy.diagnoses == () and "Cause" not in healthy.summary()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("postln_transformer_no_warmup", "missing_warmup"),
        ("gpt_no_final_norm_output_logits", "output_logit_divergence"),
    ],
)
def test_real_failures(name: str, cause: str) -> None:
    outcome = train(SCENARIOS[name], seed=0)
    assert outcome.diagnoses and outcome.diagnoses[0].cause == cause, [
        d.format() for d in outcome.diagnoses
    ]


def _alert(kind: str, step: int, layer: str | None = None, **fields: object) -> gradwatch.Alert:
    return gradwatch.Alert(kind, "warning", step, layer, f"{kind} measured.", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "alerts", "cause"),
    [
        (
            nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)),
            [_alert("saturation", 30, "1", value=0.9)],
            "saturating_activations",
        ),
        (
            nn.TransformerEncoderLayer(16, 2, 32, batch_first=True),
            [_alert("attention_logits", 40, "self_attn", value=80.0)],
            "attention_logit_growth",
        ),
        (nn.Linear(4, 2), [_alert("amp_skip", 25)], "numeric_overflow"),
    ],
)
def test_structure_causes(model: nn.Module, alerts: list[gradwatch.Alert], cause: str) -> None:
    facts = _facts(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    diagnoses = diagnose(alerts, History(8), facts)
    assert [d.cause for d in diagnoses] == [cause]
    assert diagnoses[0].evidence == tuple(alerts)


def test_frozen_weights_at_an_ordinary_rate_are_not_a_low_rate() -> None:
    from gradwatch._detectors.not_learning import REMEDY_FROZEN

    model = nn.Linear(4, 2)
    facts = _facts(model, torch.optim.SGD(model.parameters(), lr=0.1))
    frozen = _alert("not_learning", 19, remedy=REMEDY_FROZEN)
    (diagnosis,) = diagnose([frozen], History(8), facts)
    assert diagnosis.cause == "parameters_not_updated"


def test_post_ln_layers_are_recognised() -> None:
    post = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False
    )
    pre = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, norm_first=True), 2, enable_nested_tensor=False
    )
    assert _facts(post).post_ln == ("layers.0", "layers.1")
    assert _facts(pre).post_ln == () and _facts(pre).residual
