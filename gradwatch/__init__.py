"""gradwatch: make unstable gradients visible and fixable in PyTorch training.

Attach in one line::

    with gradwatch.watch(model, optimizer, logdir="runs/exp1") as gw:
        ...  # your training loop, unchanged
    print(gw.alerts)

or check a model in a few steps (CI smoke test)::

    report = gradwatch.check(model, batches, loss_fn, steps=20)
    assert report.ok, report.summary()
"""

# Names are imported on first use (PEP 562), so `import gradwatch` (and the pytest plugin
# that pytest loads in every run) does not import torch until something is used. Add a
# public name in both places below: the table (runtime) and the TYPE_CHECKING block
# (type checkers, import-linter).
from typing import TYPE_CHECKING

from gradwatch._version import __version__

_EXPORTS = {
    "sinks": "gradwatch.sinks",  # the public module (it imports neither MLflow nor W&B)
    "Alert": "gradwatch._alerts",
    "check": "gradwatch._check",
    "AGC": "gradwatch._clip",
    "AutoClip": "gradwatch._clip",
    "ClipNorm": "gradwatch._clip",
    "Clipper": "gradwatch._clip",
    "ClipValue": "gradwatch._clip",
    "ZClip": "gradwatch._clip",
    "WatchConfig": "gradwatch._config",
    "Diagnosis": "gradwatch._diagnosis",
    "NonFiniteError": "gradwatch._errors",
    "FixTrial": "gradwatch._fixes",
    "LayerSummary": "gradwatch._report",
    "Report": "gradwatch._report",
    "SinkFailureWarning": "gradwatch._sinks",
    "Sink": "gradwatch._sinks.public",
    "Watcher": "gradwatch._watcher",
    "watch": "gradwatch._watcher",
}

if TYPE_CHECKING:
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
    from gradwatch._watcher import Watcher, watch


def __getattr__(name: str) -> object:
    """Import a public name on first use and keep it (PEP 562)."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name)
    value = module if module_name == f"gradwatch.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
