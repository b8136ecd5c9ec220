"""Best first: a trial that made the run healthy before one that did not, one that
finished before one the training code stopped; then the lower final loss (a non-finite
loss last); then fewer problems left; then the order the fixes were proposed in (the
more likely fix first)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradwatch._fixes.record import FixTrial


def rank(trials: Sequence[FixTrial]) -> tuple[FixTrial, ...]:
    """``trials`` sorted best first (stable: ties keep their proposed order)."""

    def key(trial: FixTrial) -> tuple[bool, bool, float, int]:
        loss = trial.final_loss
        return (
            not trial.ok,
            trial.error is not None,
            loss if math.isfinite(loss) else math.inf,
            len(trial.problems),
        )

    return tuple(sorted(trials, key=key))
