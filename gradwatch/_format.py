"""How gradwatch writes a number: for people (tables, summaries) and for JSON.

One owner, so that the CLI, :class:`~gradwatch.Report` and the run summary of
``gradwatch report`` agree. Imports nothing from gradwatch: any layer may use it.
"""

from __future__ import annotations

import math


def fmt(value: float | int | None, digits: int = 3, *, nan: str = "nan") -> str:
    """A number for a table or a summary line.

    ``-`` when missing, ``nan`` (or the ``nan`` given, e.g. ``-`` where NaN means "no
    value at that step") and ``inf``/``-inf`` spelled out, an int as it is, any other
    number to ``digits`` significant digits.
    """
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return nan
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def json_number(value: float | None) -> float | str | None:
    """A float for JSON: ``None`` stays None, non-finite numbers become the strings
    ``"nan"``, ``"inf"`` and ``"-inf"`` (JSON has no such numbers)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)
