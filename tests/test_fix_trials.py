"""check(..., try_fixes=True): each fix gradwatch can apply itself, re-run from the same
starting weights, ranked best first; the user's model and optimizer untouched."""

from __future__ import annotations

import copy
import json
import math
import threading

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._diagnosis.record import Diagnosis
from gradwatch._fixes import FixTrial, propose, rank
from gradwatch._fixes.catalogue import DEFAULT_CLIP, MAX_TRIALS, Context

from .helpers import regression_batches


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def relu_mlp(seed: int = 0, dead_bias: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(4):
        linear = nn.Linear(8 if i == 0 else 32, 32)
        if dead_bias and i == 2:
            nn.init.constant_(linear.bias, -10.0)  # every unit after it is dead
        layers += [linear, nn.ReLU()]
    layers.append(nn.Linear(32, 1))
    return nn.Sequential(*layers)


def diverging(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = relu_mlp(seed)
    return model, torch.optim.SGD(model.parameters(), lr=3.0)


def test_learning_rate_too_high_is_fixed_by_a_lower_rate_ranked_first() -> None:
    model, optimizer = diverging()
    report = gradwatch.check(
        model, regression_batches(2), mse, optimizer=optimizer, steps=12, try_fixes=True
    )
    assert not report.ok and report.diagnoses[0].cause == "learning_rate_too_high"
    assert report.tried_fixes and 1 <= len(report.fix_trials) <= MAX_TRIALS
    best = report.fix_trials[0]
    assert best.ok, report.summary()
    assert best.fix in ("lr_div_10", "lr_div_100")
    assert "learning_rate_too_high" in best.causes and "3 -> 0.0" in best.description
    assert math.isfinite(best.final_loss) and not math.isfinite(best.original_final_loss)
    assert all(trial.steps == 12 for trial in report.fix_trials if trial.error is None)
    # best first: every healthy trial before every unhealthy one
    oks = [trial.ok for trial in report.fix_trials]
    assert oks == sorted(oks, reverse=True)
    text = report.summary()
    assert text.index("Cause 1") < text.index("Fixes tried") < text.index("Alerts (the evidence)")
    assert f"best: {best.fix}" in text


def test_dead_relus_are_fixed_by_reinitialisation() -> None:
    report = gradwatch.check(
        relu_mlp(dead_bias=True), regression_batches(2), mse, steps=12, try_fixes=True
    )
    assert report.diagnoses[0].cause == "dead_relus", report.summary()
    best = report.fix_trials[0]
    assert best.fix == "reinit" and best.ok, report.summary()
    assert "He for '0', '2', '4', '6'" in best.description
    assert best.final_loss < best.original_final_loss


def test_the_users_model_optimizer_and_random_state_are_untouched() -> None:
    """The trials change nothing the user holds: model, optimizer and the global random
    state end bit for bit as after the same check without trials."""
    results = []
    for try_fixes in (False, True):
        model = relu_mlp(dead_bias=True)
        model.insert(1, nn.Dropout(0.1))  # the random state matters
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(123)
        report = gradwatch.check(
            model, regression_batches(2), mse, optimizer=optimizer, steps=10, try_fixes=try_fixes
        )
        assert not report.ok and bool(report.fix_trials) == try_fixes
        results.append((model.state_dict(), optimizer.state_dict(), torch.rand(4)))
    (model_a, opt_a, rng_a), (model_b, opt_b, rng_b) = results
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[key], model_b[key]) for key in model_a)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for index, state in opt_a["state"].items():
        assert all(torch.equal(value, opt_b["state"][index][k]) for k, value in state.items())
    assert torch.equal(rng_a, rng_b)


def test_healthy_run_gets_no_trial_and_json_says_so() -> None:
    report = gradwatch.check(relu_mlp(), regression_batches(2), mse, steps=10, try_fixes=True)
    assert report.ok and report.fix_trials == () and report.diagnoses == ()
    assert report.to_dict()["fix_trials"] == []
    assert "Fixes tried" not in report.summary()
    plain = gradwatch.check(relu_mlp(), regression_batches(2), mse, steps=10)
    assert plain.to_dict()["fix_trials"] is None  # not asked


