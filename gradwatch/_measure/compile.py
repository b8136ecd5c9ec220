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

from gradwatch._measure.layers import strip_wrapper_prefix


def compiled_modules(model: nn.Module) -> list[str]:
    """Names (as in the unwrapped model) of the modules of ``model`` that are compiled.

    A module counts when it is ``torch.compile(module)``'s wrapper (it has ``_orig_mod``)
    or was compiled in place with ``module.compile()``.
    """
    names: list[str] = []
    for name, module in model.named_modules():
        wrapper = isinstance(getattr(module, "_orig_mod", None), nn.Module)
        if wrapper or getattr(module, "_compiled_call_impl", None) is not None:
            stripped = strip_wrapper_prefix(name)
            if stripped not in names:
                names.append(stripped)
    return names
