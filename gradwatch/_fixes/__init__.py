"""``check(..., try_fixes=True)``: re-run a failed check with each fix gradwatch can apply
itself, and report which ones make it healthy.

One module per job: :mod:`~gradwatch._fixes.record` (the public :class:`FixTrial`),
:mod:`~gradwatch._fixes.catalogue` (what fixes exist and which causes each addresses),
:mod:`~gradwatch._fixes.reinit` (re-initialising layers to fit their activation),
:mod:`~gradwatch._fixes.snapshot` (the starting weights and the optimizer's recipe, taken
before training), :mod:`~gradwatch._fixes.trial` (running one trial) and
:mod:`~gradwatch._fixes.rank` (best first). The training loop itself is
:func:`gradwatch.check`'s, handed in as a callable, so this stage sits below it.
"""

from gradwatch._fixes.catalogue import MAX_TRIALS, MIN_STEPS, Fix, propose
from gradwatch._fixes.rank import rank
from gradwatch._fixes.record import FixTrial, tail_loss
from gradwatch._fixes.snapshot import Snapshot
from gradwatch._fixes.trial import run_trials

__all__ = [
    "MAX_TRIALS",
    "MIN_STEPS",
    "Fix",
    "FixTrial",
    "Snapshot",
    "propose",
    "rank",
    "run_trials",
    "tail_loss",
]