def test_a_cause_no_fix_addresses_is_said_so() -> None:
    def nan_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse(output, target) * float("nan")

    report = gradwatch.check(
        relu_mlp(),
        regression_batches(2),
        nan_loss,
        steps=10,
        try_fixes=True,
        locate_nonfinite=True,
    )
    assert [d.cause for d in report.diagnoses] == ["nonfinite_loss"], report.summary()
    assert report.tried_fixes and report.fix_trials == ()
    assert "no fix gradwatch can apply itself" in report.summary()


def test_fix_trials_to_dict_is_json_safe() -> None:
    model, optimizer = diverging()
    report = gradwatch.check(
        model, regression_batches(2), mse, optimizer=optimizer, steps=10, try_fixes=True
    )
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    trials = data["fix_trials"]
    assert [t["fix"] for t in trials] == [t.fix for t in report.fix_trials]
    assert set(trials[0]) >= {
        "fix", "description", "causes", "ok", "final_loss", "original_final_loss",
        "loss_ratio", "remaining_causes", "alerts", "steps", "error", "problems",
    }  # fmt: skip
    assert trials[0]["original_final_loss"] == "nan"


class NeedsExtra(torch.optim.SGD):
    """An optimizer whose constructor takes an argument its defaults do not hold."""

    def __init__(self, params, extra: int, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)
        self.extra = extra


class HoldsALock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 1)
        self.lock = threading.Lock()  # cannot be deep-copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "words"),
    [
        (relu_mlp, {"steps": 5}, ValueError, ["try_fixes=True needs steps >= 10", "steps=5"]),
        (relu_mlp, {"try_fixes": "yes"}, TypeError, ["try_fixes must be True or False"]),
        (HoldsALock, {}, ValueError, ["copy.deepcopy(model) failed", "try_fixes=False"]),
        (
            relu_mlp,
            {"optimizer": "needs_extra"},
            ValueError,
            ["rebuilds the optimizer as NeedsExtra(param_groups, **optimizer.defaults)"],
        ),
    ],
)
def test_what_cannot_be_tried_is_refused_before_training(make, kwargs, error, words) -> None:
    model = make()
    before = copy.deepcopy(model.state_dict()) if not isinstance(model, HoldsALock) else None
    options = {"steps": 10, "try_fixes": True, **kwargs}
    if options.get("optimizer") == "needs_extra":
        options["optimizer"] = NeedsExtra(model.parameters(), extra=1)
    with pytest.raises(error) as info:
        gradwatch.check(model, regression_batches(1), mse, **options)
    for word in words:
        assert word in str(info.value)
    if before is not None:  # refused before any step
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _diagnosis(cause: str, *kinds: str, step: int = 3) -> Diagnosis:
    alerts = tuple(
        gradwatch.Alert(kind=k, severity="error", step=step, layer="0", message="m", remedy="")
        for k in kinds
    )
    return Diagnosis(cause, "s", alerts, ("r",), "0", step)


def test_propose_fits_the_causes_and_is_bounded() -> None:
    context = Context(
        lr=0.5, adaptive=False, steps=20, grad_norms=[2.0, 4.0, 1e9], norm_steps=[0, 1, 3]
    )
    fixes = propose([_diagnosis("learning_rate_too_high", "exploding")], context)
    assert [f.id for f in fixes] == ["lr_div_10", "lr_div_100", "linear_warmup", "clip_grad_norm"]
    clip = fixes[-1]
    assert clip.clip_norm == 3.0 and "median before step 3" in clip.description
    assert fixes[2].warmup_steps == 5
    # Adam divides the gradient's scale out: no clipping for its rate; a zero rate is raised
    adam = Context(lr=0.0, adaptive=True, steps=20)
    assert [f.id for f in propose([_diagnosis("learning_rate_too_high", "exploding")], adam)] == [
        "linear_warmup"
    ]
    assert [f.id for f in propose([_diagnosis("learning_rate_too_low", "not_learning")], adam)] == [
        "lr_raise"
    ]
    # broken from the first step: no healthy norm to clip at, the usual 1.0
    rnn = propose([_diagnosis("recurrent_instability", "exploding", step=0)], context)
    assert [f.id for f in rnn] == ["reinit", "clip_grad_norm", "lr_div_10"]
    assert rnn[1].clip_norm == DEFAULT_CLIP
    # causes gradwatch cannot act on get no fix; one fix serves several causes once
    assert propose([_diagnosis("nonfinite_data", "nonfinite")], context) == []
    both = propose(
        [_diagnosis("poor_initialisation", "poor_init"), _diagnosis("dead_relus", "dead_units")],
        context,
    )
    assert [(f.id, f.causes) for f in both] == [("reinit", ("poor_initialisation", "dead_relus"))]
    many = [
        _diagnosis(c, "exploding")
        for c in (
            "learning_rate_too_high",
            "poor_initialisation",
            "attention_logit_growth",
            "missing_warmup",
        )
    ]
    assert len(propose(many, context)) <= MAX_TRIALS


