"""Argument rules shared by every public entry point: one message shape everywhere.

Each option of ``watch()`` and each clipper argument is declared once, together with its
rule (:class:`IntAtLeast`, :class:`Number`, :class:`OneOf`, :class:`Flag`,
:class:`OrNone`, ...): dataclass fields with :func:`rule`, constructor arguments with
:func:`checked`. A rule refuses a bad value with ``TypeError`` (wrong kind) or
``ValueError`` (right kind, out of range), and the message names the argument, what was
expected, what arrived, a hint on how to fix it and the default, which is read from the
declaration so that no message restates it by hand. Bad input thus fails at attach time,
not at step 10,000.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import math
import numbers
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar, cast

import numpy as np

#: Marks "no default": the argument is required (as in :mod:`inspect` signatures).
NO_DEFAULT: Any = inspect.Parameter.empty

_RULE = "gradwatch.rule"  # the key of a field's rule in its dataclass metadata

Problem = tuple[type[Exception], str]


def _is_int(value: object) -> bool:
    # numbers.Integral: numpy's integer scalars (np.int64 from a config file or an
    # array) count too; bool is an int subclass but means a misplaced flag.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # numbers.Real: np.float32 as well as np.float64 (a float subclass) and the ints.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number (or bool) it holds; anything else as it is.

    Values accepted as ints or numbers are stored in this form, so that no later
    ``isinstance(x, int)`` or ``deque(maxlen=x)`` meets a numpy scalar.
    """
    return value.item() if isinstance(value, np.generic) else value


def _arrived(value: object) -> str:
    """What arrived, with its type: a wrong kind is easier to spot as ``str '1.0'``."""
    return f"{type(value).__name__} {value!r}"


def show(value: object) -> str:
    """``value`` as a person writes it: 1e4 rather than 10000.0, 100 rather than 100.0."""
    if not isinstance(value, float) or not math.isfinite(value):
        return repr(value)
    plain = repr(int(value)) if value.is_integer() else repr(value)
    mantissa, exponent = f"{value:e}".split("e")
    scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return min(plain, scientific, key=len)  # the plain form on a tie


class Rule(abc.ABC):
    """What one argument must be, with a hint that says what it means or how to fix it."""

    def __init__(self, *, hint: str = "") -> None:
        self.hint = hint

    @abc.abstractmethod
    def problem(self, value: object) -> Problem | None:
        """None when ``value`` obeys the rule, else the error and ``"must be ..., got ..."``."""

    def check(self, name: str, value: object, default: object = NO_DEFAULT) -> None:
        """Raise this rule's error for a bad ``value`` of the argument ``name``."""
        found = self.problem(value)
        if found is None:
            return
        error, text = found
        parts = [f"{name} {text}.", self.hint]
        if default is not NO_DEFAULT:
            parts.append(f"The default is {show(default)}.")
        raise error(" ".join(part for part in parts if part))


class IntAtLeast(Rule):
    """An int (not a bool) >= ``minimum``."""

    def __init__(self, minimum: int, *, hint: str = "") -> None:
        super().__init__(hint=hint)
        self.minimum = minimum

    def problem(self, value: object) -> Problem | None:
        if not _is_int(value):
            return TypeError, f"must be an int >= {self.minimum}, got {_arrived(value)}"
        if value < self.minimum:  # type: ignore[operator]
            return ValueError, f"must be >= {self.minimum}, got {plain(value)!r}"
        return None


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


class Number(Rule):
    """A real number (int or float, not a bool), finite unless ``allow_inf``, within bounds."""

    def __init__(
        self,
        *,
        minimum: float | None = None,
        exclusive_minimum: float | None = None,
        maximum: float | None = None,
        exclusive_maximum: float | None = None,
        allow_inf: bool = False,
        hint: str = "",
    ) -> None:
        super().__init__(hint=hint)
        self.allow_inf = allow_inf
        bounds = {
            ">=": minimum,
            ">": exclusive_minimum,
            "<=": maximum,
            "<": exclusive_maximum,
        }
        # Bounds as floats, so that messages read "> 0.0" whatever the declaration wrote.
        self.bounds = [(sign, float(b)) for sign, b in bounds.items() if b is not None]

    def problem(self, value: object) -> Problem | None:
        if not _is_number(value):
            return TypeError, f"must be a number, got {_arrived(value)}"
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number) or (math.isinf(number) and not self.allow_inf):
            kind = "a number, not NaN" if self.allow_inf else "a finite number"
            return ValueError, f"must be {kind}, got {plain(value)!r}"
        for sign, bound in self.bounds:
            if not _COMPARE[sign](number, bound):
                return ValueError, f"must be {sign} {bound}, got {plain(value)!r}"
        return None


