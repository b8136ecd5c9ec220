"""Hook callables that are safe to copy and pickle along with the object they hook.

``copy.deepcopy(model)``, ``copy.deepcopy(optimizer)``, ``torch.save(model)`` and
``pickle`` copy the hook dictionaries too. A bound method of the Watcher there would drag
the whole watcher (writers, threads) into the copy, or make pickling fail. A
:class:`WatcherHook` instead turns into an inert :class:`InertHook` when copied or
pickled: the copy is simply not watched, and the original stays watched.
"""

from __future__ import annotations

from typing import Any

import torch


class InertHook:
    """What a copied or unpickled :class:`WatcherHook` becomes: a hook that does nothing."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


class CopyInertHook:
    """Base of every hook gradwatch registers: copies and pickles become :class:`InertHook`.

    ``__reduce__`` is what ``copy.deepcopy``, ``pickle`` and ``torch.save`` consult, so a
    copied model or optimizer carries an inert hook instead of a link to this watcher.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[InertHook], tuple[()]]:
        return (InertHook, ())


class WatcherHook(CopyInertHook):
    """Calls ``getattr(owner, method)`` on each invocation; becomes inert when copied."""

    __slots__ = ("method", "owner")

    def __init__(self, owner: object, method: str) -> None:
        self.owner = owner
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call_untraced(getattr(self.owner, self.method), *args, **kwargs)

    def __repr__(self) -> str:
        return f"<gradwatch hook {type(self.owner).__name__}.{self.method}>"


def being_traced() -> bool:
    """Whether the current forward is being traced into a graph rather than run.

    ``torch.compile``/``torch.export`` (Dynamo) and ``torch.jit.trace`` run module hooks
    while tracing; gradwatch's forward hooks then do nothing, so that their checks never
    become ops of the user's graph (and ``jit.trace``'s check that two traces agree is
    not upset by a hook that records one and not the other).
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


_untraced: Any = None


def _call_untraced(method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` outside any torch.compile trace.

    When the user compiles ``optimizer.step``, Dynamo then calls the step hooks eagerly (at
    most a graph break around them) instead of tracing the watcher's host-side
    bookkeeping into dozens of graphs. ``torch.compiler.disable`` is applied on first use,
    not at import: it imports ``torch._dynamo``, which costs seconds that
    ``import gradwatch`` (and the CLI) should not pay.
    """
    global _untraced
    if _untraced is None:
        _untraced = torch.compiler.disable(lambda function, *a, **k: function(*a, **k))
    return _untraced(method, *args, **kwargs)
