"""Generic checks of method-config values from their type hints (issue #13 item 4).

:func:`check_config_values` walks every dataclass field of a config and checks its value against
the field's annotation, so a new field is covered the moment it is declared:

* ``Literal[...]`` — the value is one of the listed strings (the error lists the allowed values);
* ``bool`` / ``int`` / ``float`` / ``str`` — the right type (an int is accepted for a float, a bool
  never for a number); every number is finite and ``>= 0`` unless the field is listed in the
  class's ``SIGNED`` set; fields in ``POSITIVE`` must be ``> 0``;
* ``tuple[X, ...]`` / ``tuple[X, Y]`` — a tuple (or list) whose items are checked as ``X``;
* ``X | None`` — ``None`` or a valid ``X``.

Errors are ``ValueError`` naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Literal, Union

__all__ = ["check_config_values", "class_set"]


def class_set(cls: type, attribute: str) -> frozenset[str]:
    """Union of a ``ClassVar[frozenset[str]]`` over ``cls``'s MRO (subclasses add to their bases')."""
    out: set[str] = set()
    for klass in cls.__mro__:
        out |= set(klass.__dict__.get(attribute, ()))
    return frozenset(out)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _describe(args[0]) if args else "items"
        return f"a tuple/list of {inner}"
    if tp is type(None):
        return "None"
    name = getattr(tp, "__name__", str(tp))
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _problem(value: Any, tp: Any, *, positive: bool, signed: bool) -> str | None:
    """None when ``value`` fits ``tp``; else a short description of what is wrong."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return None
    if origin is Literal:
        allowed = typing.get_args(tp)
        return None if value in allowed and type(value) in {type(a) for a in allowed} else "not allowed"
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return None if type(None) in args else "None is not allowed"
        problems = [_problem(value, a, positive=positive, signed=signed) for a in args if a is not type(None)]
        if any(p is None for p in problems):
            return None
        return problems[0] if len(problems) == 1 else "not allowed"
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return f"expected a tuple/list, got {type(value).__name__}"
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif args:
            if len(args) != len(value):
                return f"expected {len(args)} items, got {len(value)}"
            item_types = list(args)
        else:
            return None
        for i, (item, item_tp) in enumerate(zip(value, item_types)):
            p = _problem(item, item_tp, positive=positive, signed=signed)
            if p is not None:
                return f"item {i} ({item!r}): {p}"
        return None
    if tp is bool:
        return None if isinstance(value, bool) else f"expected a bool, got {type(value).__name__}"
    if tp is int or tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {'an int' if tp is int else 'a number'}, got {type(value).__name__}"
        if tp is int and not isinstance(value, int):
            return f"expected an int, got {type(value).__name__}"
        if not math.isfinite(value):
            return "must be finite"
        if positive and value <= 0:
            return "must be > 0"
        if not signed and value < 0:
            return "must be >= 0"
        return None
    if tp is str:
        return None if isinstance(value, str) else f"expected a str, got {type(value).__name__}"
    return None  # other annotations (classes, callables): not checked generically


def check_config_values(cfg: Any) -> None:
    """Check every field of the dataclass ``cfg`` against its type hint (see the module docstring).

    Raises:
        ValueError: ``"<Class>.<field>: <problem>; got <value>, expected <description>"``.
    """
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    positive = class_set(cls, "POSITIVE")
    signed = class_set(cls, "SIGNED")
    for f in dataclasses.fields(cfg):
        tp = hints.get(f.name)
        if tp is None:
            continue
        value = getattr(cfg, f.name)
        problem = _problem(value, tp, positive=f.name in positive, signed=f.name in signed)
        if problem is not None and typing.get_origin(tp) is Literal:
            choices = [str(a) for a in typing.get_args(tp)]
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
            raise ValueError(f"{f.name}: expected {listed}, got {value!r} ({cls.__name__})")
        if problem is not None:
            raise ValueError(
                f"{f.name}: {problem}; got {value!r} ({cls.__name__} expects {_describe(tp)})"
            )


def check_strategy_arguments(
    *, train_mb_size: Any, eval_mb_size: Any, train_epochs: Any, use_task_labels: Any, seed: Any
) -> None:
    """The strategy constructor's own numeric and flag arguments (batch sizes >= 1, ...).

    Raises:
        ValueError: naming the argument and the bad value.
    """
    def _int(name: str, value: Any, minimum: int, optional: bool) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            extra = " or None" if optional else ""
            raise ValueError(f"{name}: must be an int >= {minimum}{extra}, got {value!r}")

    _int("train_mb_size", train_mb_size, 1, optional=False)
    _int("eval_mb_size", eval_mb_size, 1, optional=True)
    _int("train_epochs", train_epochs, 1, optional=True)
    _int("seed", seed, 0, optional=False)
    if not isinstance(use_task_labels, bool):
        raise ValueError(f"use_task_labels: must be True or False, got {use_task_labels!r}")
