"""Step policies: what the watcher does to a step before the update, beyond measuring it.

- **clip**: a :mod:`~gradwatch._clip` clipper scales the gradients in place, on the device,
  after the statistics were measured (so ``total/grad_norm`` is the norm before clipping);
  its coefficient goes to the host with the rest of the step (``total/clip_coef``).
- **skip spikes** (``skip_spikes=z``, off by default): a step whose loss or total gradient
  norm lies more than ``z`` standard deviations above the mean of the last
  ``spike_window`` steps is dropped - every ``.grad`` is set to None so that torch
  optimizers leave the parameters *and* their state (moments, step counters) untouched,
  as ``on_nonfinite="skip"`` does. This is the rule large-model trainers use to ride
  out loss spikes (e.g. OLMo-core's ``SkipStepOptimizer``: rolling window of 128 steps,
  6 sigma). Deciding *before* the update needs this step's loss and norm on the host:
  the one host sync it costs per step (shared with ``on_nonfinite="skip"|"raise"``).
- **skip**: a step dropped by ``skip_spikes`` or ``on_nonfinite="skip"`` has every
  ``.grad`` set to None before the update (:meth:`StepPolicies.skip`).
- **count**: clipped and skipped steps, for :attr:`gradwatch.Watcher.clipped_steps` etc.

Whether a non-finite step is skipped or raised is decided in the watcher
(``_apply_host_policies``), which also orders the alerts and the history around it.
"""

from __future__ import annotations

import collections
import difflib
import math
import warnings
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gradwatch._alerts import Alert
from gradwatch._clip import AGC, Clipper, ClipTarget, resolve_clip
from gradwatch._config import WatchConfig
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.model import ModelMap
from gradwatch._measure.record import StepRecord
from gradwatch._measure.step import PendingStep

SPIKE_REMEDY = (
    "look at the batch of that step (bad or duplicated data), lower the learning rate or "
    "add warm-up, and clip gradients (clip=1.0 or gradwatch.ZClip()); a step that keeps "
    "being skipped means the run has moved, not spiked."
)


