"""Options of :func:`gradwatch.watch`, gathered in one frozen, validated dataclass.

Every option a user can pass to ``watch(**options)`` is a field of :class:`WatchConfig`.
Validation happens here, at attach time, so that a typo or a negative interval fails at
once with a message naming the option, what arrived and how to fix it, instead of at
step 10,000 (DESIGN.md, style rule 4).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, Literal

NonfinitePolicy = Literal["warn", "skip", "raise"]
NONFINITE_POLICIES: tuple[str, ...] = ("warn", "skip", "raise")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_int(name: str, value: object, *, minimum: int, hint: str = "") -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is an int >= minimum."""
    if not _is_int(value):
        raise TypeError(
            f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}."
            f"{' ' + hint if hint else ''}"
        )
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.{' ' + hint if hint else ''}")


def require_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
    maximum: float | None = None,
    hint: str = "",
) -> None:
    """Raise unless ``value`` is a finite real number within the given bounds."""
    suffix = f" {hint}" if hint else ""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.{suffix}")
    number = float(value)  # type: ignore[arg-type]
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}.{suffix}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.{suffix}")
    if exclusive_minimum is not None and number <= exclusive_minimum:
        raise ValueError(f"{name} must be > {exclusive_minimum}, got {value!r}.{suffix}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}.{suffix}")


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    """Everything :func:`gradwatch.watch` can be told, with documented defaults.

    Attributes:
        log_every: write per-layer scalars to the sinks every this many optimizer steps
            (alerts are always written at once). Statistics are still measured and
            checked every step.
        update_ratio_every: measure the update ratio ‖Δw‖/‖w‖ every this many steps;
            ``0`` switches it off. A sampled step keeps one transient copy of the
            parameters between the measurement and the update (freed right after).
        history: how many steps of statistics the host-side ring buffer keeps for the
            detectors and the report. Memory is bounded by it, however long the run.
        on_nonfinite: what a NaN/inf in gradients, weights or loss does: ``"warn"``
            raises an alert and carries on; ``"skip"`` also leaves the parameters and
            optimizer state untouched for that step; ``"raise"`` stops training with
            :class:`gradwatch.NonFiniteError`.
        flush_secs: how often TensorBoard's writer flushes scalars to disk (alerts are
            flushed as soon as they are raised).
    """

    log_every: int = 1
    update_ratio_every: int = 10
    history: int = 512
    on_nonfinite: NonfinitePolicy = "warn"
    flush_secs: float = 30.0

    def __post_init__(self) -> None:
        require_int("log_every", self.log_every, minimum=1, hint="Use 1 to log every step.")
        require_int(
            "update_ratio_every",
            self.update_ratio_every,
            minimum=0,
            hint="Use 0 to switch update ratios off.",
        )
        require_int("history", self.history, minimum=2, hint="The default is 512 steps.")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, "
                f"got {self.on_nonfinite!r}."
            )
        require_number("flush_secs", self.flush_secs, exclusive_minimum=0.0)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
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
