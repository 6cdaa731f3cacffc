"""The checking engine: a config's values, or a constructor's arguments, against their declarations.

``check_config`` walks a composed config and refuses the first value outside its declaration with one line that
names the key (``trainer.max_epochs=-1: expected an integer >= 1``). ``@declared(group, schema)`` makes a schema the
declaration of a class or function: a config whose ``_target_`` names it is checked against it, and so is every
call from Python (``QLearningAgent(space, alpha=2)``: ``agent.alpha=2: expected a number > 0 and <= 1``). With
``member=``, the constructor writes no default for its settings: a Python call gets the ones it leaves out from that
member's yaml (``blockqnn.schema.defaults``), as the command line does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from blockqnn.errors import ConfigError
from blockqnn.schema.defaults import member_defaults
from blockqnn.schema.entry import SECTIONS, TARGETS
from blockqnn.schema.fields import PATTERN_WORDS

Built = TypeVar("Built", bound=Callable[..., Any])


def declared(group: str, schema: type, member: str | None = None) -> Callable[[Built], Built]:
    """Declare the settings of a class (its constructor) or a function: configs that target it are checked against
    ``schema`` when composed, and its calls from Python in the same way, with the same ``ConfigError`` line
    (``group.key=value: expected ...``). Arguments the schema does not declare (the space, a seed) pass as given.

    ``member``: the group member whose yaml (``conf/<group>/<member>.yaml``) is where the settings' defaults are
    written; the constructor gives them none, and a Python call that leaves a setting out gets the yaml's value."""

    def decorate(built: Built) -> Built:
        names = declarations(schema)[0].keys()
        if not names:  # nothing to check (logger=none)
            built.__schema__ = schema  # type: ignore[attr-defined]
            return built
        call = built.__init__ if isinstance(built, type) else built
        signature = inspect.signature(call)

        @functools.wraps(call)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs)
            written = member_defaults(group, member) if member is not None else {}
            bound.arguments.update({key: written[key] for key in names & written.keys() - bound.arguments.keys()})
            bound = signature.bind(*bound.args, **bound.kwargs)  # a setting no one gives: Python's own TypeError
            bound.apply_defaults()  # the rules see every value (a tournament against the default population)
            check(schema, group, {key: value for key, value in bound.arguments.items() if key in names})
            return call(*bound.args, **bound.kwargs)

        checked.__schema__ = schema  # type: ignore[attr-defined]
        checked.__member__ = member  # type: ignore[attr-defined]
        if not isinstance(built, type):
            return typing.cast(Built, checked)
        built.__init__ = checked  # type: ignore[misc]
        built.__schema__ = schema  # type: ignore[attr-defined]
        return built

    return decorate


def check(schema: type, group: str, values: Mapping[str, Any]) -> None:
    """Refuse the first of ``values`` (settings of ``group``) outside ``schema``, as composition refuses it."""
    for key, problem in _problems(values, schema, f"{group}."):
        raise ConfigError(f"{key}{problem}")


def check_config(cfg: DictConfig) -> None:
    """Refuse the first value of ``cfg`` outside its declared type and legal values, with one line naming the key."""
    root = OmegaConf.get_type(cfg)
    for key, problem in _problems(cfg, root if dataclasses.is_dataclass(root) else None, ""):
        raise ConfigError(f"{key}{problem}")


def schema_of(node: Mapping, path: str, declared: Any = None) -> type | None:
    """The schema of a config node: the one its parent's schema declares, its target's, or its section's."""
    nested = [h for h in typing.get_args(declared) or (declared,) if dataclasses.is_dataclass(h)]
    if nested:
        return nested[0]
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        return TARGETS.get(target) or target_schema(target)
    return SECTIONS.get(path)


@functools.cache
def target_schema(target: str) -> type | None:
    """The schema a target declares (``@declared``), found by importing it as Hydra will; None for a target that
    declares none, or that cannot be imported here (Hydra says why when it builds it)."""
    module, _, name = target.rpartition(".")
    try:
        built = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None
    own = vars(built) if isinstance(built, type) else getattr(built, "__dict__", {})  # not a base class's
    return own.get("__schema__")


