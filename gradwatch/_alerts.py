"""Alerts: the :class:`Alert` record every detector raises and every sink writes, the
de-duplication of alerts into episodes (:class:`AlertBook`), and the verdict that decides
which alerts fail a check (:func:`failing_alerts`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from gradwatch._names import display_name

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "error")
SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}

#: Alert kinds of the public contract (README, "Alert kinds"). Detectors may add more.
ALERT_KINDS: tuple[str, ...] = (
    "nonfinite",
    "exploding",
    "vanishing",
    "saturation",
    "dead_units",
    "poor_init",
    "not_learning",
    "loss_spike",
    "grad_spike",
    "amp_skip",
    "attention_logits",
    "output_logits",
    "update_size",
)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One diagnosis: what is wrong, where, when, how badly, and what to try.

    Attributes:
        kind: what went wrong, one of :data:`ALERT_KINDS` (or a detector's own kind).
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        step: the optimizer step (counted from 0) whose statistics raised it.
        layer: the module's qualified name as in ``model.named_modules()``
            (``""`` for the root module), or ``None`` when the alert is about the
            whole model (e.g. the loss).
        message: one or two sentences saying what was measured and why it matters.
        value: the measured value that crossed the threshold, if any.
        threshold: the threshold it crossed, if any.
        remedy: a concrete thing to try.
    """

    kind: str
    severity: Severity
    step: int
    layer: str | None
    message: str
    value: float | None = None
    threshold: float | None = None
    remedy: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def where(self) -> str:
        """Human text for the layer: its name, ``(root module)`` or ``(model)``."""
        if self.layer is None:
            return "(model)"
        return display_name(self.layer)

    def format(self) -> str:
        """One readable line, plus the remedy."""
        text = f"[{self.severity}] {self.kind} at step {self.step} in {self.where}: {self.message}"
        if self.remedy:
            text += f" Try: {self.remedy}"
        return text

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (non-finite numbers become strings such as ``"nan"``)."""
        out = dataclasses.asdict(self)
        for key in ("value", "threshold"):
            number = out[key]
            if number is not None and not math.isfinite(number):
                out[key] = str(number)
        return out


# De-duplication ----------------------------------------------------------------------
# One alert per (kind, layer) episode. A detector may fire at every step while a problem
# lasts; the user wants to hear about it once, and again only if it gets worse: a higher
# severity, or (after a quiet spell of more than ``gap`` steps) a value further past its
# threshold than the last one published. A problem that comes back after ``forget``
# quiet steps is news again whatever its value.
#


def _excess(alert: Alert) -> float | None:
    """How far past its threshold the alert's value is, as a factor >= 1 in the alert's
    own direction (a value below its threshold, as for ``vanishing``, counts downwards);
    None when the alert carries no comparable numbers."""
    value, threshold = alert.value, alert.threshold
    if value is None or threshold is None or not (math.isfinite(value) and threshold > 0):
        return None
    if value >= threshold:
        return value / threshold
    return threshold / value if value > 0 else math.inf


@dataclasses.dataclass
class _Episode:
    rank: int
    last_step: int
    excess: float | None


class AlertBook:
    """Keeps every published alert, in order, and what was last said per (kind, layer)."""

    def __init__(self, gap: int = 20, forget: int = 200) -> None:
        self.gap = gap
        self.forget = forget
        self.alerts: list[Alert] = []
        self._episodes: dict[tuple[str, str | None], _Episode] = {}

    def offer(self, alert: Alert) -> bool:
        """Record ``alert``; True if it is news (so publish it): a new (kind, layer), a
        higher severity, a worse value after a quiet spell, or a return after a long one."""
        key = (alert.kind, alert.layer)
        rank = SEVERITY_RANK[alert.severity]
        excess = _excess(alert)
        episode = self._episodes.get(key)
        if episode is not None and alert.step - episode.last_step <= self.forget:
            quiet = alert.step - episode.last_step > self.gap
            episode.last_step = max(episode.last_step, alert.step)
            worse = (
                quiet
                and rank == episode.rank
                and (excess is None or episode.excess is None or excess > episode.excess)
            )
            if rank <= episode.rank and not worse:
                return False
            episode.rank, episode.excess = max(rank, episode.rank), excess
        else:
            self._episodes[key] = _Episode(rank, alert.step, excess)
        self.alerts.append(alert)
        return True


# Verdict ----------------------------------------------------------------------
# Which alerts fail a check: at or above a severity, minus kinds the user ignores.
#
# Shared by ``gradwatch check`` (``--fail-on``, ``--ignore``) and the pytest plugin
# (``fail_on=``, ``ignore=``), so both judge a :class:`~gradwatch.Report` the same way. With
# the defaults (``fail_on="warning"``, nothing ignored) the verdict is ``Report.ok``.
#


def validate_fail_on(fail_on: object) -> str:
    """Return ``fail_on`` if it is a severity name, else raise naming the choices."""
    if fail_on not in SEVERITIES:
        raise ValueError(
            f"fail_on must be one of {', '.join(map(repr, SEVERITIES))}, got {fail_on!r}. "
            "'warning' (the default) fails on warnings and errors."
        )
    return str(fail_on)


def validate_ignore(ignore: Iterable[str] | str | None) -> tuple[str, ...]:
    """Alert kinds to ignore, checked against the known kinds (a typo must not pass)."""
    if ignore is None:
        return ()
    kinds = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    for kind in kinds:
        if not isinstance(kind, str) or kind not in ALERT_KINDS:
            close = difflib.get_close_matches(str(kind), ALERT_KINDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"ignore got an unknown alert kind {kind!r}.{hint} Known kinds: "
                f"{', '.join(ALERT_KINDS)}."
            )
    return kinds


def failing_alerts(
    alerts: Iterable[Alert], *, fail_on: str = "warning", ignore: Sequence[str] = ()
) -> list[Alert]:
    """The alerts of severity ``fail_on`` or worse whose kind is not in ``ignore``."""
    floor = SEVERITY_RANK[validate_fail_on(fail_on)]
    skipped = set(ignore)
    return [a for a in alerts if SEVERITY_RANK[a.severity] >= floor and a.kind not in skipped]
