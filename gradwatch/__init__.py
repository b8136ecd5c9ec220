"""gradwatch: make unstable gradients visible and fixable in PyTorch training.

Attach in one line::

    with gradwatch.watch(model, optimizer, logdir="runs/exp1") as gw:
        ...  # your training loop, unchanged
    print(gw.alerts)

or check a model in a few steps (CI smoke test)::

    report = gradwatch.check(model, batches, loss_fn, steps=20)
    assert report.ok, report.summary()
"""

# The public module gradwatch.sinks (it imports neither MLflow nor W&B).
from gradwatch import sinks as sinks
from gradwatch._alerts import Alert
from gradwatch._check import check
from gradwatch._clip import AGC, AutoClip, ClipNorm, Clipper, ClipValue, ZClip
from gradwatch._config import WatchConfig
from gradwatch._diagnosis import Diagnosis
from gradwatch._errors import NonFiniteError
from gradwatch._fixes import FixTrial
from gradwatch._report import LayerSummary, Report
from gradwatch._sinks import SinkFailureWarning
from gradwatch._sinks.public import Sink
from gradwatch._version import __version__
from gradwatch._watcher import Watcher, watch

__all__ = [
    "AGC",
    "Alert",
    "AutoClip",
    "ClipNorm",
    "ClipValue",
    "Clipper",
    "Diagnosis",
    "FixTrial",
    "LayerSummary",
    "NonFiniteError",
    "Report",
    "Sink",
    "SinkFailureWarning",
    "WatchConfig",
    "Watcher",
    "__version__",
    "check",
    "ZClip",
    "watch",
]