def _problems(node: Mapping, schema: type | None, prefix: str) -> Iterator[tuple[str, str]]:
    """``(key, what is wrong)`` for each value under ``node`` that breaks its declaration: the node's own values
    first, then nested sections (whose interpolations, ``${..channels}``, point back at the values above)."""
    hints, limits = declarations(schema) if schema is not None else ({}, {})
    values = _values(node)
    for key, value in values.items():
        problem = _problem(value, hints[key], limits[key]) if key in hints else None
        if problem:
            yield f"{prefix}{key}", problem
            return
    rule = getattr(schema, "rule", None)
    broken = rule(values) if rule is not None else None
    if broken:
        key, problem = broken.split("=", 1)
        yield f"{prefix}{key}", f"={problem}"
        return
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _problems(value, schema_of(value, f"{prefix}{key}", hints.get(key)), f"{prefix}{key}.")


@functools.cache
def declarations(schema: type) -> tuple[dict[str, Any], dict[str, Mapping[str, Any]]]:
    """A schema's type hints and limits, by setting."""
    return typing.get_type_hints(schema), {f.name: f.metadata for f in dataclasses.fields(schema)}


def _values(node: Mapping) -> dict[str, Any]:
    """A node's settings (``_target_``-style keys aside); in a config, the ones set, their interpolations resolved
    (one that cannot resolve here, in a section built apart from its parent, is left to its user)."""
    if not isinstance(node, DictConfig):
        return {key: value for key, value in node.items() if not str(key).startswith("_")}
    values = {}
    for key in node:
        if str(key).startswith("_") or OmegaConf.is_missing(node, key):
            continue
        with contextlib.suppress(Exception):
            values[key] = node[key]
    return values


def _problem(value: Any, hint: Any, limits: Mapping[str, Any]) -> str | None:
    """``=VALUE: expected ...`` if ``value`` does not fit ``hint`` and ``limits``, else None."""
    items = list(value) if _is_sequence(value) and _is_list(hint) else [value]
    if _fits(value, hint) and all(_legal(item, limits) for item in items):
        return None
    shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    shown = list(shown) if isinstance(shown, tuple) else shown
    return f"={'null' if shown is None else shown}: expected {describe(hint, limits)}"


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, Real) and not isinstance(value, bool)
    if origin is list:
        return _is_sequence(value) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is dict or dataclasses.is_dataclass(hint):  # a mapping, or a nested schema
        return isinstance(value, Mapping)
    return isinstance(value, hint)  # str, Path


def _is_sequence(value: Any) -> bool:
    """A list in a config (ListConfig), or a list or tuple given from Python."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) is list or any(_is_list(h) for h in typing.get_args(hint) if h is not type(None))


def _legal(value: Any, limits: Mapping[str, Any]) -> bool:
    if value is None or isinstance(value, bool | Mapping):
        return True
    if "choices" in limits:  # an equal value of a type the choices have (1.0 is no choice of 1)
        return value in limits["choices"] and isinstance(value, tuple({type(c) for c in limits["choices"]}))
    if isinstance(value, str):
        return "pattern" not in limits or re.fullmatch(limits["pattern"], value) is not None
    bounds = {"ge": value.__ge__, "gt": value.__gt__, "le": value.__le__, "lt": value.__lt__}
    return all(bounds[k](v) for k, v in limits.items() if k in bounds)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
          Path: "a path"}


def describe(hint: Any, limits: Mapping[str, Any] = {}) -> str:  # noqa: B006 (read only)
    """What a setting takes, in words: ``an integer >= 1``, ``one of auto, line, log, off``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = typing.get_args(hint) if union else (hint,)
    choices = ", ".join(dict.fromkeys(map(str, limits.get("choices", ()))))
    words = []
    for kind in kinds:
        if typing.get_origin(kind) is list:
            each = f", each one of {choices}" if choices else _bounds(limits, " each")
            words.append(f"a list of {_plural(typing.get_args(kind)[0])}{each}")
        elif choices and kind is not type(None):
            words.append(f"one of {choices}")
        elif kind in (int, float):
            words.append(_NAMES[kind] + _bounds(limits))
        elif kind is str and "pattern" in limits:
            words.append(PATTERN_WORDS.get(limits["pattern"], f"a string matching {limits['pattern']}"))
        else:
            words.append(_NAMES.get(kind, "a mapping"))
    return " or ".join(dict.fromkeys(words))


def _plural(kind: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(kind, "values")


def _bounds(limits: Mapping[str, Any], prefix: str = "") -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{signs[k]} {v}" for k, v in limits.items() if k in signs]
    return f"{prefix} {' and '.join(parts)}" if parts else ""
