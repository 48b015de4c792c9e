"""Line-tracking YAML: PyYAML's safe composer turned into small typed nodes.

Every node remembers its 1-based line and every mapping entry the line of its
key, so a validator can point at exactly the place a problem is.  Duplicate
keys, non-scalar keys, merge keys and unknown tags are reported as problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Scalar:
    value: object  # str, int, float, bool, None (or a date, bytes: never accepted)
    text: str  # the scalar as written, without quotes
    line: int


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Entry:
    key_line: int
    value: Node


@dataclass(frozen=True, slots=True)
class Map:
    entries: Mapping[str, Entry]  # in file order
    line: int


Node = Scalar | Seq | Map


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str


def parse(text: str) -> tuple[Node | None, list[Problem]]:
    """Parse one YAML document; ``None`` for an empty document or a syntax error."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_problem(exc)]
    except yaml.YAMLError as exc:  # e.g. a control character in the stream
        return None, [Problem(1, f"invalid YAML: {exc}")]
    if root is None:
        return None, []
    builder = _Builder()
    return builder.node(root, ""), builder.problems


def _syntax_problem(exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    message = exc.problem or exc.context or "syntax error"
    if exc.problem and exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message = f"{message} ({exc.context}{where})"
    if "'\\t'" in message:
        message += "; indent with spaces, not tabs"
    return Problem(line, f"invalid YAML: {message}")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Builder:
    """Converts composed nodes; aliases are converted once (no exponential blow-up)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._done: dict[int, Node] = {}
        self._active: set[int] = set()
        self._constructor = SafeConstructor()

    def node(self, node: yaml.Node, where: str) -> Node:
        key = id(node)
        if key in self._done:
            return self._done[key]
        if key in self._active:
            self.problems.append(Problem(_line(node), "invalid YAML: recursive alias"))
            return Scalar(None, "", _line(node))
        self._active.add(key)
        if isinstance(node, yaml.MappingNode):
            out: Node = self._map(node, where)
        elif isinstance(node, yaml.SequenceNode):
            out = self._seq(node, where)
        else:
            out = self._scalar(node)
        self._active.discard(key)
        self._done[key] = out
        return out

    def _scalar(self, node: yaml.Node) -> Scalar:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:  # reported; the raw text avoids a second error
            self.problems.append(Problem(_line(node), f"invalid YAML: {exc.problem}"))
            value = str(node.value)
        return Scalar(value, str(node.value), _line(node))

    def _seq(self, node: yaml.SequenceNode, where: str) -> Seq:
        self._check_tag(node, _SEQ_TAG)
        items = tuple(self.node(item, f"{where}[{i}]") for i, item in enumerate(node.value))
        return Seq(items, _line(node))

    def _map(self, node: yaml.MappingNode, where: str) -> Map:
        self._check_tag(node, _MAP_TAG)
        entries: dict[str, Entry] = {}
        for key_node, value_node in node.value:
            name = self._key(key_node)
            if name is None:
                continue
            line = _line(key_node)
            if name in entries:
                place = f" in {where}" if where else ""
                first = entries[name].key_line
                self.problems.append(
                    Problem(line, f"duplicate key {name!r}{place} (first at line {first})")
                )
                continue
            entries[name] = Entry(line, self.node(value_node, f"{where}.{name}".lstrip(".")))
        return Map(entries, _line(node))

    def _key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problems.append(Problem(_line(node), "a key must be a plain name"))
            return None
        if node.tag == _MERGE_TAG:
            self.problems.append(Problem(_line(node), "YAML merge keys (<<) are not supported"))
            return None
        return str(node.value)

    def _check_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag != expected:
            self.problems.append(Problem(_line(node), f"unsupported YAML tag {node.tag}"))
