"""Declared keys: what the model's dataclass fields say, read by reflection.  Each YAML
key is declared once in ``model``; from those declarations come the valid and required
keys of a section (``keys_of``, ``required_of``), the values a choice allows
(``choices_of``), and every plain field read by its declared type, default and bounds
(``read_plain``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from proxy.config.model import Action
from proxy.config.sections import Section

#: The actions in the order a message lists them: block, flag, pass.
ACTIONS = tuple(action.value for action in Action)[::-1]


def _path(f: Field[Any]) -> str | None:
    path: str | None = f.metadata.get("key", f.name)
    return path


def keys_of(cls: type[Any], prefix: str = "") -> tuple[str, ...]:
    """The YAML keys ``cls`` declares (under ``prefix.``, for nested ones), in order."""
    found: dict[str, None] = {}
    for f in fields(cls):
        path = _path(f)
        if path is None or not path.startswith(prefix):
            continue
        found[path[len(prefix):].split(".")[0]] = None
    return tuple(found)


def required_of(cls: type[Any]) -> tuple[str, ...]:
    return tuple(str(_path(f)) for f in fields(cls) if f.metadata.get("required"))


def choices_of(cls: type[Any], name: str) -> tuple[str, ...]:
    """The values a ``Literal`` field allows."""
    return tuple(get_args(get_type_hints(cls)[name]))


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def read_plain(sec: Section, cls: type[Any], prefix: str = "") -> dict[str, Any]:
    """Every plain field of ``cls`` whose key is in ``sec`` (under ``prefix.``), read by
    its declared type, with its declared default and bounds."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        path = _path(f)
        if (path is None or f.metadata.get("own") or not path.startswith(prefix)
                or "." in path[len(prefix):]):
            continue
        name, hint, default = path[len(prefix):], hints[f.name], _default(f)
        value = _typed(sec, name, hint, default, f.metadata)
        if value is not _SKIP:
            values[f.name] = value
    return values


_SKIP = object()  # a field whose type the plain reader leaves to its owner


def _typed(sec: Section, name: str, hint: Any, default: Any, meta: Mapping[str, Any]) -> Any:
    if hint is bool:
        return sec.flag(name, default)
    if hint is int:
        return sec.integer(name, default, meta.get("top"), meta.get("low", 1))
    if hint == int | None:
        return sec.integer(name, 0) or None
    if hint is float:
        return sec.number(name, default)
    if hint is str:
        return sec.text(name, default)
    if hint is Action:
        return Action(sec.choice(name, ACTIONS, default.value))
    if get_origin(hint) is Literal:
        return sec.choice(name, get_args(hint), default)
    return _SKIP
