"""The typed-section reader: one YAML mapping checked for its valid and required keys
(``section``), and typed getters over its values (``Section``) that record each problem at
the key's line and fall back to the default.  Values are described in messages without
ever echoing a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from proxy.config.files import File
from proxy.config.model import Secret
from proxy.config.yamlsrc import Entry, Map, Node, Scalar, Seq

_S = TypeVar("_S", bound=str)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def kind_of(node: Node) -> str:
    """What a node is, never showing its value (it may be a secret)."""
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    value = node.value
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else f"a YAML {type(value).__name__}"


def describe(node: Node) -> str:
    """What a node is, showing a scalar's value."""
    if not isinstance(node, Scalar) or node.value is None:
        return kind_of(node)
    if isinstance(node.value, bool):
        return f"{node.text} (a boolean)"
    if isinstance(node.value, int | float):
        return node.text
    if isinstance(node.value, str):
        return repr(node.value) if node.value else "an empty string"
    return f"{node.text!r} ({kind_of(node)})"


def _is_number(value: object) -> bool:
    """An int or a finite float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


@dataclass
class Section:
    """The validated keys of one mapping, with typed getters that report problems.

    A getter returns the default when the key is absent or its value is invalid
    (the problem is recorded, and the loader raises before anything is returned).
    """

    f: File
    where: str  # dotted path of the mapping; "" at top level
    line: int  # line of the key that holds the mapping
    fields: Mapping[str, Entry]

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def bad(self, key: str, expected: str, got: str | None = None) -> None:
        entry = self.fields[key]
        got = got or describe(entry.value)
        self.f.error(entry.key_line, f"{self.path(key)}: {expected}, got {got}")

    def value(self, key: str) -> object:
        """The scalar value at ``key``; None when absent or not a scalar."""
        entry = self.fields.get(key)
        return entry.value.value if entry is not None and isinstance(entry.value, Scalar) else None

    def text(self, key: str, default: str = "") -> str:
        value = self.value(key)
        if key not in self.fields:
            return default
        if isinstance(value, str) and value.strip():
            return value
        hint = "; put it in quotes" if _is_number(value) or isinstance(value, bool) else ""
        self.bad(key, "expected a non-empty string", describe(self.fields[key].value) + hint)
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key)
        if isinstance(value, bool):
            return value
        if key in self.fields:
            self.bad(key, "expected true or false")
        return default

    def integer(self, key: str, default: int, top: int | None = None, low: int = 1) -> int:
        value = self.value(key)
        if isinstance(value, int) and _is_number(value) and low <= value <= (top or value):
            return value
        if key in self.fields:
            expected = (f"an integer from {low} to {top}" if top else
                        "a positive integer" if low == 1 else f"an integer of at least {low}")
            self.bad(key, f"expected {expected}")
        return default

    def number(self, key: str, default: float) -> float:
        value = self.value(key)
        if isinstance(value, int | float) and _is_number(value) and value > 0:
            return float(value)
        if key in self.fields:
            self.bad(key, "expected a positive number")
        return default

    def choice(self, key: str, choices: tuple[_S, ...], default: _S) -> _S:
        entry = self.fields.get(key)
        if entry is None:
            return default
        node, valid = entry.value, ", ".join(choices)
        if not isinstance(node, Scalar) or node.value is None:
            self.bad(key, f"expected one of {valid}")
            return default
        for choice in choices:
            if node.value == choice:
                return choice
        self.f.error(entry.key_line, f"{self.path(key)}: {node.text!r} is not one of {valid}")
        return default

    def url(self, key: str) -> str:
        raw = self.text(key)
        problem = url_problem(raw) if raw else None
        if problem is not None:
            self.f.error(self.fields[key].key_line, f"{self.path(key)}: {problem}")
            return ""
        return raw.rstrip("/")

    def secret(self, key: str, env: Mapping[str, str]) -> Secret | None:
        name = self.text(key)
        if not name:
            return None
        line = self.fields[key].key_line
        if not _ENV_NAME.fullmatch(name):
            self.f.error(line, f"{self.path(key)}: must be the name of an environment "
                         "variable (letters, digits, _), not a value")
        elif name not in env:
            self.f.error(line, f"{self.path(key)}: environment variable {name} is not set")
        elif not env[name]:
            self.f.error(line, f"{self.path(key)}: environment variable {name} is empty")
        else:
            return Secret(env[name])
        return None

    def sub(self, key: str, valid: tuple[str, ...], required: tuple[str, ...] = ()) -> Section:
        entry = self.fields.get(key)
        if entry is None:
            return Section(self.f, self.path(key), self.line, {})
        return section(self.f, entry.value, self.path(key), entry.key_line, valid, required)


@dataclass(frozen=True)
class UrlKind:
    schemes: tuple[str, ...]
    name: str  # "an http:// or https://"
    secret: str  # where credentials go instead
    query: str  # why a query is wrong


HTTP_URL = UrlKind(("http", "https"), "an http:// or https://", "use an api_key_env field",
                   "a base URL cannot have a ?query or #fragment")


def url_problem(raw: str, kind: UrlKind = HTTP_URL) -> str | None:
    """Why ``raw`` is not a plain URL of this kind (credentials go in the environment)."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is not None and (parts.username or parts.password):
        return f"must not contain credentials (user:password@); {kind.secret}"
    if parts is None or parts.scheme not in kind.schemes or not parts.hostname:
        return f"{raw!r} is not {kind.name} URL"
    if parts.query or parts.fragment:
        return f"{raw!r}: {kind.query}"
    return None


def section(
    f: File,
    node: Node,
    where: str,
    line: int,
    valid: tuple[str, ...],
    required: tuple[str, ...] = (),
) -> Section:
    """Check that ``node`` is a mapping with only ``valid`` keys and all ``required`` ones."""
    place = f"in {where}" if where else "at top level"
    if not isinstance(node, Map):
        prefix = f"{where}: expected a mapping" if where else "expected a mapping at top level"
        f.error(line, f"{prefix}, got {describe(node)}")
        return Section(f, where, line, {})
    for name, entry in node.entries.items():
        if name not in valid:
            f.error(entry.key_line, f"unknown key {name!r} {place} (valid: {', '.join(valid)})")
    for name in required:
        if name not in node.entries:
            f.error(line, f"missing required key {name!r} {place}")
    return Section(f, where, line, {k: e for k, e in node.entries.items() if k in valid})
