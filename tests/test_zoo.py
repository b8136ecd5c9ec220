"""Fast checks of the model zoo (``tests/zoo``): every scenario builds and trains a step
under ``gradwatch.watch``, the outcome bookkeeping judges runs correctly, and the premises
of the failure scenarios hold where that is cheap to see (a forward pass, a backward pass,
a few steps). gradwatch's verdicts on the zoo are the detector sweep's business
(``benchmarks/sweep_detectors.py``), not asserted here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch

from .zoo import (
    SCENARIOS,
    Outcome,
    Run,
    Scenario,
    build,
    loss_blowup_step,
    real,
    train,
)
from .zoo.verify import AttentionLogitProbe, first_step_gradient, plain_training

HEALTHY_REAL = sorted(
    name for name, s in SCENARIOS.items() if "real" in s.tags and s.healthy and s.chance_loss
)


def never_built(seed: int) -> Run:
    raise AssertionError("the bookkeeping tests never build their scenario")


def outcome_of(expect: frozenset[str] | None, alerts: list[tuple[str, str, int]]) -> Outcome:
    """An Outcome with the given (kind, severity, step) alerts and a loss that blows up."""
    scenario = Scenario("made_up", never_built, expect=expect, develops=True)
    return Outcome(
        scenario=scenario,
        seed=0,
        losses=[1.0, 1.5, 2.0, 4.0, math.nan],
        alerts=[
            gradwatch.Alert(kind, severity, step, None, "m") for kind, severity, step in alerts
        ],
        diagnoses=[],
        seconds=0.0,
        steps=5,
    )


def test_scenarios_are_tagged_and_well_formed() -> None:
    assert len(SCENARIOS) >= 60
    for name, scenario in SCENARIOS.items():
        assert scenario.name == name
        assert len({"seed", "real"} & scenario.tags) == 1, name
        assert scenario.expect is None or isinstance(scenario.expect, frozenset), name
        assert scenario.chance_loss is None or scenario.chance_loss > 0, name
        assert scenario.about, f"{name} says nothing about itself"
    real_ones = [s for s in SCENARIOS.values() if "real" in s.tags]
    assert sum(s.healthy for s in real_ones) >= 10
    assert sum(bool(s.expect) for s in real_ones) >= 8


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_builds_and_trains_one_step_under_watch(name: str) -> None:
    run = build(name, seed=0)
    assert isinstance(run, Run)
    assert isinstance(run.model, nn.Module) and run.batches and run.steps > 0
    owned = {id(p) for p in run.model.parameters()}
    assert all(id(p) in owned for g in run.optimizer.param_groups for p in g["params"])

    outcome = train(name, seed=0, steps=1)

    assert outcome.steps == 1 and len(outcome.losses) == 1
    assert math.isfinite(outcome.first_loss)
    assert outcome.verdict in ("OK", "FALSE ALARM", "MISS")


def test_the_same_seed_builds_the_same_run() -> None:
    first, second = build("gpt2_adamw_warmup", seed=3), build("gpt2_adamw_warmup", seed=3)
    assert torch.equal(first.batches[0][0], second.batches[0][0])
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    other = build("gpt2_adamw_warmup", seed=4)
    assert not torch.equal(first.batches[0][0], other.batches[0][0])


# ------------------------------------------------------------------------- bookkeeping
def test_loss_blowup_step() -> None:
    assert loss_blowup_step([1.0, 2.0, 2.9, 3.1, 1.0]) == 3
    assert loss_blowup_step([1.0, 2.0, math.inf]) == 2
    assert loss_blowup_step([1.0, 0.5, 0.2]) is None
    assert loss_blowup_step([-1.0, 5.0, math.nan]) == 2  # no ratio for a negative start
    assert loss_blowup_step([]) is None


def test_verdicts_and_lead() -> None:
    healthy = outcome_of(None, [("exploding", "info", 0)])
    assert healthy.verdict == "OK"  # info is not a problem
    alarmed = outcome_of(None, [("exploding", "warning", 2)])
    assert alarmed.verdict == "FALSE ALARM"

    caught = outcome_of(
        frozenset({"exploding", "loss_spike"}),
        [("poor_init", "warning", 0), ("loss_spike", "error", 4), ("exploding", "warning", 1)],
    )
    assert caught.verdict == "OK"
    assert caught.first_fitting is not None and caught.first_fitting.kind == "exploding"
    assert caught.blowup_step == 3 and caught.lead == 2

    missed = outcome_of(frozenset({"vanishing"}), [("exploding", "error", 1)])
    assert missed.verdict == "MISS" and missed.lead is None
    assert outcome_of(frozenset(), []).verdict == "OK"  # no demand


def test_train_reads_logits_from_a_hugging_face_output() -> None:
    outcome = train("bert_classifier_adamw_warmup", steps=2)
    assert len(outcome.losses) == 2 and all(math.isfinite(v) for v in outcome.losses)


# ------------------------------------------------------------------------ premises
@pytest.mark.parametrize("name", HEALTHY_REAL)
def test_healthy_real_models_start_at_chance(name: str) -> None:
    """Healthy runs start knowing nothing, so a loss well below chance later is learning."""
    run = build(name)
    inputs, targets = run.batches[0]
    run.model.train()
    with torch.no_grad():
        loss = float(run.loss_fn(run.model(inputs), targets))
    chance = SCENARIOS[name].chance_loss
    assert chance is not None and abs(loss - chance) < 0.1 * chance, (loss, chance)


def test_gpt2_with_initializer_range_2_starts_far_above_chance() -> None:
    run = build("gpt2_init_range_2")
    inputs, targets = run.batches[0]
    with torch.no_grad():
        loss = float(run.loss_fn(run.model(inputs), targets))
    assert loss > 3 * math.log(real.VOCAB)


def test_rnn_gradient_at_the_first_time_step_underflows() -> None:
    gradient = first_step_gradient(build("rnn_tanh_T100_orthogonal_0.5"))
    assert gradient is not None
    first, last = gradient
    assert last > 1e-4
    assert first < 1e-25 * last  # 0.5^99 and tanh' < 1, while the label lives at step 0 only


def test_copy_language_repeats_its_first_half() -> None:
    inputs, targets = real.markov_copy_lm(1, length=32, seed=0)[0]
    sequence = torch.cat([inputs, targets[:, -1:]], 1)
    assert torch.equal(sequence[:, 17:], sequence[:, : sequence.shape[1] - 17])
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_digits_batches_hold_all_ten_classes() -> None:
    batches = real.digits_batches(seed=0)
    assert len(batches) == 28
    assert batches[0][0].shape == (64, 1, 8, 8)
    assert set(torch.cat([labels for _, labels in batches]).tolist()) == set(range(10))


def test_twins_differ_only_where_they_say() -> None:
    """post-LN with and without warmup start from the same weights and data; the output-logit
    case and its control differ only in the final LayerNorm."""
    cold, warm = build("postln_transformer_no_warmup"), build("postln_transformer_warmup")
    assert cold.scheduler is None and warm.scheduler is not None
    for a, b in zip(cold.model.state_dict().values(), warm.model.state_dict().values()):
        assert torch.equal(a, b)
    loose = build("gpt_no_final_norm_output_logits")
    normed = build("qknorm_gpt_final_norm_lr_0.1")
    assert isinstance(loose.model.norm, nn.Identity)
    assert isinstance(normed.model.norm, nn.LayerNorm)


def test_preln_attention_logits_grow_at_lr_0_1() -> None:
    """Ten steps of the pre-LN transformer at Adam lr 0.1 multiply its largest attention
    logit q.k/sqrt(d) many times over (measured: 2.6 -> 243)."""
    run = build("preln_transformer_adam_lr_0.1")
    traces = plain_training(run, 11)
    attention = traces["attention"]
    assert attention[0] < 10 and attention[-1] > 10 * attention[0], attention


def test_attention_probe_matches_the_attention_weights() -> None:
    """The probe's largest logit is the one behind nn.MultiheadAttention's own softmax."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    probe = AttentionLogitProbe(attention)
    with torch.no_grad():
        _, weights = attention(x, x, x, average_attn_weights=False)
    largest = probe.take()
    probe.remove()
    d = 4
    w, b = attention.in_proj_weight.detach(), attention.in_proj_bias.detach()
    q = (x @ w[:16].T + b[:16]).view(2, 5, 4, d)
    k = (x @ w[16:32].T + b[16:32]).view(2, 5, 4, d)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    assert torch.allclose(scores.softmax(-1), weights, atol=1e-5)
    assert largest == pytest.approx(float(scores.abs().max()), rel=1e-5)
