"""gradwatch: make unstable gradients visible and fixable in PyTorch training.

Attach in one line::

    with gradwatch.watch(model, optimizer, logdir="runs/exp1") as gw:
        ...  # your training loop, unchanged
    print(gw.alerts)
"""

from ._alerts import Alert
from ._config import WatchConfig
from ._errors import NonFiniteError
from ._version import __version__
from ._watcher import Watcher, watch

__all__ = [
    "Alert",
    "NonFiniteError",
    "WatchConfig",
    "Watcher",
    "__version__",
    "watch",
]
