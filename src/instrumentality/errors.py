"""Errors with messages a user can act on, and the checks that raise them before any compute."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import types
import typing


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


class DataFileError(ValueError):
    """A file the suite reads (JSON, CSV, cache) is missing, unreadable or damaged; the message names it."""


def check_config(obj, group: str, checks):
    """checks: (field, ok, allowed) triples. Raises ConfigError naming `group.field` for the first failure."""
    for name, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{group}.{name} must be {allowed}; got {getattr(obj, name)!r}")


# ---------------------------------------------------------------------------- types of config values
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list", dict: "a mapping"}


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s" if origin is list and args else \
            _TYPE_WORDS.get(origin, str(tp))
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _is_instance(value, tp) -> bool:
    if tp is typing.Any or tp is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:  # an integer is a number; a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list or tp is list:
        args = typing.get_args(tp)
        if not isinstance(value, collections.abc.Sequence) or isinstance(value, str):
            return False
        return not args or all(_is_instance(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, collections.abc.Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this check does not understand: the constructor's own checks apply


def check_types(target, values: dict, group: str):
    """Check `values` against the annotations of `target` (a dataclass or a callable): an unknown key, or a
    value of the wrong type, raises ConfigError naming `group.key` and the type allowed."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target if isinstance(target, type) else type(target))
        known = {f.name for f in dataclasses.fields(target)}
    else:
        fn = target.__init__ if isinstance(target, type) else target  # type: ignore[misc]
        params = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn)
        known = set(params) - {"self"}
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            known = None
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if known is not None and key not in known:
            raise ConfigError(f"{group}.{key} is not a setting of {group}; the settings are: "
                              f"{', '.join(sorted(known))}")
        tp = hints.get(key)
        if tp is not None and not _is_instance(value, tp):
            raise ConfigError(f"{group}.{key} must be {_describe(tp)}; got {value!r}")


def check_dataclass_types(obj, group: str):
    """For a dataclass's __post_init__: every field's value has its annotated type."""
    check_types(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, group)


NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+@-]*$")


NAME_MAX = 200  # characters: a folder name (at most 255 bytes on common filesystems) with room for a date prefix


def check_name(value, key: str) -> str:
    """A name that becomes one folder: letters, digits and _ . , = + @ -, no path separator, not '..', at
    most NAME_MAX characters."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value) or ".." in value:
        raise ConfigError(f"{key} must be one folder name (letters, digits and _ . , = + @ -; no '/' and no "
                          f"'..'); got {value!r}")
    if len(value) > NAME_MAX:
        raise ConfigError(f"{key} must be at most {NAME_MAX} characters (it names a folder); got {len(value)}")
    return value
