"""Which alerts fail a check: at or above a severity, minus kinds the user ignores.

Shared by ``gradwatch check`` (``--fail-on``, ``--ignore``) and the pytest plugin
(``fail_on=``, ``ignore=``), so both judge a :class:`~gradwatch.Report` the same way. With
the defaults (``fail_on="warning"``, nothing ignored) the verdict is ``Report.ok``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from ._alerts import ALERT_KINDS, SEVERITIES, SEVERITY_RANK, Alert


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
