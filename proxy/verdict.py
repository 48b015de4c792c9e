"""Qwen3Guard-Gen's answer, read strictly.  No I/O.

The model answers two lines for a prompt and three for a response::

    Safety: Unsafe
    Categories: Violent
    Refusal: No

Anything else is unreadable and becomes a ``GuardError`` (the tenant's
``on_guard_error`` then decides), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .config import CATEGORIES
from .errors import GuardError

Severity = Literal["safe", "controversial", "unsafe"]

_SEVERITIES: dict[str, Severity] = {
    "Safe": "safe",
    "Controversial": "controversial",
    "Unsafe": "unsafe",
}
_SAFETY = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
_CATEGORIES = re.compile(r"Categories: (.+)")
_REFUSAL = re.compile(r"Refusal: (Yes|No)")
_KNOWN = frozenset(CATEGORIES)


@dataclass(frozen=True, slots=True)
class Verdict:
    severity: Severity
    categories: tuple[str, ...] = ()
    refusal: bool | None = None  # response moderation only
    #: probability per named category; empty when the guard gave no log-probabilities
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return self.severity != "safe"


def parse_verdict(text: str, *, response: bool) -> Verdict:
    """Read the guard's text; ``response`` says a ``Refusal:`` line must follow."""
    lines = [line.strip() for line in text.strip().splitlines()]
    expected = 3 if response else 2
    if len(lines) != expected:
        raise _unreadable(text, f"expected {expected} lines, got {len(lines)}")
    severity = _severity(lines[0], text)
    categories = _categories(lines[1], text)
    refusal = _refusal(lines[2], text) if response else None
    return Verdict(severity=severity, categories=categories, refusal=refusal)


def _severity(line: str, text: str) -> Severity:
    match = _SAFETY.fullmatch(line)
    if match is None:
        raise _unreadable(text, "no 'Safety:' line")
    return _SEVERITIES[match.group(1)]


def _categories(line: str, text: str) -> tuple[str, ...]:
    match = _CATEGORIES.fullmatch(line)
    if match is None:
        raise _unreadable(text, "no 'Categories:' line")
    if match.group(1).strip() == "None":
        return ()
    names = tuple(name.strip() for name in match.group(1).split(","))
    unknown = [name for name in names if name not in _KNOWN]
    if unknown:
        raise _unreadable(text, f"unknown category {unknown[0]!r}")
    return names


def _refusal(line: str, text: str) -> bool:
    match = _REFUSAL.fullmatch(line)
    if match is None:
        raise _unreadable(text, "no 'Refusal:' line")
    return match.group(1) == "Yes"


def _unreadable(text: str, why: str) -> GuardError:
    # The output itself stays out of the message: it may echo user text into logs.
    return GuardError("unreadable", f"unreadable guard output ({why}, {len(text)} chars)")
