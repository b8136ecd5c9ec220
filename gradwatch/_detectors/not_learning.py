"""``not_learning``: the loss does not fall beyond its own noise floor.

The reference notes' test: train with learning rate 0 to see how much the loss moves from
data alone, then compare the real run with it. Two versions:

* with the learning-rate-zero baseline (``gradwatch.check(..., baseline=True)``): the
  loss of every step's batch with the weights frozen is known, so the real run is
  compared with it batch for batch (the data's variance cancels): the run learns if,
  over the last quarter of the steps, the median improvement over the baseline exceeds
  ``not_learning_z`` standard errors of that paired difference and
  ``not_learning_min_drop`` of the baseline's level;
* without it, the run's own noise floor: the step-to-step noise of the loss (from first
  differences, so a steady fall is not mistaken for noise). The run learns if the median
  loss of the last quarter of the steps is below that of the first quarter by more than
  ``not_learning_z`` standard errors and ``not_learning_min_drop`` of the initial level.
  A flat loss is a warning only when the weights demonstrably barely move (update ratio
  ‖Δw‖/‖w‖ below 1e-6 per step, e.g. a learning rate of ~0 or frozen parameters), or when
  the loss clearly rises; otherwise a slowly falling loss may just need more steps than
  were taken, so it is an info that suggests the baseline.

When the loss is a cross-entropy, its chance level ln(classes) is known (``chance_loss``):
a loss that starts above chance and falls back to it has not learned anything, so the
fall counts from ``min(start, chance)``. A loss that still sits within ``AT_CHANCE`` of
chance after ``AT_CHANCE_STEPS`` steps is a warning when the steps cannot be right: too
large (median update ratio above ``LARGE_UPDATE``: the rate is too high), or collapsed
``COLLAPSE`` times below the first measured step (the weights outgrew the rate, as Post-LN
transformers do without warmup; then a loss within ``NEAR_CHANCE`` of chance counts).
With ordinary steps it is the plateau many models sit on before they learn: an info.

Warmup-aware: while the learning rate is still rising (a warmup schedule), nothing is
judged, and a rise of the loss is judged only once as many steps again have passed after
the warmup (the ordinary bump as the rate reaches its peak is not a failure).

A loss that learned and then turns back up (a median of ``RELAPSE_SMOOTHING`` steps at
``RELAPSE_RATIO`` times its best, giving back ``RELAPSE_GIVEN_BACK`` of what it had
learned) is a warning at once, warmup or not: a rate that warms up past what the model
takes is the usual cause, and the loss tends to diverge next.

The run is judged from its first step on, once ``not_learning_steps`` steps that updated
the weights (not skipped by a policy or a GradScaler) have a recorded loss,
and only while the history still holds step 0: a model that learned and then plateaued
has converged; it is not "not learning".
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch._alerts import Alert, Severity
from gradwatch._detectors._base import DetectorContext, trend_detector
from gradwatch._detectors._common import MAD_TO_SD, median, nanmedian, step_noise
from gradwatch._format import fmt
from gradwatch._history import History
from gradwatch._measure.record import StepRecord

REMEDY = (
    "check that the optimizer holds the model's parameters and they require grad, and that "
    "the learning rate is not ~0 (or raise it slightly); look for vanishing gradients "
    "(gradwatch per-layer norms): use He/Xavier initialisation, ReLU/GELU instead of "
    "sigmoid/tanh, BatchNorm/LayerNorm and residual connections; compare with the "
    "learning-rate-zero baseline: gradwatch.check(..., baseline=True)."
)
#: For a loss that rose or sits at chance with weights that do move: never "raise it".
REMEDY_TOO_HIGH = (
    "lower the learning rate (3-10x) and warm it up over the first few hundred steps; "
    "check that the labels match the inputs (a shuffled or shifted target also sits at "
    "chance); compare with the learning-rate-zero baseline: "
    "gradwatch.check(..., baseline=True)."
)
#: For weights that barely move.
REMEDY_FROZEN = (
    "check that the optimizer holds the model's parameters and that they require grad, "
    "and that the learning rate (or its schedule) is not ~0."
)

#: A typical update ratio above this per step is a learning rate on the high side (healthy
#: training moves weights by about 1e-4..1e-2 of their norm per step).
LARGE_UPDATE = 0.03

#: For steps that collapsed far below their start while the loss sits at chance.
REMEDY_COLLAPSED = (
    "warm the learning rate up over the first few hundred steps (e.g. "
    "torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)); "
    "for a Post-LN transformer (nn.TransformerEncoderLayer(norm_first=False), BERT-style "
    "blocks) use Pre-LN (norm_first=True), which trains without warmup; lower the peak rate."
)
#: A loss (median of this many steps) that rises to ``RELAPSE_RATIO`` times its best and
#: gives back ``RELAPSE_GIVEN_BACK`` of what it had learned since the start relapsed.
RELAPSE_SMOOTHING = 5
RELAPSE_RATIO = 2.0
RELAPSE_GIVEN_BACK = 0.25

#: Steps that shrank this many times below the first measured one have collapsed.
COLLAPSE = 100.0

#: A loss within this fraction of chance (ln(classes)) has not left it.
AT_CHANCE = 0.02
#: With collapsed steps, a loss within this fraction of chance has not left it either.
NEAR_CHANCE = 0.05
#: Steps (after any warmup) a loss must sit at chance before it is a warning.
AT_CHANCE_STEPS = 100

#: An update ratio ‖Δw‖/‖w‖ below this per step means the weights are effectively frozen
#: (healthy training moves weights by ~1e-4..1e-2 of their norm per step).
FROZEN_UPDATE = 1e-6

#: Efficiency of the median against the mean for normal data: se(median) = 1.2533 s/√m for s.d. s.
_MEDIAN_SE = 1.2533


def _quarter(n: int) -> int:
    return max(3, n // 4)


@trend_detector
def detect_not_learning(history: History, context: DetectorContext) -> list[Alert]:
    config = context.config
    if not len(history) or history[0].step != 0:
        return []
    losses = history.series("loss")  # one slice of the history's loss column
    finite = np.isfinite(losses)
    # Only steps that updated the weights count: a step skipped by a policy or by a
    # GradScaler gave the model no chance to learn.
    taken = finite & (history.series("taken") > 0)
    if int(taken.sum()) < config.not_learning_steps or not finite[-1]:
        return []
    relapse = _relapse(history, losses)
    if relapse is not None:
        return [relapse]
    warmup = warmup_steps(history)
    if warmup is None:
        return []  # the learning rate is still rising: too early to judge
    if context.loss_baseline is not None:
        alert = _against_baseline(history[-1].step, losses, context)
    else:
        alert = _against_own_noise(history, losses, context, warmup)
    return [alert] if alert is not None else []


def _relapse(history: History, losses: np.ndarray) -> Alert | None:
    """A loss that learned, then gave much of it back: judged during a warmup too, since
    a rate that warms up past what the model can take is what it usually means."""
    series = losses[np.isfinite(losses)]
    if series.size < 2 * RELAPSE_SMOOTHING:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(series, RELAPSE_SMOOTHING)
    smoothed = nanmedian(windows, axis=-1)  # a finite series: the median of each window
    start, now = float(smoothed[0]), float(smoothed[-1])
    best_at = int(np.argmin(smoothed[:-1]))
    best = float(smoothed[best_at])
    learned = start - best
    if not (best > 0 and learned > 0 and now >= RELAPSE_RATIO * best):
        return None
    if now - best < RELAPSE_GIVEN_BACK * learned:
        return None
    latest = history.latest
    step = latest.step if latest is not None else 0
    best_step = step - (smoothed.size - 1 - best_at)
    return Alert(
        kind="not_learning",
        severity="warning",
        step=step,
        layer=None,
        message=f"The loss learned, then rose again: {fmt(now)} now against its best of "
        f"{fmt(best)} around step {best_step} (medians of {RELAPSE_SMOOTHING} steps; it "
        f"started at {fmt(start)}), giving back {fmt((now - best) / learned)} of what it had "
        "learned. A loss that turns back up is usually a learning rate that became too "
        "high (a warmup past what the model takes), and it tends to diverge next.",
        value=now / best,
        threshold=RELAPSE_RATIO,
        remedy=REMEDY_TOO_HIGH,
    )


def warmup_steps(history: History) -> int | None:
    """Steps of learning-rate warmup seen so far: 0 without one, None while it lasts.

    A warmup is a learning rate that rises over the first steps; it is over once the
    rate has not risen for the last few steps (or the schedule turned down).
    """
    rates = history.series("lr")
    known = np.flatnonzero(np.isfinite(rates))
    if known.size < 2:
        return 0
    rates = rates[known]
    peak = int(np.argmax(rates))
    if not rates[0] < 0.9 * rates[peak]:
        return 0  # constant or decaying from the start
    recent = rates[-min(3, rates.size) :]
    if peak >= rates.size - 1 or bool(np.all(np.diff(recent) > 0)):
        return None
    return int(known[peak])


def _against_baseline(step: int, losses: np.ndarray, context: DetectorContext) -> Alert | None:
    config = context.config
    baseline = np.full(losses.shape, np.nan)
    known = min(len(losses), len(context.loss_baseline or ()))
    baseline[:known] = np.asarray((context.loss_baseline or ())[:known], dtype=np.float64)
    both = np.isfinite(losses) & np.isfinite(baseline)
    if int(both.sum()) < config.not_learning_steps // 2:
        return None
    improvement = (baseline - losses)[both]
    base = baseline[both]
    m = _quarter(improvement.size)
    gain = float(np.median(improvement[-m:]))
    noise = step_noise(improvement)
    se = _MEDIAN_SE * noise / math.sqrt(m) if math.isfinite(noise) else 0.0
    level = float(np.median(np.abs(base)))
    spread = MAD_TO_SD * float(np.median(np.abs(base - np.median(base))))
    needed = max(config.not_learning_z * se, config.not_learning_min_drop * level)
    if gain > needed:
        return None
    return Alert(
        kind="not_learning",
        severity="warning",
        step=step,
        layer=None,
        message=f"Over the last {m} steps the loss is only {fmt(gain)} below the "
        f"learning-rate-zero baseline on the same batches (weights frozen: loss {fmt(level)}, "
        f"fluctuating by {fmt(spread)} from batch to batch); it needed to be more than "
        f"{fmt(needed)} lower to count as learning. The model is not learning beyond the "
        "noise floor.",
        value=gain,
        threshold=needed,
        remedy=REMEDY,
    )


def _median_update(record: StepRecord) -> float:
    """The median update ratio over a record's layers, NaN ones left out (NaN when none
    is finite), cached on the record: this detector reads every record of the history
    each time it judges, and ``np.nanmedian`` costs ~20 us a call."""
    cached = record.derived.get("median_update")
    if cached is None:
        ratio = record.update_ratio
        value = math.nan
        if ratio is not None and np.isfinite(ratio).any():
            value = median(ratio[~np.isnan(ratio)])
        cached = record.derived["median_update"] = np.array(value)
    return float(cached)


def _against_own_noise(
    history: History, losses: np.ndarray, context: DetectorContext, warmup: int
) -> Alert | None:
    config = context.config
    series = losses[np.isfinite(losses)]
    m = _quarter(series.size)
    start, end = median(series[:m]), median(series[-m:])
    latest = history.latest
    chance = latest.chance_loss if latest is not None else None
    # A loss that started above chance (a poor start, a spike) and fell back to chance
    # learned nothing: count the fall from chance.
    reference = min(start, chance) if chance else start
    fall = reference - end
    noise = step_noise(series)
    se = _MEDIAN_SE * noise * math.sqrt(2.0 / m) if math.isfinite(noise) else 0.0
    level = abs(reference)
    needed = max(config.not_learning_z * se, config.not_learning_min_drop * level)
    steps = latest.step + 1 if latest is not None else len(series)
    after_warmup = steps - warmup
    at_chance = bool(chance) and end > (1.0 - AT_CHANCE) * float(chance or 0.0)
    # Collapsed steps are rarer, so their loss may sit a little further from chance.
    near_chance = bool(chance) and end > (1.0 - NEAR_CHANCE) * float(chance or 0.0)
    may_be_stuck = after_warmup >= AT_CHANCE_STEPS and (at_chance or near_chance)
    if fall > needed and not may_be_stuck:
        return None  # learning, and not at chance: no need to read every record's steps
    updates = [
        update
        for r in history
        if not (r.skipped or r.amp_skipped) and not math.isnan(update := _median_update(r))
    ]
    typical_update = median(np.asarray(updates[-3:])) if updates else math.nan
    # At chance is a failure only with steps that cannot be right: too large to learn
    # (the rate is too high), or collapsed far below where they started (the weights
    # outgrew the rate: typical of Post-LN transformers trained without warmup). A loss
    # at chance with ordinary steps may be the plateau many models sit on first.
    collapsed = bool(updates) and typical_update * COLLAPSE < updates[0]
    stuck = may_be_stuck and (
        (at_chance and typical_update > LARGE_UPDATE) or (near_chance and collapsed)
    )
    if fall > needed and not stuck:
        return None
    frozen = bool(updates) and max(updates) < FROZEN_UPDATE
    # The ordinary bump as a warmup reaches its peak is not a rise: give the run as many
    # steps again after the warmup before calling a higher loss a failure.
    # Rising is judged against where the loss started, not against chance: a loss that
    # started above chance and fell towards it did not rise.
    rise = end - start
    rising = rise > needed and rise > 0.1 * abs(start) and after_warmup > warmup
    severity: Severity = "warning" if frozen or rising or stuck else "info"
    quarter = f"medians of the first and last {m} of {steps} steps"
    if rising:
        what = f"The loss rose from {fmt(start)} to {fmt(end)} ({quarter})"
    elif at_chance or stuck:
        what = (
            f"The loss went from {fmt(start)} to {fmt(end)} ({quarter}) and stays at chance: "
            f"a uniform guess over the classes scores ln(classes) = {fmt(float(chance or 0))}"
        )
        if stuck and collapsed:
            what += (
                f", while the steps shrank from {fmt(updates[0])} to {fmt(typical_update)} "
                "of the weights' size (update ratio)"
            )
        elif stuck:
            what += f", with steps of {fmt(typical_update)} of the weights' size"
    else:
        what = (
            f"The loss went from {fmt(start)} to {fmt(end)} ({quarter}), a fall of "
            f"{fmt(fall)} that does not exceed its noise floor ({fmt(needed)}: "
            f"{fmt(config.not_learning_z)} standard errors of its step-to-step noise of "
            f"{fmt(noise)})"
        )
    if frozen:
        why = (
            f" The weights barely move: the update ratio ‖Δw‖/‖w‖ is at most "
            f"{fmt(max(updates))} per step."
        )
    elif severity == "info":
        why = (
            " It may only need more steps; gradwatch.check(..., baseline=True) compares the "
            "run with the learning-rate-zero baseline batch for batch."
        )
    else:
        why = ""
    if frozen:
        remedy = REMEDY_FROZEN
    elif stuck and collapsed:
        remedy = REMEDY_COLLAPSED
    elif rising or (stuck and typical_update > LARGE_UPDATE):
        remedy = REMEDY_TOO_HIGH
    else:
        remedy = REMEDY
    return Alert(
        kind="not_learning",
        severity=severity,
        step=latest.step if latest is not None else 0,
        layer=None,
        message=f"{what}.{why} The model is not learning.",
        value=fall,
        threshold=needed,
        remedy=remedy,
    )
