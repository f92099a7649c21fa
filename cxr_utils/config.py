"""Dataclass configs with presets, one override path for Python, the CLI and papermill.

A config is a plain ``@dataclass``. ``apply_overrides`` sets fields from a dict (papermill parameters,
keyword arguments) and ``add_arguments``/``overrides_from_args`` expose the same fields as CLI flags;
all three go through ``coerce``, so an unknown field or an ill-typed value is the same clear
:class:`ConfigError` wherever it comes from.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from .errors import ConfigError

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option(default: Any, help: str) -> Any:
    """A dataclass field with a help text (shown by ``--help``); tuple defaults are immutable, so safe."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"help": help})


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ConfigError.

    Strings (from the CLI and papermill ``-p``) are parsed: ``"true"/"yes"/"on"/"1"`` and
    ``"false"/"no"/"off"/"0"`` for a bool, ``"a,b"`` or a Python literal ``"[1, 2]"`` for a list or
    tuple, a literal ``"{'k': 1}"`` for a dict. Python values must already have the right type, except
    that an int is accepted for a float field, a list for a tuple field and numpy scalars for their kind.
    A bool field accepts a real bool only (or one of those strings): ``1`` or ``"maybe"`` is an error.
    A float field refuses non-finite numbers in any spelling (``"inf"``, ``"-Infinity"``, ``"nan"``,
    ``"1e999"``, ``float("nan")``, ``numpy.inf``): no setting of any config means infinity or NaN, and
    such a value only surfaces later as NaN losses or an endless loop.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message ("expected a finite number, got 'inf'")
            return coerce(name, value, options[0])
        for arg in options:
            try:
                return coerce(name, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{name}: expected one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _literal(name, value) if value.strip()[:1] in "[(" and value.strip() else \
                [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [coerce(name, v, inner) if inner is not Any else v for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _literal(name, value) if value.strip() else {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a dict, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, (bool, np_bool())):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (bool, np_bool())):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        number: float | None = None
        if isinstance(value, numbers.Real):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(number):  # "inf", "-Infinity", "nan", 1e999, numpy's nan: never a setting
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _literal(name: str, text: str) -> Any:
    """A Python literal written as text (papermill passes ``-p x "[1, 2]"`` as that string)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ConfigError(f"{name}: cannot read {text!r} as a Python literal") from None


def np_bool() -> type:
    """numpy's bool scalar type (``numpy.bool_``), accepted where a bool is expected."""
    import numpy as np

    return np.bool_


def typed_keywords(fn: F) -> F:
    """Decorate a public function so every argument goes through :func:`coerce` by its annotation.

    Papermill parameters and CLI values arrive as strings (``"false"``, ``"[0.1, 1.0]"``, ``"64"``);
    the decorated function sees the typed values, or the caller gets a one-line ConfigError naming
    the keyword. Arguments whose annotation ``coerce`` does not know (tensors, paths) pass unchanged.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hints = _hints(fn)
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if name in hints and kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                bound.arguments[name] = coerce(name, value, hints[name])
        return fn(*bound.args, **bound.kwargs)

    return typing.cast(F, wrapper)


@functools.cache
def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    return {k: v for k, v in typing.get_type_hints(fn).items() if k != "return"}


def check_same_settings(saved: Mapping[str, Any], current: Mapping[str, Any], allowed_changes: set[str] | frozenset[str],
                        what: str, where: Path | str, advice: str = "use another folder") -> None:
    """Raise ConfigError if ``saved`` and ``current`` settings differ outside ``allowed_changes``.

    ``saved`` is what a folder's settings file holds (fields added since it was written should be
    filled with their defaults by the caller), ``current`` the settings of this call; both are
    compared after a JSON round trip, so tuples equal lists. The one-line message names ``what``
    (e.g. "a study"), the folder ``where``, every differing key with its old and new value, and ends
    with ``advice``.
    """
    norm_saved, norm_current = json.loads(json.dumps(dict(saved))), json.loads(json.dumps(dict(current)))
    changed = [f"{k}: {norm_saved.get(k)!r} -> {norm_current.get(k)!r}"
               for k in sorted(set(norm_saved) | set(norm_current))
               if k not in allowed_changes and norm_saved.get(k) != norm_current.get(k)]
    if changed:
        raise ConfigError(f"{where} holds {what} with other settings ({'; '.join(changed)}); {advice}")


def apply_overrides(cfg: C, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> C:
    """Return a copy of ``cfg`` with fields replaced, type-checked; unknown names are errors."""
    merged = dict(overrides or {}, **kwargs)
    types_ = _field_types(type(cfg))
    unknown = sorted(set(merged) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown {type(cfg).__name__} field(s) {unknown}; known: {', '.join(sorted(types_))}"
        )
    changes = {k: coerce(k, v, types_[k]) for k, v in merged.items()}
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


def from_preset(cls: type[C], presets: Mapping[str, Mapping[str, Any]], name: str | None,
                overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``cls`` from a named preset, then apply overrides."""
    base: dict[str, Any] = {}
    if name:
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(presets)}")
        base = dict(presets[name])
    cfg = apply_overrides(cls(), base)
    return apply_overrides(cfg, overrides or {})


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[C], path: str | Path) -> C:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    known = {f.name for f in dataclasses.fields(cls)}
    return apply_overrides(cls(), {k: v for k, v in data.items() if k in known})


def add_arguments(parser: Any, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` flag per dataclass field; values stay strings until ``coerce``."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _field_types(cls)[f.name]
        help_ = f.metadata.get("help", "") + f" ({_type_name(tp)})"
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_)


def overrides_from_args(args: Any, cls: type) -> dict[str, Any]:
    """The dataclass fields that were given on the command line (as strings, coerced later)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
