"""Reading a config file and collecting its problems: every problem of every file is kept
as a ``file:line: message`` string, and the loader raises them together in one
``ConfigError``.
"""

from __future__ import annotations

from pathlib import Path

from proxy.config.yamlsrc import Node, parse


class Errors:
    """Problems of all files, reported by file (first seen first), then by line."""

    def __init__(self) -> None:
        self._items: list[tuple[str, int, str]] = []

    def add(self, path: Path, line: int, message: str) -> None:
        self._items.append((str(path), line, message))

    def __bool__(self) -> bool:
        return bool(self._items)

    def lines(self) -> list[str]:
        order: dict[str, int] = {}
        for path, _, _ in self._items:
            order.setdefault(path, len(order))
        items = sorted(self._items, key=lambda item: (order[item[0]], item[1]))
        return [f"{path}:{line}: {message}" for path, line, message in items]


class File:
    """Reports the problems of one file."""

    def __init__(self, path: Path, errors: Errors, *, missing: str = "") -> None:
        self.path = path
        self.errors = errors
        self.missing = missing  # said after "file not found": where the path came from

    def error(self, line: int, message: str) -> None:
        self.errors.add(self.path, line, message)


def read_yaml(f: File) -> Node | None:
    """Parse a file; reports unreadable, empty and malformed files."""
    try:
        data = f.path.read_bytes()
    except FileNotFoundError:
        f.error(1, f"file not found{f.missing}")
        return None
    except OSError as exc:
        f.error(1, f"cannot read file: {exc.strerror}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        f.error(data[: exc.start].count(b"\n") + 1, "file is not valid UTF-8 text")
        return None
    root, problems = parse(text)
    for problem in problems:
        f.error(problem.line, problem.message)
    if root is None and not problems:
        f.error(1, "file is empty")
    return root

