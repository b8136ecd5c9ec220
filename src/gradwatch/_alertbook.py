"""De-duplication of alerts into episodes: one alert per (kind, layer) episode.

A detector may fire at every step while a problem lasts; the user wants to hear about
it once, and again only if it gets worse (higher severity) or comes back after a quiet
spell of ``gap`` steps.
"""

from __future__ import annotations

import dataclasses

from ._alerts import SEVERITY_RANK, Alert


@dataclasses.dataclass
class _Episode:
    rank: int
    last_step: int


class AlertBook:
    """Keeps every published alert, in order, and the episodes still open."""

    def __init__(self, gap: int = 20) -> None:
        self.gap = gap
        self.alerts: list[Alert] = []
        self._episodes: dict[tuple[str, str | None], _Episode] = {}

    def offer(self, alert: Alert) -> bool:
        """Record ``alert``; True if it opens or escalates an episode (so publish it)."""
        key = (alert.kind, alert.layer)
        rank = SEVERITY_RANK[alert.severity]
        episode = self._episodes.get(key)
        if episode is not None and alert.step - episode.last_step <= self.gap:
            episode.last_step = max(episode.last_step, alert.step)
            if rank <= episode.rank:
                return False
            episode.rank = rank
        else:
            self._episodes[key] = _Episode(rank, alert.step)
        self.alerts.append(alert)
        return True