def _trial(fix: str, ok: bool, loss: float, problems: int = 0) -> FixTrial:
    alerts = tuple(
        gradwatch.Alert(kind="exploding", severity="error", step=1, layer=None, message="m")
        for _ in range(problems)
    )
    return FixTrial(fix, "d", ("c",), ok, alerts, (), 10, loss, 5.0)


def test_rank_healthy_first_then_lower_loss() -> None:
    trials = [
        _trial("a", False, 1.0, 1),
        _trial("b", True, 3.0),
        _trial("c", True, 2.0),
        _trial("d", False, math.nan, 1),
    ]
    assert [t.fix for t in rank(trials)] == ["c", "b", "a", "d"]
    assert trials[2].loss_ratio == pytest.approx(0.4)
    assert "0.4x the original 5" in trials[2].comparison()


@pytest.mark.slow
def test_seed_zoo_failures_get_a_cause_and_working_fixes_first_healthy_get_none() -> None:
    """Over the zoo's textbook scenarios (benchmarks/sweep_fixes.py prints the table): a
    broken run check() flags has a cause; where a trial made it healthy, a healthy trial
    is ranked first; a healthy run gets no diagnosis and no trial."""
    from tests.zoo import SCENARIOS, build

    fixed = 0
    for scenario in SCENARIOS.values():
        if "seed" not in scenario.tags:
            continue
        run = build(scenario, 0)
        report = gradwatch.check(
            run.model, run.batches, run.loss_fn, optimizer=run.optimizer,
            steps=max(run.steps, 10), try_fixes=True,
        )  # fmt: skip
        if scenario.healthy:
            assert report.ok and not report.diagnoses and not report.fix_trials, scenario.name
            continue
        if report.ok:
            continue  # an edge case check() does not flag
        assert report.diagnoses, scenario.name
        if any(trial.ok for trial in report.fix_trials):
            assert report.fix_trials[0].ok, (scenario.name, report.summary())
            fixed += 1
    assert fixed >= 10  # 15 of 18 flagged seed failures at the time of writing


def test_trials_are_reproducible_with_dropout_and_a_shuffling_loader() -> None:
    """Each trial replays the original run's batches and random state: the same seed gives
    the same trials, loss for loss."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = regression_batches(1, batch=64)[0]
    outcomes = []
    for _ in range(2):
        model = relu_mlp(dead_bias=True)
        model.insert(1, nn.Dropout(0.2))
        torch.manual_seed(7)
        loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
        report = gradwatch.check(model, loader, mse, steps=10, try_fixes=True)
        assert report.fix_trials
        outcomes.append([(t.fix, t.ok, t.final_loss) for t in report.fix_trials])
    assert outcomes[0] == outcomes[1]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock shape: a two-conv branch and a downsample shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.downsample = nn.Sequential(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.downsample(x))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.layer1 = nn.Sequential(BasicBlock(8), BasicBlock(8))
        self.fc = nn.Linear(8, 2)


def test_reinit_zeroes_each_residual_branch_output_not_the_stem_or_shortcut() -> None:
    from gradwatch._diagnosis.facts import ModelFacts
    from gradwatch._fixes.reinit import reinitialise
    from gradwatch._measure.model import ModelMap

    model = ResNetLike()
    model_map = ModelMap.of(model)
    done = reinitialise(model, ModelFacts.of(model_map), model_map)
    assert "('layer1.0.conv2', 'layer1.1.conv2')" in done
    zero = {name for name, p in model.named_parameters() if name.endswith("weight") and not p.any()}
    assert zero == {"layer1.0.conv2.weight", "layer1.1.conv2.weight"}
    assert model.stem.weight.std() > 0 and model.layer1[0].downsample[0].weight.std() > 0
