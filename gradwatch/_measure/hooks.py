"""The hook callables gradwatch registers on the user's model, tensors and optimizer.

``copy.deepcopy(model)``, ``copy.deepcopy(optimizer)``, ``torch.save(model)`` and
``pickle`` copy the hook dictionaries too. A bound method of the Watcher there would drag
the whole watcher (writers, threads) into the copy, or make pickling fail. Every hook
here instead turns into an inert :class:`InertHook` when copied or pickled: the copy is
simply not watched, and the original stays watched.

Two kinds:

* :class:`SafeHook`, every forward, forward-pre, gradient and loss hook: measurement on
  the user's forward and backward, which must never break them;
* :class:`WatcherHook`, the optimizer step hooks: they *are* the watched step (policies
  raise from them on purpose), so they hold the watcher and let errors through.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

logger = logging.getLogger(__name__)


class InertHook:
    """What a copied or unpickled gradwatch hook becomes: a hook that does nothing."""

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


class SafeHook(CopyInertHook):
    """Calls ``owner.<method>(*bound, *hook_args)``, safely; returns None (changes nothing).

    * The owner is held weakly: a hook left behind (a tensor kept past its step, a
      handle never removed) keeps nothing alive, and does nothing once the owner is gone.
    * Inert while the forward is traced (:func:`being_traced`): its bookkeeping never
      becomes ops, graph breaks or recompiles of the user's graph.
    * An exception is swallowed (a measurement must never break the user's forward or
      backward), logged once per owner and method with its traceback, and ``on_error``,
      a method of the owner called with ``*bound``, drops what was half measured.
    """

    __slots__ = ("_bound", "_function", "_method", "_on_error", "_owner")

    def __init__(self, owner: object, method: str, *bound: Any, on_error: str | None = None):
        self._owner = weakref.ref(owner)
        self._method = method
        # The class's function, looked up once: this runs per module call.
        self._function = getattr(type(owner), method)
        self._bound = bound
        self._on_error = on_error

    def __call__(self, *args: Any) -> None:
        if _is_compiling() or _is_tracing():  # being_traced(), inlined: per module call
            return
        owner = self._owner()
        if owner is None:
            return
        try:
            self._function(owner, *self._bound, *args)
        except Exception:
            self._failed(owner)

    def _failed(self, owner: object) -> None:
        """Called inside the ``except`` clause: the exception is the current one."""
        if self._on_error is not None:
            try:
                getattr(owner, self._on_error)(*self._bound)
            except Exception:
                logger.debug("gradwatch: %s.%s failed", type(owner).__name__, self._on_error)
        log_failure(owner, self._method)

    def __repr__(self) -> str:
        owner = self._owner()
        name = type(owner).__name__ if owner is not None else "(gone)"
        return f"<gradwatch safe hook {name}.{self._method}>"


def log_failure(owner: object, method: str) -> None:
    """Log that hook method ``owner.<method>`` failed: a warning the first time, DEBUG
    after. Called inside the ``except`` clause: the exception is the current one."""
    where = f"{type(owner).__name__}.{method}"
    if _first_failure(owner, method):
        logger.warning(
            "gradwatch: %s failed and was skipped (training goes on without that "
            "measurement; later failures of it are logged at DEBUG level)",
            where,
            exc_info=True,
        )
    else:
        logger.debug("gradwatch: %s failed again", where, exc_info=True)


#: Per owner, the methods whose failure has been logged (owners are held weakly).
_REPORTED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _first_failure(owner: object, method: str) -> bool:
    """Whether this is the first failure of ``owner.<method>`` (and remember it)."""
    try:
        reported = _REPORTED.setdefault(owner, set())
    except TypeError:  # an unhashable owner: every failure counts as the first
        return True
    if method in reported:
        return False
    reported.add(method)
    return True


class WatcherHook(CopyInertHook):
    """Calls ``getattr(owner, method)`` on each invocation; becomes inert when copied.

    Unlike :class:`SafeHook` it holds the owner strongly (an optimizer hook is what keeps
    ``gradwatch.watch(model, optimizer)`` alive when its result is not kept), runs
    eagerly rather than not at all inside a compiled ``optimizer.step``, and lets errors
    through: a ``raise`` policy stops training from here on purpose.
    """

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
    return _is_compiling() or _is_tracing()


# Module-level names, so that SafeHook can inline being_traced() (Dynamo recognises the
# functions themselves, whatever name they are called by).
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch.jit.is_tracing


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
