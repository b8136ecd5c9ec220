"""The :class:`Watcher`: attaches to a model and optimizer, measures every step, owns
everything it attached, and hands statistics down the pipeline.

Data flows one way (see ``docs/architecture.md``)::

    optimizer step pre-hook ─► step vector on the device (_measure.meter, .step)
        ─► policies (clip, skip) ─► host copy (_measure.transfer) ─► StepRecord
        ─► History ─► detectors ─► AlertBook ─► sinks

The watcher only orchestrates: it decides *when* each stage runs and owns what it
attached; what is measured, and how, belongs to the stages.

The watcher holds the model only through a weak reference and keeps every hook handle
and writer in one ``ExitStack``, so ``close()`` leaves the model exactly as it found it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from gradwatch._alerts import Alert, AlertBook
from gradwatch._config import WatchConfig
from gradwatch._detectors import (
    Detector,
    DetectorContext,
    default_detectors,
    detectors_for_step,
    is_trend_step,
    judges_trend,
)
from gradwatch._detectors.nonfinite import nonfinite_alert
from gradwatch._diagnosis import Diagnosis, ModelFacts, diagnose, diagnoses_markdown
from gradwatch._errors import NonFiniteError
from gradwatch._history import History
from gradwatch._lifecycle import StepGuard, flush_on_sigterm, release_sigterm
from gradwatch._measure.activations import ActivationProbe
from gradwatch._measure.amp import ScalerBridge
from gradwatch._measure.compile import compiled_modules
from gradwatch._measure.distributed import AlertRelay, norm_reducer
from gradwatch._measure.hooks import WatcherHook
from gradwatch._measure.layers import LayerIndex
from gradwatch._measure.localize import NonfiniteLocator
from gradwatch._measure.loss_kind import chance_loss
from gradwatch._measure.meter import StepMeter, read_record
from gradwatch._measure.model import ModelMap
from gradwatch._measure.optimizer import OptimizerFacts, current_lr
from gradwatch._measure.record import StepRecord
from gradwatch._measure.step import PendingStep
from gradwatch._measure.structure import StructureProbes
from gradwatch._measure.transfer import HostCopy
from gradwatch._policies import StepPolicies
from gradwatch._sinks import GuardedSink
from gradwatch._sinks.destinations import Destinations
from gradwatch._sinks.logging_sink import LoggingSink
from gradwatch._sinks.public import Sink

logger = logging.getLogger(__name__)

#: Models being watched right now (weakly held), to refuse watching one twice at once.
_WATCHED: weakref.WeakKeyDictionary[nn.Module, weakref.ref[Watcher]] = weakref.WeakKeyDictionary()
#: Watchers still open, closed at interpreter exit so that buffered events reach disk.
_OPEN: weakref.WeakSet[Watcher] = weakref.WeakSet()


@atexit.register
def _close_open_watchers() -> None:
    for watcher in list(_OPEN):
        with contextlib.suppress(Exception):
            watcher.close()


def logdir_path(logdir: object, *, hint: str = "Pass e.g. logdir='runs/exp1'.") -> str | None:
    """``logdir`` as a path string, or None; any other type is refused, with ``hint``."""
    if logdir is None:
        return None
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(
            f"logdir must be a path (str or os.PathLike) or None, got "
            f"{type(logdir).__name__} {logdir!r}. {hint}"
        )
    return os.fsdecode(os.fspath(logdir))


def _validate_logdir(logdir: object, *, create: bool = True) -> str | None:
    path = logdir_path(logdir)
    if path is None:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"logdir {path!r} is a file, not a directory. Pass a directory path "
            "(it is created if missing), e.g. logdir='runs/exp1'."
        )
    if not create:  # a rank that does not write (distributed, rank != 0) touches nothing
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"logdir {path!r} cannot be created ({error.strerror or error}). Pass a "
            "directory you can write to, or logdir=None to log nothing to disk."
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(
            f"logdir {path!r} is not writable. Pass a directory you can write to, or "
            "logdir=None to log nothing to disk."
        )
    return path


def _validate_model_and_optimizer(model: object, optimizer: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the model itself: gradwatch.watch(model, optimizer)."
        )
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        hint = ""
        if isinstance(optimizer, torch.optim.lr_scheduler.LRScheduler):
            hint = " You passed a learning-rate scheduler; pass scheduler.optimizer instead."
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got "
            f"{type(optimizer).__name__}.{hint} Pass the optimizer that updates the model, "
            "or None and call Watcher.step() yourself after backward()."
        )
    model_params = {id(p) for p in model.parameters()}
    optimizer_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if model_params and not model_params & optimizer_params:
        raise ValueError(
            "optimizer does not update any parameter of model: it was built for another "
            "model (or a copy of this one). Build it from this model's parameters, e.g. "
            "torch.optim.AdamW(model.parameters()), or pass the matching optimizer."
        )


def _refuse_meta_parameters(model: nn.Module, index: LayerIndex) -> None:
    """A parameter on the meta device holds no data: every step would fail to measure it
    (issue 20 item 7). Refuse at attach, naming the model and how to materialise it."""
    meta = [name for name, param in zip(index.param_names, index.params) if param.is_meta]
    if meta:
        raise ValueError(
            f"model ({type(model).__name__}) has {len(meta)} parameter(s) on the meta "
            f"device (e.g. {meta[0]!r}): they hold no data, so gradwatch has nothing to "
            "measure. Materialise the model first (model.to_empty(device=...) and "
            "initialise or load its weights, e.g. with load_state_dict), build the "
            "optimizer from its parameters, then call gradwatch.watch()."
        )


class Watcher:
    """Watches one model (and optionally its optimizer); create it with :func:`watch`.

    Use it as a context manager, or call :meth:`close` when done. ``alerts`` holds every
    alert raised so far; ``history`` the last ``config.history`` steps of statistics.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        logdir: str | os.PathLike[str] | None = None,
        config: WatchConfig | None = None,
        loss_baseline: Sequence[float] | None = None,
        writer: Any = None,
        sinks: Sequence[Sink] | None = None,
        global_step_offset: int = 0,
    ) -> None:
        """See :func:`watch`.

        ``loss_baseline`` is for :func:`gradwatch.check` (``baseline=True``), or anyone
        who measured the same: the learning-rate-zero baseline, i.e. the loss of step
        ``i``'s batch with the weights left as they were, indexed by step. The
        ``not_learning`` detector then judges the loss against it instead of its own noise.
        """
        _validate_model_and_optimizer(model, optimizer)
        # Checked before anything is opened or created (the logdir included).
        destinations = Destinations.check(
            writer=writer, sinks=sinks, logdir=logdir, global_step_offset=global_step_offset
        )
        self.config = config if config is not None else WatchConfig()
        existing = _WATCHED.get(model)
        other = existing() if existing is not None else None
        if other is not None and not other.closed:
            raise ValueError(
                "model is already being watched by an open gradwatch Watcher. Close that "
                "one first (watcher.close() or leave its `with` block), or keep using it."
            )
        # The one walk over the model: the layer index and every probe read it.
        self._model_map = ModelMap.of(model)
        self.index = LayerIndex.from_model(self._model_map)
        if not self.index.params:
            raise ValueError(
                f"model ({type(model).__name__}) has no parameters, so there is nothing to "
                "watch. Pass the module that owns the trainable parameters."
            )
        _refuse_meta_parameters(model, self.index)
        self.device = self.index.device()
        # Local norms, or global ones through one all-reduce per step (distributed).
        reducer = norm_reducer(self.index, self.device, self.config.distributed)
        self.is_writer = reducer.rank == 0
        #: How many ranks' statistics are combined (1 when watched alone).
        self.world_size = reducer.world_size
        self.logdir = _validate_logdir(logdir, create=self.is_writer)
        self._model_ref = weakref.ref(model)
        self._optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
        self.history = History(self.config.history)
        self._trend_due = False  # the trend detectors have yet to judge the latest step
        self._meter = StepMeter(
            self.index,
            self.device,
            reducer,
            update_ratio_every=self.config.update_ratio_every,
            weight_norm_every=self.config.weight_norm_every,
        )
        self._book = AlertBook()
        #: A warning or error was published since the diagnoses were last written.
        self._diagnoses_due = False
        self._diagnosis_written = ""
        optimizer_facts = OptimizerFacts.of(optimizer)
        # What the diagnosis may know of the model's structure, read once here.
        self._facts = ModelFacts.of(
            self._model_map,
            optimizer_facts,
            amp=self.config.scaler is not None
            or any(p.dtype in (torch.float16, torch.bfloat16) for p in self.index.params),
        )
        self._context = DetectorContext(
            self.index.names,
            self.index.module_types,
            self.config,
            layer_numel=self.index.layer_numel(),
            holds_sublayers=self.index.holds_sublayers,
            optimizer=optimizer_facts,
            loss_baseline=None if loss_baseline is None else tuple(map(float, loss_baseline)),
        )
        self._detectors: list[Detector] = default_detectors(self.config)
        self._policies = StepPolicies(self.config, self.index, self._model_map)
        self._amp: ScalerBridge | None = None
        self._structure: StructureProbes | None = None
        #: ln(classes) once the recorded loss is recognised as a cross-entropy.
        self._chance_loss: float | None = None
        self._step = 0
        self._loss: Tensor | float | None = None
        self._pending: PendingStep | None = None
        self._inflight: list[HostCopy] = []
        self._closed: bool = False
        # Threads: one step path at a time, one open step per thread (_lifecycle).
        self._guard = StepGuard(f"the Watcher of {type(model).__name__}")
        self._stack = contextlib.ExitStack()
        self._sinks: list[GuardedSink] = []
        self._relay = AlertRelay.create(reducer)
        try:
            self._add_sink(LoggingSink(), "logging")
            if self._relay is not None and not self.is_writer:
                self._add_sink(self._relay, "alert relay to rank 0")
            if self.logdir is not None and self.is_writer:
                from gradwatch._sinks.tensorboard import TensorBoardSink

                self._add_sink(
                    TensorBoardSink(
                        self.logdir,
                        flush_secs=self.config.flush_secs,
                        history=self.history,
                        flow_image_every=self.config.flow_image_every,
                        ordered_tags=self.config.tensorboard_tags == "ordered",
                    ),
                    "TensorBoard",
                )
            if self.is_writer:  # the user's writer= and sinks=
                for sink, name in destinations.open(
                    self.history,
                    flush_secs=self.config.flush_secs,
                    flow_image_every=self.config.flow_image_every,
                    ordered_tags=self.config.tensorboard_tags == "ordered",
                ):
                    self._add_sink(sink, name)
            self._probe, self._locator = self._attach_probes(model)
            if optimizer is not None:
                self._stack.enter_context(
                    optimizer.register_step_pre_hook(WatcherHook(self, "_before_optimizer_step"))
                )
                self._stack.enter_context(
                    optimizer.register_step_post_hook(WatcherHook(self, "_after_optimizer_step"))
                )
            if self.config.scaler is not None:
                if optimizer is None:
                    raise ValueError(
                        "scaler needs the optimizer it steps: pass it, as in "
                        "gradwatch.watch(model, optimizer, scaler=scaler)."
                    )
                self._amp = ScalerBridge(
                    self.config.scaler,
                    optimizer,
                    before_step=self._before_scaler_step,
                    after_step=self._after_scaler_step,
                )
                self._stack.enter_context(self._amp.attached())
        except BaseException:
            self._stack.close()
            raise
        _WATCHED[model] = weakref.ref(self)
        _OPEN.add(self)
        flush_on_sigterm(self)  # buffered steps reach the disk when a scheduler stops us

    # ----------------------------------------------------------------- public API
    @property
    def step_count(self) -> int:
        """How many steps were measured so far (the next step's index)."""
        return self._step

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far, in order (waits for statistics still in flight)."""
        self._drain(block=True)
        return list(self._book.alerts)

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """The root causes of the alerts so far, most likely first (README, "Diagnoses").

        Computed on demand from :attr:`alerts`, :attr:`history` and the model's structure;
        empty while no warning or error was raised. Never raises: a failure is logged and
        gives an empty list, since a diagnosis must not break the training it watches.
        """
        alerts = self.alerts
        try:
            return diagnose(alerts, self.history, self._facts)
        except Exception:
            logger.exception("gradwatch: diagnosing the alerts failed; no diagnoses")
            return []

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run (the hooks are gone; nothing more is measured)."""
        return self._closed

    @property
    def clipped_steps(self) -> int:
        """How many steps the clipper actually shrank (coefficient < 1) so far."""
        self._drain(block=True)
        return self._policies.clipped_steps

    @property
    def skipped_steps(self) -> int:
        """How many steps gradwatch skipped (``on_nonfinite="skip"``, ``skip_spikes``)."""
        self._drain(block=True)
        return self._policies.skipped_steps

    @property
    def amp_skipped_steps(self) -> int:
        """How many steps the ``GradScaler`` skipped for inf/NaN gradients."""
        self._drain(block=True)
        return self._policies.amp_skipped_steps

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on where this one stopped: the step count, the
        history the detectors read, the alerts so far, the policies' counters.

        Call it between steps (after the update); statistics still in flight are read
        first. Plain data and CPU tensors only, for ``torch.save`` and
        ``torch.load(weights_only=True)``. Restore it with :meth:`load_state_dict`.
        """
        self._seal_pending()
        self._drain(block=True)
        policies = self._policies
        return {
            "layers": list(self.index.names),  # what the history's per-layer arrays index
            "step": self._step,
            "history": self.history.state_dict(),
            "alerts": [dataclasses.asdict(alert) for alert in self._book.alerts],
            "counts": [policies.clipped_steps, policies.skipped_steps, policies.amp_skipped_steps],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a run saved with :meth:`state_dict`: the next step is the saved step
        count, the detectors judge it with the saved history, and an alert already
        raised is not raised again. Only before the first step of this watcher."""
        if self._step or self._pending is not None or self._inflight:
            raise RuntimeError(
                f"Watcher.load_state_dict() after {self._step} step(s): restore the saved "
                "state right after watch(), before the first step."
            )
        saved = list(state.get("layers", self.index.names))
        if saved != list(self.index.names):
            raise ValueError(
                f"Watcher.load_state_dict(): the state was saved from a model with "
                f"{len(saved)} layer(s) ({', '.join(saved[:3])}...), this watcher watches "
                f"{len(self.index.names)} other ones. Restore it into the same model, or "
                "start afresh without it."
            )
        self.history.load_state_dict(state["history"])
        for fields in state["alerts"]:
            self._book.offer(Alert(**fields))  # its episodes, so repeats stay quiet
        policies = self._policies
        policies.clipped_steps, policies.skipped_steps, policies.amp_skipped_steps = state["counts"]
        self._step = int(state["step"])
        if self._probe is not None:  # sampled steps are those of the restored count
            self._probe.disarm()
            if self._structure is not None:
                self._structure.disarm()
            self._arm_activations()

    def record_loss(self, loss: Tensor | float) -> None:
        """Attach this iteration's loss to the step about to be taken.

        Call it between ``backward()`` and ``optimizer.step()``. The tensor is detached
        and kept on its device; it is read back with the rest of the step's statistics,
        so this never forces a host sync.
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"record_loss(loss) expects a scalar loss, got a tensor of shape "
                    f"{tuple(loss.shape)}. Reduce it first (loss.mean()) or pass the value."
                )
            self._loss = loss.detach()
            if self._chance_loss is None and self._structure is not None:
                # The loss's kind, from its autograd graph's node types (host objects,
                # no tensor read); the class count from the logits' sizes.
                self._chance_loss = chance_loss(loss, self._structure.class_dims)
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            # Kept as a Python float and filled in on the device by _measure(): a host
            # tensor here would cost a host→device copy every step.
            self._loss = float(loss)
        else:
            raise TypeError(
                f"record_loss(loss) expects a scalar torch.Tensor or a float, got "
                f"{type(loss).__name__}."
            )

    def step(self, *, found_inf: Tensor | None = None) -> None:
        """Measure this iteration's gradients; for loops without an optimizer.

        Call once per iteration after ``backward()`` and before the weights change. With
        an optimizer passed to :func:`watch`, steps are measured automatically at each
        ``optimizer.step()``, so calling this raises.

        Args:
            found_inf: for loops whose framework runs its own ``GradScaler`` (gradwatch
                does it for you with ``watch(..., scaler=)``): the scaler's inf/NaN
                verdict for this step, after ``scaler.unscale_(optimizer)``, as a tensor
                holding one value, > 0 when inf/NaN was found (e.g. the sum of the
                scaler's per-device flags, ``sum(scaler._found_inf_per_device(optimizer)
                .values())``). A step with a verdict > 0 is reported as an ``amp_skip``,
                not as ``nonfinite``, and ``on_nonfinite`` does not act on it. The tensor
                stays on its device and is read with the step's statistics: no host sync.
        """
        self._require_open("step")
        if self._optimizer_ref is not None:
            raise RuntimeError(
                "Watcher.step() is for loops without an optimizer; this watcher measures "
                "automatically at each optimizer.step(). Remove the gw.step() call."
            )
        _check_found_inf(found_inf)
        with self._guard.held():
            self._seal_pending()
            pending = self._measure(found_inf)
            self._pending = pending
            if pending.weights_before is None:
                self._seal_pending()
            self._arm_activations()

    def close(self) -> None:
        """Finish: flush what was recorded, remove every hook, close writers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._guard.held():
                with contextlib.suppress(Exception):
                    self._seal_pending()
                with contextlib.suppress(Exception):
                    self._drain(block=True)
                with contextlib.suppress(Exception):
                    self._judge_trends_at_end()
                if self._relay is not None and self.is_writer:
                    with contextlib.suppress(Exception):
                        for alert in self._relay.finish():
                            self._publish(alert)
                latest = self.history.latest
                if self._diagnoses_due and latest is not None:
                    with contextlib.suppress(Exception):
                        self._write_diagnoses(latest.step)  # alerts of the last judgement
        finally:
            release_sigterm(self)
            self._stack.close()
            for sink in self._sinks:
                sink.close()
            model = self._model_ref()
            if model is not None and _WATCHED.get(model) is not None:
                ref = _WATCHED.get(model)
                if ref is not None and ref() is self:
                    del _WATCHED[model]
            _OPEN.discard(self)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step {self._step}"
        return (
            f"<gradwatch.Watcher {len(self.index.names)} layers, {state}, "
            f"{len(self._book.alerts)} alerts, logdir={self.logdir!r}>"
        )

    # ----------------------------------------------------------------- internals
    def _add_sink(self, sink: Any, name: str) -> None:
        self._sinks.append(GuardedSink(sink, name))

    def _attach_probes(
        self, model: nn.Module
    ) -> tuple[ActivationProbe | None, NonfiniteLocator | None]:
        """Activation sampling and NaN localisation, both owned by ``self._stack``."""
        probe = locator = None
        compiled = compiled_modules(self._model_map) if self.config.activation_every else []
        if compiled:
            # Hooks added and removed every few steps would make torch.compile recompile.
            logger.info(
                "gradwatch: activation statistics are off for a torch.compile'd model "
                "(compiled: %s)",
                ", ".join(repr(name or type(model).__name__) for name in compiled),
            )
        elif self.config.activation_every:
            probe = ActivationProbe(self._model_map, include_eval=self.config.activation_eval)
            self._stack.callback(probe.disarm)
            # Attention logits, output logits and gradients through time ride on the
            # same sampled steps.
            self._structure = StructureProbes(
                self._model_map, include_eval=self.config.activation_eval
            )
            self._stack.callback(self._structure.disarm)
        if self.config.locate_nonfinite:
            locator = NonfiniteLocator(self._model_map)
            self._stack.callback(locator.remove)
        self._probe = probe
        self._arm_activations()
        return probe, locator

    def _arm_activations(self) -> None:
        """Install the activation hooks when the coming step is a sampled one."""
        if self._probe is not None and self._step % self.config.activation_every == 0:
            self._probe.arm()
            if self._structure is not None:
                self._structure.arm()

    def _require_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"Watcher.{what}() called after close(); start a new watch().")

    def _before_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        if self._closed or (self._amp is not None and self._amp.in_scaler_step):
            return  # inside scaler.step(): already measured by _before_scaler_step
        with self._guard.held():
            self._guard.open_step()  # refuses a step overlapping another thread's
            self._pending = self._measure()

    def _before_scaler_step(self) -> None:
        """``scaler.step(optimizer)`` is about to run: measure (and clip) unscaled grads."""
        if not self._closed:
            with self._guard.held():
                self._guard.open_step()
                self._seal_pending()
                self._pending = self._measure()

    def _after_scaler_step(self) -> None:
        """``scaler.step(optimizer)`` is done (the update taken, or skipped for inf)."""
        with self._guard.held():
            self._seal_pending()
            self._guard.close_step()

    def _after_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        if not self._closed:
            with self._guard.held():
                self._seal_pending()
                self._arm_activations()
                self._guard.close_step()

    def _measure(self, found_inf: Tensor | None = None) -> PendingStep:
        """This step's statistics on the device, then the policies that need them.

        ``found_inf`` is the caller's GradScaler verdict (:meth:`step`); under
        ``scaler=`` the watched scaler's own verdict is read instead.
        """
        step = self._step
        self._step += 1
        optimizer = self._optimizer_ref() if self._optimizer_ref is not None else None
        if self._amp is not None and optimizer is not None:
            self._amp.unscale(optimizer)  # at most once per step; a no-op if the user did
            found_inf = self._amp.found_inf(optimizer, self.device)
        loss, self._loss = self._loss, None
        pending = self._meter.measure(step, loss)
        # Clipping comes after the statistics above, so they are of the unclipped gradient.
        coef = self._policies.clip(self.index.params, pending.total_norm)
        pending.vector.add(self._policies.values(coef, found_inf))
        # Packed now, not after the update: a piece may be a view of a tensor the caller
        # changes in place before the step is sealed (a running loss, the scaler's flags).
        pending.vector.pack()
        if self._probe is not None:
            pending.activations = self._probe.collect()  # removes the hooks; device values
        if self._structure is not None:
            pending.structure = self._structure.collect()  # likewise
        pending.lr = current_lr(optimizer)  # a Python float from param_groups: no sync
        pending.chance_loss = self._chance_loss
        if self._locator is not None:
            pending.trace = self._locator.take()  # device flags, read only on NaN/inf
        if self._policies.needs_host:
            self._apply_host_policies(pending)
        self._meter.before_update(pending)
        return pending

    def _apply_host_policies(self, pending: PendingStep) -> None:
        """``on_nonfinite="skip"|"raise"`` and ``skip_spikes`` must decide before the
        update, on this step's values: the one host sync they cost (shared)."""
        host = pending.vector.copy_to_host_now()  # deliberate sync, documented
        record = read_record(pending, host)
        if self.config.on_nonfinite != "warn":
            alert = nonfinite_alert(record, self._context)
            if alert is not None:
                if self.config.on_nonfinite == "raise":
                    self._drain(block=True)  # earlier steps first: the history stays in order
                    self._consume(record)
                    raise NonFiniteError(alert)
                self._policies.skip(pending)
                return
        spike = self._policies.check_spike(record)
        if spike is not None:
            self._policies.skip(pending)
            self._publish(spike)

    def _seal_pending(self) -> None:
        """Finish the pending step (update ratio), then start its copy to the host."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._inflight.append(self._meter.seal(pending))
        self._drain(block=False)

    def _drain(self, *, block: bool) -> None:
        """Consume the host copies that have arrived (all of them if ``block``)."""
        with self._guard.held():  # one thread at a time: the history stays in step order
            while self._inflight and (block or self._inflight[0].done()):
                copy = self._inflight.pop(0)
                self._consume(read_record(copy.pending, copy.result()))

    def _flush_on_signal(self, *, final: bool) -> None:
        """SIGTERM arrived (``_lifecycle``): get what is buffered onto the disk.

        ``final``: the process ends right after, so close (the end-of-run judgments
        too). Interrupting this thread's own step, only the sinks are flushed: the step's
        half-updated state must not be consumed. Another thread's step is waited for,
        a few seconds at most.
        """
        if self._closed:
            return
        if not self._guard.held_here():
            with self._guard.tried(timeout=5.0) as held:
                if held and final:
                    self.close()
                    return
                if held:
                    self._drain(block=True)
        for sink in self._sinks:
            sink.flush()

    def _consume(self, record: StepRecord) -> None:
        """Host side of a step: history, detectors, alerts, sinks. Never raises."""
        self.history.append(record)
        self._policies.observe(record)
        trend = is_trend_step(record.step, self.config)
        self._trend_due = not trend  # the trend detectors have not seen this step yet
        self._run_detectors(detectors_for_step(self._detectors, record, trend=trend))
        if self._relay is not None and self.is_writer:
            try:  # alerts other ranks raised for steps this rank has now consumed
                for alert in self._relay.receive(record.step):
                    self._publish(alert)
            except Exception:
                logger.exception("gradwatch: reading alerts relayed from other ranks failed")
        if record.step % self.config.log_every == 0:
            for sink in self._sinks:
                sink.write_step(record, self.index)
        if self._diagnoses_due:
            self._write_diagnoses(record.step)

    def _write_diagnoses(self, step: int) -> None:
        """After a step that raised a warning or error: the causes, where sinks show them
        (TensorBoard's Text tab), when they changed. Alerts are rare, so is this."""
        self._diagnoses_due = False
        markdown = diagnoses_markdown(self.diagnoses)
        if markdown and markdown != self._diagnosis_written:
            self._diagnosis_written = markdown
            for sink in self._sinks:
                sink.write_diagnosis(step, markdown)

    def _run_detectors(self, detectors: list[Detector]) -> None:
        for detector in detectors:
            try:
                alerts = detector(self.history, self._context)
            except Exception:
                logger.exception("gradwatch detector %r failed; skipping it this step", detector)
                continue
            for alert in alerts:
                self._publish(alert)

    def _judge_trends_at_end(self) -> None:
        """The trend detectors judge every few steps (``is_trend_step``); at the end of
        the run they judge the last step too, so a short run's trend is never missed."""
        record = self.history.latest
        if self._trend_due and record is not None:
            self._trend_due = False
            chosen = detectors_for_step(self._detectors, record)
            self._run_detectors([detector for detector in chosen if judges_trend(detector)])

    def _publish(self, alert: Alert) -> None:
        if not self._book.offer(alert):
            return
        for sink in self._sinks:
            sink.write_alert(alert)
        if alert.severity != "info":
            self._diagnoses_due = True


def _check_found_inf(found_inf: object) -> None:
    """``step(found_inf=)`` takes a tensor holding one value, or None (a host-side check)."""
    if found_inf is None:
        return
    if not isinstance(found_inf, Tensor):
        raise TypeError(
            f"step(found_inf=...) expects a torch.Tensor (> 0 when the GradScaler found "
            f"inf/NaN) or None, got {type(found_inf).__name__}. Pass the scaler's verdict "
            "as a tensor, e.g. sum(scaler._found_inf_per_device(optimizer).values())."
        )
    if found_inf.numel() != 1:
        raise ValueError(
            f"step(found_inf=...) expects a tensor holding one value, got one of shape "
            f"{tuple(found_inf.shape)}. Sum the per-device flags first, e.g. "
            "sum(scaler._found_inf_per_device(optimizer).values())."
        )


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    logdir: str | os.PathLike[str] | None = None,
    writer: Any = None,
    sinks: Sequence[Sink] | None = None,
    global_step_offset: int = 0,
    **options: Any,
) -> Watcher:
    """Attach gradwatch to ``model`` (and ``optimizer``) and return the :class:`Watcher`.

    With an optimizer, each ``optimizer.step()`` is one watched step, measured right
    before the update (so gradient accumulation counts optimizer steps). Without one,
    call ``watcher.step()`` once per iteration after ``backward()``.

    Args:
        model: the module to watch (a DDP- or ``torch.compile``-wrapped model, or one
            compiled with ``model.compile()``, is fine; layer names are those of the
            unwrapped model; see ``gradwatch._compile`` for what compiled modules measure).
        optimizer: the optimizer updating ``model``, or None.
        logdir: a directory for TensorBoard event files (created if missing), or None.
        writer: your own ``torch.utils.tensorboard.SummaryWriter``: gradwatch's scalars,
            layout, heat map and alerts go into its run (flushed, never closed); not
            together with ``logdir``.
        sinks: a list of :class:`gradwatch.Sink` objects (your own, or
            :mod:`gradwatch.sinks`' MLflow and W&B sinks), given every logged step's
            scalars and every alert.
        global_step_offset: added to gradwatch's step (0 at the first watched step) in
            what goes to ``writer`` and ``sinks``, to match your run's step axis.
        **options: fields of :class:`gradwatch.WatchConfig` (e.g. ``log_every=10``,
            ``on_nonfinite="skip"``). Unknown names are refused at once.
    """
    config = WatchConfig.from_options(options)
    return Watcher(
        model,
        optimizer,
        logdir=logdir,
        config=config,
        writer=writer,
        sinks=sinks,
        global_step_offset=global_step_offset,
    )