class OneOf(Rule):
    """One of a few allowed values (compared with their type: ``True`` is not ``1``)."""

    def __init__(self, *choices: object, hint: str = "") -> None:
        super().__init__(hint=hint)
        self.choices = choices

    def problem(self, value: object) -> Problem | None:
        if any(type(value) is type(choice) and value == choice for choice in self.choices):
            return None
        return ValueError, f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"


class Flag(Rule):
    """``True`` or ``False`` (not 0/1, which usually means a misplaced argument)."""

    def problem(self, value: object) -> Problem | None:
        if isinstance(value, (bool, np.bool_)):
            return None
        return TypeError, f"must be True or False, got {_arrived(value)}"


class OrNone(Rule):
    """``None`` (the feature is off), or a value obeying ``rule`` (its hint should say so)."""

    def __init__(self, rule: Rule, *, hint: str = "") -> None:
        super().__init__(hint=hint or rule.hint)
        self.rule = rule

    def problem(self, value: object) -> Problem | None:
        return None if value is None else self.rule.problem(value)


class Strings(Rule):
    """A collection of strings (a list, tuple or set of ``what``), not a single string."""

    def __init__(self, what: str, *, hint: str = "") -> None:
        super().__init__(hint=hint)
        self.what = what

    def problem(self, value: object) -> Problem | None:
        # A str is itself a collection of strings; a generator would be used up by the check.
        if (
            isinstance(value, Collection)
            and not isinstance(value, (str, bytes))
            and all(isinstance(item, str) for item in value)
        ):
            return None
        return TypeError, f"must be a sequence of {self.what} (str), got {value!r}"


class Checked(Rule):
    """A rule too particular to declare: ``validate(value)`` raises its own message."""

    def __init__(self, validate: Callable[[Any], object]) -> None:
        super().__init__()
        self.validate = validate

    def problem(self, value: object) -> Problem | None:
        self.validate(value)
        return None


def rule(declared: Rule) -> Mapping[str, Rule]:
    """A dataclass field's metadata holding its rule: ``field(default=1, metadata=rule(...))``."""
    return {_RULE: declared}


def check_fields(instance: Any) -> None:
    """Apply every field's rule to its value, in declaration order (first bad one raises)."""
    for field in dataclasses.fields(instance):
        declared = field.metadata.get(_RULE)
        if declared is not None:
            value = getattr(instance, field.name)
            declared.check(field.name, value, field.default)
            if plain(value) is not value:  # a numpy scalar, stored as a Python number
                object.__setattr__(instance, field.name, plain(value))


Function = TypeVar("Function", bound=Callable[..., Any])


def checked(**rules: Rule) -> Callable[[Function], Function]:
    """Check a function's arguments against ``rules`` before its body runs.

    Made for constructors: an argument is named as ``Owner(argument)``, e.g.
    ``ClipNorm(max_norm)``, and its default is read from the signature.
    """

    def decorate(function: Function) -> Function:
        signature = inspect.signature(function)
        unknown = set(rules) - set(signature.parameters)
        if unknown:  # a typo in a declaration: fail at import, not at the first call
            raise TypeError(f"{function.__qualname__} has no argument(s) {sorted(unknown)}")
        owner = function.__qualname__
        if function.__name__ == "__init__":
            owner = owner.rsplit(".", 1)[0]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                arguments = signature.bind(*args, **kwargs)
            except TypeError:  # a missing or unknown argument: Python's own message says it
                return function(*args, **kwargs)
            arguments.apply_defaults()
            for name, declared in rules.items():
                default = signature.parameters[name].default
                declared.check(f"{owner}({name})", arguments.arguments[name], default)
                arguments.arguments[name] = plain(arguments.arguments[name])
            return function(*arguments.args, **arguments.kwargs)

        return cast(Function, wrapper)

    return decorate


def require_int(name: str, value: object, *, minimum: int, hint: str = "") -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is an int >= minimum."""
    IntAtLeast(minimum, hint=hint).check(name, value)
