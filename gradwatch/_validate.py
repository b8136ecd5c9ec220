"""Argument checks shared by every public entry point: one message shape everywhere.

Each check raises ``TypeError`` or ``ValueError`` naming the argument, what was expected,
what arrived and, where one helps, how to fix it, so that bad input fails at attach time.
"""

from __future__ import annotations


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


def require_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")


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
