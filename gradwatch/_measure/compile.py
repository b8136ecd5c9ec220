"""What gradwatch does with ``torch.compile``'d modules, and how it recognises them.

gradwatch's core measurement lives outside any compiled graph: the optimizer step
pre/post hooks run in eager mode around ``optimizer.step()``, reading ``.grad`` and the
parameters after the compiled forward and backward have finished. So per-layer gradient,
weight and update norms, the loss and clipping are the same on a compiled model as on the
eager one, and cost the compiled graph nothing.

Forward hooks are a different matter: Dynamo inlines hooks present when it traces, and a
hook that mutates Python state or is added and removed between steps causes graph breaks
or recompiles. Hence:

* activation sampling (forward hooks armed every ``activation_every`` steps) is switched
  off when the watched model is, or contains, a compiled module; hooks armed on a model
  that is compiled *after* ``watch()`` return at once while Dynamo traces them, so they
  add no op, graph break or recompile, and measure nothing inside compiled code;
* NaN localisation hooks do the same (``locate_nonfinite`` names a producer only for
  modules that run eagerly).
"""

from __future__ import annotations

from torch import nn

from gradwatch._measure.model import ModelMap


def compiled_modules(model: nn.Module | ModelMap) -> list[str]:
    """Names (as in the unwrapped model) of the modules of ``model`` that are compiled.

    A module counts when it is ``torch.compile(module)``'s wrapper (it has ``_orig_mod``)
    or was compiled in place with ``module.compile()``
    (:func:`gradwatch._measure.model.is_compiled`); the model walk notes them.
    """
    return list(ModelMap.of(model).compiled)
