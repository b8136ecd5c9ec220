"""Loading ``gradwatch check TARGET``: ``pkg.module:function`` or ``path/file.py:function``.

The CLI imports user code only from the target it was given: the named module (or file)
and whatever that imports itself. Python's own rules for where imports are found are
followed: a file's directory is put first on ``sys.path`` (as ``python file.py`` does),
and for a module target the current directory is (as ``python -m`` does), so a project's
own package can be named without installing it.

Every failure is a :class:`UsageError` (exit status 2) saying what was wrong; a fault in
the user's code comes with its traceback, cut down to the user's frames.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import re
import sys
import traceback
import types
from collections.abc import Iterable
from typing import Any

from gradwatch._cli._errors import UsageError

FORM = "'pkg.module:function' or 'path/to/file.py:function'"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass
class CheckInputs:
    """What the target function returned, checked for shape and types."""

    model: Any
    data: Any
    loss_fn: Any
    optimizer: Any = None


def split_target(target: str) -> tuple[str, str, bool]:
    """``(module or path, function name, is_path)``; raises UsageError if malformed."""
    where, sep, function = target.rpartition(":")
    if not sep or not where or not function:
        raise UsageError(f"TARGET must be {FORM}, got {target!r} (no ':function' part).")
    if not _IDENTIFIER.match(function):
        raise UsageError(
            f"TARGET's function part must be a Python name, got {function!r} in {target!r}."
        )
    is_path = where.endswith(".py") or "/" in where or os.sep in where
    if not is_path and not _MODULE.match(where):
        raise UsageError(
            f"TARGET must be {FORM}; {where!r} is neither a dotted module name nor a .py file."
        )
    return where, function, is_path


def user_traceback(error: BaseException, *, skip_prefixes: Iterable[str] = ()) -> str:
    """The traceback of ``error`` from the first frame of the user's code on.

    Leading frames of gradwatch's CLI, importlib and ``skip_prefixes`` are dropped, and
    leading torch frames too when a user frame follows (``nn.Module.__call__`` before the
    user's ``forward``); an error raised before any user frame keeps its last frames.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    skip = (here, "<frozen importlib", *skip_prefixes)
    library = (*skip, os.path.dirname(os.path.abspath(_torch_file())))
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(skip):
        tb = tb.tb_next
    user = tb
    while user is not None and user.tb_frame.f_code.co_filename.startswith(library):
        user = user.tb_next
    return "".join(traceback.format_exception(type(error), error, user or tb))


def _torch_file() -> str:
    module = sys.modules.get("torch")
    return getattr(module, "__file__", None) or "<no torch>"


def _import_file(path: str) -> types.ModuleType:
    if not os.path.exists(path):
        raise UsageError(f"TARGET file {path!r} does not exist.")
    if not os.path.isfile(path):
        raise UsageError(f"TARGET file {path!r} is not a file.")
    absolute = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(absolute))[0])
    name = f"_gradwatch_target_{stem}"
    spec = importlib.util.spec_from_file_location(name, absolute)
    if spec is None or spec.loader is None:
        raise UsageError(f"TARGET file {path!r} cannot be imported as Python source.")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(absolute)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    # Registered before running it, as the import system does (dataclasses, pickling and
    # typing look modules up by name while the file runs).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # SyntaxError, ImportError, SystemExit, ... in user code
        sys.modules.pop(name, None)
        raise UsageError(
            f"importing {path!r} failed with {type(error).__name__}: {error}",
            user_traceback(error),
        ) from None
    return module


def _import_module(name: str) -> types.ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise UsageError(
                f"cannot import module {name!r}: {missing!r} was not found. Install the "
                "project (pip install -e .), run from the directory that contains it, "
                "or name the file instead: 'path/to/file.py:function'."
            ) from None
        raise UsageError(
            f"importing {name!r} failed with ModuleNotFoundError: {error}",
            user_traceback(error),
        ) from None
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        raise UsageError(
            f"importing {name!r} failed with {type(error).__name__}: {error}",
            user_traceback(error),
        ) from None


def _function(module: types.ModuleType, function: str, where: str) -> Any:
    if not hasattr(module, function):
        defined = sorted(
            name
            for name, value in vars(module).items()
            if callable(value)
            and not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        )
        close = difflib.get_close_matches(function, defined, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = f" Functions defined there: {', '.join(defined)}." if defined else ""
        raise UsageError(f"{where!r} has no function {function!r}.{hint}{listed}")
    value = getattr(module, function)
    if not callable(value):
        raise UsageError(
            f"{where}:{function} is not a function but a {type(value).__name__}. TARGET must "
            "name a function returning (model, data, loss_fn) or (model, data, loss_fn, "
            "optimizer)."
        )
    return value


def validate_returned(value: object, target: str) -> CheckInputs:
    """Check the shape and types of what the target function returned."""
    import torch
    from torch import nn

    expected = "(model, data, loss_fn) or (model, data, loss_fn, optimizer)"
    if not isinstance(value, (tuple, list)) or len(value) not in (3, 4):
        got = (
            f"a {type(value).__name__} of length {len(value)}"
            if isinstance(value, (tuple, list))
            else f"a {type(value).__name__}"
        )
        raise UsageError(f"{target} must return {expected}, but it returned {got}.")
    model, data, loss_fn, *rest = value
    optimizer = rest[0] if rest else None
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"{target} returned {type(model).__name__} as the model (1st item); expected a "
            f"torch.nn.Module. It must return {expected}."
        )
    if isinstance(data, (str, bytes, torch.Tensor)) or not isinstance(data, Iterable):
        raise UsageError(
            f"{target} returned {type(data).__name__} as data (2nd item); expected an "
            "iterable of (inputs, targets) batches, e.g. [(x, y)] or a DataLoader."
        )
    if loss_fn is not None and not callable(loss_fn):  # None: a Hugging Face model's own loss
        raise UsageError(
            f"{target} returned {type(loss_fn).__name__} as loss_fn (3rd item); expected a "
            "callable loss_fn(outputs, targets), e.g. torch.nn.functional.mse_loss (or None "
            "for a Hugging Face model's own loss)."
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(
            f"{target} returned {type(optimizer).__name__} as the optimizer (4th item); "
            "expected a torch.optim.Optimizer (or return 3 items to use the default Adam)."
        )
    return CheckInputs(model, data, loss_fn, optimizer)


def load_target(target: str) -> CheckInputs:
    """Import the target, call its function with no arguments and check the result."""
    where, function, is_path = split_target(target)
    module = _import_file(where) if is_path else _import_module(where)
    factory = _function(module, function, where)
    try:
        value = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        raise UsageError(
            f"calling {target}() failed with {type(error).__name__}: {error}",
            user_traceback(error),
        ) from None
    return validate_returned(value, target)
