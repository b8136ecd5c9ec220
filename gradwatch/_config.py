"""Options of :func:`gradwatch.watch`, gathered in one frozen, validated dataclass.

Every option a user can pass to ``watch(**options)`` is a field of :class:`WatchConfig`,
declared once with its default and its rule (see ``gradwatch/_validate.py``). The rules
are applied here, at attach time, so that a typo or a negative interval fails at once
with a message naming the option, what was expected, what arrived, how to fix it and the
default, instead of at step 10,000.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from gradwatch._clip import resolve_clip
from gradwatch._measure.amp import validate_scaler
from gradwatch._validate import (
    Checked,
    Flag,
    IntAtLeast,
    Number,
    OneOf,
    OrNone,
    check_fields,
    rule,
)

NonfinitePolicy = Literal["warn", "skip", "raise"]
NONFINITE_POLICIES: tuple[str, ...] = ("warn", "skip", "raise")
DistributedMode = Literal["auto", "off"]
DISTRIBUTED_MODES: tuple[str, ...] = ("auto", "off")
TensorBoardTags = Literal["stable", "ordered"]
TENSORBOARD_TAGS: tuple[str, ...] = ("stable", "ordered")

# Rules shared by several options.
_FRACTION = Number(exclusive_minimum=0, maximum=1, hint="It is a fraction in (0, 1].")
_FRACTION_OF_UNITS = Number(
    exclusive_minimum=0, maximum=1, hint="It is a fraction of the layer's units, in (0, 1]."
)


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    """Everything :func:`gradwatch.watch` can be told, with documented defaults.

    Attributes:
        log_every: write per-layer scalars to the sinks every this many optimizer steps
            (alerts are always written at once). Statistics are still measured and
            checked every step.
        update_ratio_every: measure the update ratio ‖Δw‖/‖w‖ every this many steps;
            ``0`` switches it off. A sampled step keeps one copy of the parameters
            between the measurement and the update: transient on an accelerator (freed
            right after); on the CPU, for up to 256 MiB of weights, kept and refilled
            in place (fresh pages cost more there than the copy).
        weight_norm_every: read the weights for their norms ‖w‖ every this many steps
            (and on every update-ratio step); ``1`` reads them every step. Weights move
            slowly (~1e-3 of their norm per healthy step), so between readings the
            latest ‖w‖ stands in (detectors that divide by it use it), and reading them
            on one step in ten halves the memory traffic of the per-step norms.
            Gradients are read every step; a NaN/inf weight is still caught at once,
            through the loss and gradients it poisons.
        history: how many steps of statistics the host-side ring buffer keeps for the
            detectors and the report. Memory is bounded by it, however long the run. It
            must hold what the detectors read (see ``_history_needs``: 20 steps with the
            defaults); a shorter one is refused rather than silently disabling them.
        on_nonfinite: what a NaN/inf in gradients, weights or loss does: ``"warn"``
            raises an alert and carries on; ``"skip"`` also leaves the parameters and
            optimizer state untouched for that step; ``"raise"`` stops training with
            :class:`gradwatch.NonFiniteError`.
        flush_secs: how often TensorBoard's writer flushes scalars to disk (alerts are
            flushed as soon as they are raised).
        activation_every: measure activation statistics (``act_*/<layer>``) every this
            many steps; ``0`` switches them off. Forward hooks exist only during sampled
            steps, so other steps pay nothing.
        activation_eval: also measure forwards in eval mode or without gradients
            (validation loops); by default only training forwards count.
        saturation_threshold: ``saturation`` warns when at least this fraction of a
            bounded activation's outputs (sigmoid, tanh, ...) sits at its bounds, at
            the last two sampled steps.
        dead_units_threshold: ``dead_units`` warns when at least this fraction of a
            ReLU's units output zero for every sample of the batch, at the last two
            sampled steps.
        poor_init_ratio: ``poor_init`` warns when, at the first sampled steps, the
            activation scale drifts geometrically by at least this factor from the first
            to the last Linear/Conv layer (an info alert from its square root).
        poor_init_gain: ``poor_init`` also warns when Linear/Conv layers multiply the
            scale of their input (the activation before them) by a median of at least
            this much: weights too large (N(0, 1) weights give sqrt(fan_in); Glorot/He
            initialisation at most 5/3).
        poor_init_steps: ``poor_init`` looks at sampled steps before this step only:
            initialisation is judged at the start of training.
        locate_nonfinite: hook every module to name the module that *produced* the
            first NaN/inf of a step (forward or backward) in the ``nonfinite`` alert.
            Costs a few small kernels per module call, far less than
            ``torch.autograd.detect_anomaly``; off by default.
        clip: gradient clipping before each update, after the statistics were measured:
            ``None`` (off), a number (clip the global L2 gradient norm to it, as
            ``torch.nn.utils.clip_grad_norm_``), or a clipper (``gradwatch.ClipNorm``,
            ``ClipValue``, ``AGC``, ``AutoClip``, ``ZClip``). The clip coefficient is
            logged as ``total/clip_coef``.
        scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop, or None. Statistics
            and clipping then act on unscaled gradients (gradwatch calls
            ``scaler.unscale_(optimizer)`` once per step unless you did), and a step the
            scaler skips for inf/NaN is logged as an ``amp_skip`` info alert.
        skip_spikes: ``None`` (off) or a z-score: skip a step (parameters and optimizer
            state untouched) whose loss or total gradient norm is more than this many
            standard deviations above its mean over the last ``spike_window`` steps.
            Costs one host sync per step.
        spike_window: how many recent steps the rolling spike statistics cover: those of
            ``skip_spikes`` and those of the ``loss_spike``/``grad_spike`` detectors.
        distributed: ``"auto"``: when a ``torch.distributed`` process group with more
            than one rank is initialised, statistics are global (one all-reduce per step,
            so every rank must call ``watch()`` and step together) and only rank 0 writes
            logs. ``"off"``: this rank is watched alone (no collectives) and writes its
            own logs, e.g. a model only rank 0 trains.
        flow_image_every: with a ``logdir``, draw the gradient-flow picture (layers x
            steps heat map of log10 gradient norm, input side at the top) into
            TensorBoard's Images tab every this many steps, and once at ``close()``;
            ``0`` switches it off. Drawn with numpy alone (no matplotlib) in a few
            milliseconds on the host.
        tensorboard_tags: ``"stable"``: the TensorBoard tags are the documented, stable
            names (``grad_norm/<layer>``, ``total/loss``, ``act_<stat>/<layer>``), which
            dashboards and scripts can rely on; TensorBoard lists them alphabetically.
            ``"ordered"``: spelled for the first screen (``1_total/loss``,
            ``2_grad_norm/03-<layer>``, ...): totals and gradient flow first, layers in
            depth order wherever a view sorts by name. ``gradwatch report`` and the
            public sinks read and get the stable names either way.

    Detector thresholds (see ``gradwatch/_detectors/`` and the README for the physics):

        exploding_rel_grad: a layer whose gradient is this many times larger than its
            weights (‖g‖/‖w‖) is ``exploding`` (warning; error at the square of it, or when
            the gradient norm overflows). At 1e4, even SGD with lr=1e-4 would more than
            double the layer in one step.
        exploding_growth: the total gradient norm growing by this factor within
            ``trend_window`` steps, mostly step over step, while the loss does not fall,
            is ``exploding`` (a trend visible before the run reaches NaN).
        trend_window: how many recent steps the trend detectors (``exploding`` growth,
            ``vanishing``) look at; per-layer values are smoothed over it by a median.
            ``vanishing`` and ``not_learning`` judge every ``trend_window // 2`` steps
            (at most 10; each step is in at least two of their windows) and at
            ``close()``, so their alerts may come a few steps after the trend began.
        vanishing_ratio: a weight layer whose loss sensitivity ‖g‖·‖w‖ is below this
            fraction of the largest among the layers after it (closer to the output) is
            ``vanishing``: warning below it, error below its square, info between it and
            its 3/4 power (borderline). Exactly zero gradients (while later layers get
            some) count as a ratio of 0.
        vanishing_floor: when even the most sensitive layer's ‖g‖·‖w‖ is below this
            fraction of the loss, no layer can move the loss: ``vanishing`` (error).
        spike_z: a loss or total gradient norm this many robust standard deviations
            (median/MAD over the previous ``spike_window`` steps) above its rolling median
            is a ``loss_spike``/``grad_spike``...
        spike_ratio: ...and also at least this many times the rolling median.
        spike_warmup: how many previous finite values a spike detector needs before it
            judges (early steps are volatile by nature).
        not_learning_steps: ``not_learning`` judges a run only after this many steps with
            a recorded loss, and only while the history still holds the run's first
            steps (a model that learned and then plateaued has converged, it is not
            "not learning").
        not_learning_z: the loss must fall by more than this many noise standard errors
            (the loss's own step-to-step noise, or the learning-rate-zero baseline of
            ``check(..., baseline=True)``) to count as learning.
        not_learning_min_drop: ...and by more than this fraction of its initial level.
    """

    log_every: int = field(default=1, metadata=rule(IntAtLeast(1)))
    update_ratio_every: int = field(
        default=10, metadata=rule(IntAtLeast(0, hint="Use 0 to switch update ratios off."))
    )
    weight_norm_every: int = field(
        default=10, metadata=rule(IntAtLeast(1, hint="Use 1 to read the weights every step."))
    )
    history: int = field(
        default=512, metadata=rule(IntAtLeast(2, hint="It is how many steps the history keeps."))
    )
    on_nonfinite: NonfinitePolicy = field(default="warn", metadata=rule(OneOf(*NONFINITE_POLICIES)))
    flush_secs: float = field(
        default=30.0, metadata=rule(Number(exclusive_minimum=0, hint="It is in seconds."))
    )
    activation_every: int = field(
        default=10, metadata=rule(IntAtLeast(0, hint="Use 0 to switch activation statistics off."))
    )
    activation_eval: bool = field(default=False, metadata=rule(Flag()))
    saturation_threshold: float = field(default=0.5, metadata=rule(_FRACTION_OF_UNITS))
    dead_units_threshold: float = field(default=0.75, metadata=rule(_FRACTION_OF_UNITS))
    poor_init_ratio: float = field(
        default=10000.0,
        metadata=rule(
            Number(exclusive_minimum=1, hint="It is a factor of activation scale across depth.")
        ),
    )
    poor_init_gain: float = field(
        default=3.5,
        metadata=rule(
            Number(exclusive_minimum=2, hint="Healthy initialisations give at most 5/3.")
        ),
    )
    poor_init_steps: int = field(default=20, metadata=rule(IntAtLeast(1)))
    locate_nonfinite: bool = field(default=False, metadata=rule(Flag()))
    clip: Any = field(default=None, metadata=rule(Checked(resolve_clip)))
    scaler: Any = field(default=None, metadata=rule(Checked(validate_scaler)))
    skip_spikes: float | None = field(
        default=None,
        metadata=rule(
            OrNone(
                Number(exclusive_minimum=0),
                hint="Pass a z-score such as skip_spikes=6.0, or None to never skip spikes.",
            )
        ),
    )
    spike_window: int = field(
        default=128,
        metadata=rule(
            IntAtLeast(4, hint="It is how many recent steps the spike statistics cover.")
        ),
    )
    exploding_rel_grad: float = field(
        default=1e4,
        metadata=rule(Number(exclusive_minimum=1, hint="It is a ratio ‖g‖/‖w‖ far above 1.")),
    )
    exploding_growth: float = field(
        default=100.0,
        metadata=rule(Number(exclusive_minimum=1, hint="It is a growth factor above 1.")),
    )
    trend_window: int = field(
        default=10,
        metadata=rule(
            IntAtLeast(3, hint="It is how many recent steps the trend detectors look at.")
        ),
    )
    vanishing_ratio: float = field(default=1e-2, metadata=rule(_FRACTION))
    vanishing_floor: float = field(default=1e-7, metadata=rule(_FRACTION))
    spike_z: float = field(
        default=8.0, metadata=rule(Number(exclusive_minimum=0, hint="It is a robust z-score."))
    )
    spike_ratio: float = field(
        default=3.0,
        metadata=rule(Number(minimum=1, hint="It is a multiple of the rolling median.")),
    )
    spike_warmup: int = field(
        default=8,
        metadata=rule(IntAtLeast(3, hint="It is how many previous values a spike detector needs.")),
    )
    not_learning_steps: int = field(
        default=20,
        metadata=rule(
            IntAtLeast(4, hint="It is how many steps with a loss come before a verdict.")
        ),
    )
    not_learning_z: float = field(
        default=2.0,
        metadata=rule(Number(minimum=0, hint="It is a number of noise standard errors.")),
    )
    not_learning_min_drop: float = field(
        default=1e-3,
        metadata=rule(
            Number(minimum=0, maximum=1, hint="It is a fraction of the initial loss in [0, 1].")
        ),
    )
    distributed: DistributedMode = field(
        default="auto",
        metadata=rule(OneOf(*DISTRIBUTED_MODES, hint="Use 'off' to watch this rank alone.")),
    )
    flow_image_every: int = field(
        default=100,
        metadata=rule(IntAtLeast(0, hint="Use 0 to switch the gradient-flow image off.")),
    )
    tensorboard_tags: TensorBoardTags = field(
        default="stable",
        metadata=rule(OneOf(*TENSORBOARD_TAGS, hint="Use 'ordered' for depth-ordered tag groups.")),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.spike_warmup > self.spike_window:
            raise ValueError(
                f"spike_warmup ({self.spike_warmup}) must be <= spike_window "
                f"({self.spike_window}): the window must hold the warm-up steps."
            )
        self._check_history()

    def _history_needs(self) -> list[tuple[int, str]]:
        """How many steps the detectors need the history to hold, each with who needs it.

        A detector reads its window from the history; a shorter history would not make
        it judge on fewer steps, it would make it never judge (a run then passes as
        healthy). Needs implied by these (``vanishing``'s 5 steps, ``exploding``'s 4,
        ``poor_init``'s 3) are covered: ``trend_window`` >= 3 and
        ``not_learning_steps`` >= 4.
        """
        needs = [
            (
                self.trend_window,
                f"the trend detectors (exploding growth, vanishing) look at the last "
                f"trend_window ({self.trend_window}) steps",
            ),
            (
                self.not_learning_steps,
                f"not_learning judges once not_learning_steps ({self.not_learning_steps}) "
                "steps from step 0 are in the history",
            ),
            (
                self.spike_warmup + 1,
                f"loss_spike and grad_spike need spike_warmup ({self.spike_warmup}) earlier "
                "steps besides the current one",
            ),
        ]
        if self.activation_every:
            needs.append(
                (
                    self.activation_every + 1,
                    "saturation and dead_units compare two sampled steps, activation_every "
                    f"({self.activation_every}) steps apart",
                )
            )
        return needs

    def _check_history(self) -> None:
        unmet = [(need, why) for need, why in self._history_needs() if need > self.history]
        if not unmet:
            return
        minimum = max(need for need, _ in unmet)
        default = type(self).__dataclass_fields__["history"].default
        raise ValueError(
            f"history={self.history} is too short for what the detectors are set to read "
            "(a detector whose window does not fit judges on less than asked, or never): "
            f"{'; '.join(why for _, why in unmet)}. Use history >= {minimum} "
            f"(the default is {default}; memory stays bounded by it), or lower "
            "the options named."
        )

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option ``watch()`` accepts, in declaration order (the fields' names)."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, caller: str = "watch()") -> WatchConfig:
        """Build a config from keyword options, refusing unknown names with a suggestion."""
        known = cls.option_names()
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(
                    f"{caller} got an unknown option {name!r}.{did_you_mean} "
                    f"Valid options are: {', '.join(sorted(known))}."
                )
        return cls(**options)
