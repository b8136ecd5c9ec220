"""The zoo's vocabulary: what a scenario is, how one is trained, and how its outcome is judged.

A :class:`Scenario` is a recipe (a model, its optimizer and data, a number of steps) plus what
gradwatch should say about it: nothing at warning or above for a healthy run, or one of a few
fitting alert kinds for a broken one. :func:`train` runs it the way people train, with a
plain loop under :func:`gradwatch.watch`, and returns an :class:`Outcome` that knows its own
verdict, so tests, benchmarks and the detector sweep all judge runs the same way.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import nn

import gradwatch

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], torch.Tensor]
Scheduler = Any  # a torch.optim.lr_scheduler instance (its base class moved across versions)

#: Alert severities that count as "gradwatch raised a problem".
LOUD = ("warning", "error")
#: The loss has "blown up" at the first step where it exceeds this multiple of its first value.
BLOWUP_FACTOR = 3.0


@dataclasses.dataclass
class Run:
    """One freshly built, ready-to-train instance of a scenario.

    Attributes:
        model: the model, in its initial state.
        optimizer: the optimizer over the model's trainable parameters.
        batches: ``(inputs, targets)`` pairs, cycled when the run is longer; ``model(inputs)``
            is the forward pass (as in :func:`gradwatch.check`, so a run can be checked too).
        loss_fn: ``loss_fn(model(inputs), targets)`` -> scalar loss; takes ``.logits`` from a
            Hugging Face ``ModelOutput`` itself.
        scheduler: a learning-rate scheduler stepped after every optimizer step, or None.
        steps: how many optimizer steps the scenario takes by default.
        clip: global gradient-norm clipping applied in the loop before each step (as the
            user's own ``clip_grad_norm_`` call would be), or None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: list[Batch]
    loss_fn: LossFn
    scheduler: Optional[Scheduler] = None
    steps: int = 100
    clip: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A named training situation and what gradwatch should say about it.

    Attributes:
        name: unique key in :data:`SCENARIOS`.
        build: ``build(seed) -> Run``; every call builds a fresh model, optimizer and data.
        expect: ``None`` for a healthy run (no warning or error may be raised); otherwise the
            alert kinds that fit the failure, at least one of which must fire at warning or
            error. An empty set makes no demand (a run on the edge, reported only).
        chance_loss: the loss of a model that knows nothing (ln of the number of classes),
            where meaningful, so a run can be seen to learn or not.
        develops: the failure builds up during training (rather than being there from step
            0), so the lead time of the first fitting alert over the loss blow-up is measured.
        tags: free labels for filtering: ``"seed"`` (textbook cases), ``"real"`` (real
            architectures), ``"slow"``, ``"hf"`` (needs transformers), ``"sklearn"``...
        about: what the scenario is and what was measured when it was verified.
    """

    name: str
    build: Callable[[int], Run]
    expect: Optional[frozenset[str]] = None
    chance_loss: Optional[float] = None
    develops: bool = False
    tags: frozenset[str] = frozenset()
    about: str = ""

    @property
    def healthy(self) -> bool:
        """True when gradwatch must stay quiet (no warning or error) on this scenario."""
        return self.expect is None


#: Every scenario of the zoo, by name (filled by ``tests.zoo.seeds`` and ``tests.zoo.real``).
SCENARIOS: dict[str, Scenario] = {}


def register(
    name: str,
    expect: Iterable[str] | None = None,
    *,
    chance_loss: float | None = None,
    develops: bool = False,
    tags: Iterable[str] = (),
    about: str = "",
) -> Callable[[Callable[[int], Run]], Callable[[int], Run]]:
    """Decorator: register ``build(seed) -> Run`` as the scenario ``name`` in SCENARIOS."""

    def decorate(build: Callable[[int], Run]) -> Callable[[int], Run]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(
            name=name,
            build=build,
            expect=None if expect is None else frozenset(expect),
            chance_loss=chance_loss,
            develops=develops,
            tags=frozenset(tags),
            about=about or (build.__doc__ or "").strip(),
        )
        return build

    return decorate


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output: a tensor itself, ``.logits`` of a Hugging Face
    ``ModelOutput``, or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise TypeError(f"cannot find logits in a {type(output).__name__}")


def cross_entropy(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position: classifiers (N, C) and sequences (N, T, C)."""
    logits = logits_of(output)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def mse(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error (regression)."""
    return nn.functional.mse_loss(logits_of(output), targets)


def loss_blowup_step(losses: list[float], factor: float = BLOWUP_FACTOR) -> int | None:
    """The first step whose loss is non-finite or exceeds ``factor`` x the first loss.

    This is when a user watching the loss curve would see that the run has failed; an
    alert's lead time is this step minus the alert's step. None when it never happens. A
    first loss that is zero or negative makes only non-finite losses count.
    """
    if not losses:
        return None
    start = losses[0]
    for step, value in enumerate(losses):
        if not math.isfinite(value):
            return step
        if math.isfinite(start) and start > 0 and value > factor * start:
            return step
    return None


@dataclasses.dataclass
class Outcome:
    """What happened when a scenario was trained, and gradwatch's verdict on it.

    Attributes:
        scenario: the scenario trained.
        seed: the seed it was built and trained with.
        losses: the loss of every step taken (floats; may hold NaN or inf).
        alerts: every alert gradwatch raised, all severities, in order.
        diagnoses: the watcher's ``diagnoses`` if it has them (empty otherwise).
        seconds: wall time of the training loop, watcher included.
        steps: optimizer steps taken.
        stopped: why training stopped early (``on_nonfinite="raise"``), or None.
    """

    scenario: Scenario
    seed: int
    losses: list[float]
    alerts: list[gradwatch.Alert]
    diagnoses: list[Any]
    seconds: float
    steps: int
    stopped: Optional[str] = None

    @property
    def problems(self) -> list[gradwatch.Alert]:
        """The alerts of severity warning or error, in order."""
        return [alert for alert in self.alerts if alert.severity in LOUD]

    @property
    def first_loss(self) -> float:
        """The loss of step 0 (NaN when no step ran)."""
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        """The mean loss over the last tenth of the run (at least one step): less noisy than
        the last step's loss. NaN when no step ran."""
        if not self.losses:
            return math.nan
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)

    @property
    def blowup_step(self) -> int | None:
        """See :func:`loss_blowup_step`."""
        return loss_blowup_step(self.losses)

    def first_problem(self, kinds: Iterable[str] | None = None) -> gradwatch.Alert | None:
        """The earliest warning-or-error alert, of one of ``kinds`` when given."""
        wanted = None if kinds is None else set(kinds)
        found = [a for a in self.problems if wanted is None or a.kind in wanted]
        return min(found, key=lambda a: a.step) if found else None

    @property
    def first_fitting(self) -> gradwatch.Alert | None:
        """The earliest warning-or-error alert of a kind the scenario expects."""
        if not self.scenario.expect:
            return None
        return self.first_problem(self.scenario.expect)

    @property
    def lead(self) -> int | None:
        """Steps from the first fitting alert to the loss blow-up (positive = early warning).

        Only for scenarios whose failure develops; None when either event is missing.
        """
        if not self.scenario.develops:
            return None
        blowup, fitting = self.blowup_step, self.first_fitting
        if blowup is None or fitting is None:
            return None
        return blowup - fitting.step

    @property
    def verdict(self) -> str:
        """``"OK"``, ``"FALSE ALARM"`` (a healthy run raised a problem) or ``"MISS"`` (a
        broken run raised no fitting problem). A scenario with an empty ``expect`` set is
        always OK: it is there to be looked at, not judged."""
        expect = self.scenario.expect
        if expect is None:
            return "FALSE ALARM" if self.problems else "OK"
        if not expect:
            return "OK"
        return "OK" if self.first_fitting is not None else "MISS"


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adam(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """``gradwatch.check()``'s default optimizer: Adam(lr=1e-3) over the trainable weights."""
    return torch.optim.Adam(_trainable(model), lr=lr)


def warmup(
    optimizer: torch.optim.Optimizer,
    steps: int,
    total: int | None = None,
    *,
    floor: float = 0.0,
    cosine: bool = False,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with a linear warmup over ``steps``, then constant (``total`` None) or a
    decay to ``floor`` x the peak at step ``total``: linear, the shape of transformers'
    ``get_linear_schedule_with_warmup``, or ``cosine`` as in LLM pre-training recipes."""

    def factor(step: int) -> float:
        if step < steps:
            return (step + 1) / steps
        if total is None:
            return 1.0
        progress = min(1.0, (step - steps) / max(1, total - steps))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cosine else 1.0 - progress
        return floor + (1.0 - floor) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build(scenario: Scenario | str, seed: int = 0) -> Run:
    """Seed torch's global generator with ``seed``, then build the scenario's run: the same
    seed gives the same weights and data every time."""
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    torch.manual_seed(seed)
    return scenario.build(seed)


def train(
    scenario: Scenario | str, seed: int = 0, steps: int | None = None, **watch_options: Any
) -> Outcome:
    """Train ``scenario`` under ``gradwatch.watch(model, optimizer, **watch_options)``.

    A plain loop, the way people write it: forward, loss, backward, ``gw.record_loss``,
    the run's own gradient clipping if any, ``optimizer.step()``, ``scheduler.step()``,
    ``zero_grad``. The seed fixes both the build (weights, data) and training (dropout).
    Each step's loss is read with ``.item()`` (a host sync, fine on the CPU zoo).

    Args:
        scenario: a :class:`Scenario` or its name in :data:`SCENARIOS`.
        seed: the seed.
        steps: optimizer steps; None means the run's own default.
        **watch_options: passed to :func:`gradwatch.watch` (``logdir``, thresholds...).
    """
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    run = build(scenario, seed)
    total = run.steps if steps is None else steps
    run.model.train()
    losses: list[float] = []
    stopped: str | None = None
    start = time.perf_counter()
    with gradwatch.watch(run.model, run.optimizer, **watch_options) as gw:
        for step in range(total):
            inputs, targets = run.batches[step % len(run.batches)]
            loss = run.loss_fn(run.model(inputs), targets)
            loss.backward()
            gw.record_loss(loss)
            losses.append(float(loss.item()))
            if run.clip is not None:
                nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
            try:
                run.optimizer.step()
            except gradwatch.NonFiniteError as error:
                stopped = f"on_nonfinite='raise' stopped training at step {error.step}"
                break
            if run.scheduler is not None:
                run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return Outcome(
        scenario=scenario,
        seed=seed,
        losses=losses,
        alerts=list(gw.alerts),
        diagnoses=list(getattr(gw, "diagnoses", None) or []),
        seconds=seconds,
        steps=len(losses) if stopped is None else len(losses) - 1,
        stopped=stopped,
    )


def median(values: Iterable[float]) -> float | None:
    """The median of ``values``, None when there are none."""
    values = list(values)
    return statistics.median(values) if values else None