class RollingStats:
    """Mean and sample std of the last ``window`` finite values (host side)."""

    def __init__(self, window: int) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=window)

    def zscore(self, value: float, min_count: int) -> float | None:
        """How many stds ``value`` lies above the mean; None while there are too few values."""
        if len(self.values) < min_count:
            return None
        data = np.fromiter(self.values, dtype=np.float64)
        std = float(data.std(ddof=1))
        mean = float(data.mean())
        if not math.isfinite(value):
            return math.inf
        if std == 0.0:
            return math.inf if value > mean else 0.0
        return (value - mean) / std

    def add(self, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            self.values.append(value)


class SpikeSkipper:
    """Decides whether a step's loss or gradient norm spikes far above its rolling stats.

    Statistics cover the last ``window`` finite values *including* earlier spikes (so a
    lasting change of regime is absorbed instead of skipping forever); the rule is active
    once half a window has been seen. Non-finite values are left to ``on_nonfinite``.
    """

    def __init__(self, z_thresh: float, window: int) -> None:
        self.z_thresh = z_thresh
        self.window = window
        self.min_count = max(2, window // 2)
        self.loss = RollingStats(window)
        self.grad_norm = RollingStats(window)

    def check(self, record: StepRecord) -> Alert | None:
        """The alert for a step to skip, or None; then adds the step to the statistics."""
        alert = None
        checks = [("grad_spike", "total gradient norm", record.total_grad_norm, self.grad_norm)]
        if record.loss is not None:
            checks.insert(0, ("loss_spike", "loss", record.loss, self.loss))
        for kind, what, value, stats in checks:
            if alert is None and math.isfinite(value):
                z = stats.zscore(value, self.min_count)
                if z is not None and z > self.z_thresh:
                    alert = Alert(
                        kind=kind,
                        severity="warning",
                        step=record.step,
                        layer=None,
                        message=(
                            f"The {what} ({value:.4g}) is {z:.1f} standard deviations above "
                            f"its mean over the last {len(stats.values)} steps; the step was "
                            "skipped (skip_spikes): parameters and optimizer state unchanged."
                        ),
                        value=float(value),
                        threshold=self.z_thresh,
                        remedy=SPIKE_REMEDY,
                    )
        self.loss.add(record.loss)
        self.grad_norm.add(record.total_grad_norm)
        return alert


class ParamLayout:
    """What a clipper needs to know of each watched parameter besides its layer, read
    once at attach from the model walk: every module that holds it (a tied head holds
    the embedding's weight) and the axis that indexes its units."""

    def __init__(self, index: LayerIndex, model: ModelMap | None) -> None:
        holders: dict[int, list[str]] = {}
        axes: dict[int, int] = {}
        for info in model.modules if model is not None else ():
            module = info.module
            if module is None:
                continue
            for local, param in module.named_parameters(recurse=False):
                holders.setdefault(id(param), []).append(info.name)
                if local == "weight" and param.ndim == 2 and _is_hf_conv1d(module):
                    axes[id(param)] = 1  # Conv1D's weight is (in, out): units are columns
        self.holders = tuple(
            tuple(holders.get(id(param), ())) or (index.names[layer],)
            for param, layer in zip(index.params, index.param_layer)
        )
        self.unit_axes = tuple(axes.get(id(param), 0) for param in index.params)
        #: Every module name that holds a parameter, in walk order.
        self.module_names = tuple(dict.fromkeys(n for names in self.holders for n in names))


def _is_hf_conv1d(module: torch.nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (recognised by name: transformers need not be imported)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


#: The config each clipper was last attached with (both weakly held).
_LAST_CONFIG: weakref.WeakKeyDictionary[Clipper, weakref.ref[WatchConfig]] = (
    weakref.WeakKeyDictionary()
)


def _check_clipper(
    clipper: Clipper, layout: ParamLayout, model_name: str, config: WatchConfig
) -> None:
    """Tell, at attach, of a clipper this run may not use as the user meant it.

    A clipper that already clipped steps carries its running statistics into this run:
    a warning says so and how to start afresh (a notebook cell run again, a second
    ``fit()`` on purpose: continuing may be wanted, so it is not refused). The same config
    object attached again is a replay of one run's settings (``check(try_fixes=True)``
    trains each fix trial with the original run's config): the clipper starts afresh, as
    the original run did. An ``AGC`` exclude name that matches nothing is refused.
    """
    last = _LAST_CONFIG.get(clipper)
    _LAST_CONFIG[clipper] = weakref.ref(config)
    seen = clipper.steps_seen
    if seen and last is not None and last() is config:
        clipper.reset()
        seen = 0
    if seen:
        name = type(clipper).__name__
        warnings.warn(
            f"clip: this {name} instance already clipped {seen} step(s) of another run; "
            "its running statistics carry over into this one (its first thresholds come "
            f"from that run's gradient norms). For a fresh start pass a new instance, "
            f"e.g. clip={name}(), or call .reset() on it first; to continue that run on "
            "purpose, ignore this warning.",
            UserWarning,
            stacklevel=5,
        )
    if isinstance(clipper, AGC):
        known = set(layout.module_names)
        for name in clipper.exclude:
            if name in known:
                continue
            close = difflib.get_close_matches(name, layout.module_names, n=3)
            shown = ", ".join(map(repr, close or layout.module_names[-3:]))
            suggestion = f" Did you mean {shown}?" if close else f" The last ones are {shown}."
            raise ValueError(
                f"AGC(exclude) names {name!r}, which matches no module of the model "
                f"({model_name}) that holds a parameter, so it would exclude nothing. Name "
                f"modules as in model.named_modules() (the classifier, e.g. 'fc' or "
                f"'lm_head').{suggestion}"
            )


class StepPolicies:
    """The clipper, the spike skipper and the counters of one watcher."""

    def __init__(
        self, config: WatchConfig, index: LayerIndex, model: ModelMap | None = None
    ) -> None:
        self.clipper: Clipper | None = resolve_clip(config.clip)
        self._layout = ParamLayout(index, model)
        if self.clipper is not None:
            model_name = model.root.type_name if model is not None else "the model"
            _check_clipper(self.clipper, self._layout, model_name, config)
        self.spikes = (
            SpikeSkipper(float(config.skip_spikes), config.spike_window)
            if config.skip_spikes is not None
            else None
        )
        self.needs_host = config.on_nonfinite != "warn" or self.spikes is not None
        self._params = index.params
        self._layer_names = index.names
        self._param_layer = index.param_layer
        self.clipped_steps = 0
        # The clipper's step counter after our last step (adaptive clippers: a change in
        # between means another watcher stepped it too).
        self._clipper_steps = self.clipper.steps_seen if self.clipper is not None else 0
        self._shared_warned = False
        self.skipped_steps = 0
        self.amp_skipped_steps = 0

    def clip(self, params: Sequence[Tensor], total_norm: Tensor) -> Tensor | None:
        """Clip the present gradients in place; the coefficient (device scalar) or None."""
        if self.clipper is None:
            return None
        with torch.no_grad():
            target = ClipTarget([], [], [])
            layout = self._layout
            for position, (param, layer) in enumerate(zip(params, self._param_layer)):
                if param.grad is not None:  # a host-side attribute check, not a tensor read
                    target.params.append(param)
                    target.grads.append(param.grad)
                    target.layers.append(self._layer_names[layer])
                    target.holders.append(layout.holders[position])
                    target.unit_axes.append(layout.unit_axes[position])
            self._check_shared(self.clipper)
            coef = self.clipper.clip_(target, total_norm).float()
            self._clipper_steps = self.clipper.steps_seen
            return coef

    def _check_shared(self, clipper: Clipper) -> None:
        """Warn once if another run stepped this clipper since our last step: one adaptive
        clipper shared by two open watchers mixes both runs' gradient statistics (a host
        comparison of two step counters, no tensor read)."""
        if self._shared_warned or clipper.steps_seen == self._clipper_steps:
            return
        self._shared_warned = True
        name = type(clipper).__name__
        warnings.warn(
            f"clip: this {name} instance is also clipping another run's steps (it saw "
            f"{clipper.steps_seen - self._clipper_steps} step(s) that were not this "
            "watcher's), so its thresholds mix both runs' gradient norms. Give each "
            f"gradwatch.watch() its own instance, e.g. clip={name}().",
            UserWarning,
            stacklevel=2,
        )

    def values(self, coef: Tensor | None, found_inf: Tensor | None) -> dict[str, Tensor]:
        """The policies' device values for the step vector, by segment name: the clip
        coefficient when clipping, the GradScaler's inf/NaN flag when there is one."""
        values: dict[str, Tensor] = {}
        if coef is not None:
            values["clip_coef"] = coef.reshape(1)
        if found_inf is not None:
            values["amp_found_inf"] = found_inf.reshape(1)
        return values

    def skip(self, pending: PendingStep) -> None:
        """Drop this step: with every ``.grad`` set to None, torch optimizers leave both the
        parameters and their state (moments, step counters) untouched."""
        for param in self._params:
            param.grad = None
        pending.skipped = True

    def check_spike(self, record: StepRecord) -> Alert | None:
        if self.spikes is None or record.amp_skipped:
            return None
        return self.spikes.check(record)

    def observe(self, record: StepRecord) -> None:
        """Count the step once its statistics reached the host."""
        if record.clip_coef is not None and record.clip_coef < 1.0 and not record.amp_skipped:
            self.clipped_steps += 1
        if record.skipped:
            self.skipped_steps += 1
        if record.amp_skipped:
            self.amp_skipped_steps += 1
