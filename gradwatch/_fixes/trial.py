"""Running the trials: each fix on a fresh copy of the starting weights, through the
check's own training loop (handed in as ``runner``), from the same random state.

The user's model and optimizer are never touched: each trial builds its own from the
:class:`~gradwatch._fixes.snapshot.Snapshot`; the random state is put back to the
original run's start before each trial and to what it was after the original run when
the trials are over (``torch.random.fork_rng``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from gradwatch._alerts import Alert
from gradwatch._diagnosis.facts import ModelFacts
from gradwatch._diagnosis.record import Diagnosis
from gradwatch._fixes.catalogue import Fix
from gradwatch._fixes.rank import rank
from gradwatch._fixes.record import FixTrial, tail_loss
from gradwatch._fixes.reinit import reinitialise
from gradwatch._fixes.snapshot import Snapshot
from gradwatch._measure.model import ModelMap
from gradwatch._measure.optimizer import OptimizerFacts


class CheckedRun(Protocol):
    """What the runner returns (a :class:`gradwatch.Report`)."""

    @property
    def ok(self) -> bool: ...
    @property
    def alerts(self) -> tuple[Alert, ...]: ...
    @property
    def diagnoses(self) -> tuple[Diagnosis, ...]: ...
    @property
    def losses(self) -> tuple[float, ...]: ...
    @property
    def steps(self) -> int: ...


#: ``runner(model, optimizer, before_step, after_step)``: the check's loop on this model
#: and optimizer, calling ``before_step()`` after backward and before each optimizer
#: step and ``after_step()`` after it.
Runner = Callable[
    [torch.nn.Module, torch.optim.Optimizer, Callable[[], None], Callable[[], None]], CheckedRun
]


def _nothing() -> None:
    return None


def run_trial(
    fix: Fix, snapshot: Snapshot, runner: Runner, original_final_loss: float
) -> FixTrial | None:
    """Apply ``fix`` to a fresh copy and run the check on it; None when the fix turns out
    not to apply to this model (a re-initialisation with no layer it knows)."""
    model, optimizer = snapshot.build(lr_factor=fix.lr_factor, lr_value=fix.lr_value)
    description = fix.description
    if fix.reinit:
        model_map = ModelMap.of(model)
        facts = ModelFacts.of(model_map, OptimizerFacts.of(optimizer))
        done = reinitialise(model, facts, model_map)
        if not done:
            return None  # no layer gradwatch knows how to initialise: the fix does not apply
        description = "re-initialise: " + done
    before: Callable[[], None] = _nothing
    after: Callable[[], None] = _nothing
    if fix.clip_norm is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        norm = fix.clip_norm

        def before() -> None:
            torch.nn.utils.clip_grad_norm_(params, norm)

    if fix.warmup_steps:
        n = fix.warmup_steps
        scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / n)
        )
        after = scheduler.step
    snapshot.restore_rng()
    try:
        report = runner(model, optimizer, before, after)
    except Exception as error:  # the user's code failed on the changed model
        return FixTrial(
            fix=fix.id,
            description=description,
            causes=fix.causes,
            ok=False,
            alerts=(),
            diagnoses=(),
            steps=0,
            final_loss=float("nan"),
            original_final_loss=original_final_loss,
            error=f"{type(error).__name__}: {error}",
        )
    return FixTrial(
        fix=fix.id,
        description=description,
        causes=fix.causes,
        ok=report.ok,
        alerts=tuple(report.alerts),
        diagnoses=tuple(report.diagnoses),
        steps=report.steps,
        final_loss=tail_loss(report.losses),
        original_final_loss=original_final_loss,
    )


def run_trials(
    fixes: Sequence[Fix],
    snapshot: Snapshot,
    runner: Runner,
    original_final_loss: float,
    *,
    progress: Callable[[int, int, Fix], None] | None = None,
) -> tuple[FixTrial, ...]:
    """Every fix's trial, ranked best first. ``progress(i, n, fix)`` is called before
    trial ``i`` of ``n`` (the CLI's progress line)."""
    trials = []
    with torch.random.fork_rng(devices=snapshot.rng_devices()):
        for number, fix in enumerate(fixes):
            if progress is not None:
                progress(number, len(fixes), fix)
            trial = run_trial(fix, snapshot, runner, original_final_loss)
            if trial is not None:
                trials.append(trial)
    return rank(trials)
