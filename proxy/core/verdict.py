"""Qwen3Guard-Gen's answer, read strictly.  No I/O.

The model answers two lines for a prompt and three for a response::

    Safety: Unsafe
    Categories: Violent
    Refusal: No

Anything else is unreadable and becomes a ``GuardError`` (the tenant's
``on_guard_error`` then decides), never a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from proxy.config import CATEGORIES, RESPONSE_CATEGORIES
from proxy.errors import GuardError

Severity = Literal["safe", "controversial", "unsafe"]

SEVERITY_WORDS: dict[str, Severity] = {
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
        raise unreadable(text, f"expected {expected} lines, got {len(lines)}")
    severity = _severity(lines[0], text)
    categories = _categories(lines[1], text)
    refusal = _refusal(lines[2], text) if response else None
    return Verdict(severity=severity, categories=categories, refusal=refusal)


def _severity(line: str, text: str) -> Severity:
    match = _SAFETY.fullmatch(line)
    if match is None:
        raise unreadable(text, "no 'Safety:' line")
    return SEVERITY_WORDS[match.group(1)]


def _categories(line: str, text: str) -> tuple[str, ...]:
    match = _CATEGORIES.fullmatch(line)
    if match is None:
        raise unreadable(text, "no 'Categories:' line")
    if match.group(1).strip() == "None":
        return ()
    names = tuple(name.strip() for name in match.group(1).split(","))
    unknown = [name for name in names if name not in _KNOWN]
    if unknown:
        raise unreadable(text, f"unknown category {unknown[0]!r}")
    return names


def _refusal(line: str, text: str) -> bool:
    match = _REFUSAL.fullmatch(line)
    if match is None:
        raise unreadable(text, "no 'Refusal:' line")
    return match.group(1) == "Yes"


def unreadable(text: str, why: str) -> GuardError:
    # The output itself stays out of the message: it may echo user text into logs.
    return GuardError("unreadable", f"unreadable guard output ({why}, {len(text)} chars)")


# -- constrained decoding and log-probabilities ---------------------------------------


def verdict_regex(*, response: bool) -> str:
    """The verdict shapes the model may emit, for SGLang's ``regex`` constraint."""
    regex = f"Safety: (Safe|Unsafe|Controversial)\nCategories:{categories_regex(response=response)}"
    return regex + "\nRefusal: (Yes|No)" if response else regex


def categories_regex(*, response: bool) -> str:
    """What may follow ``Categories:``: None, or the stage's category names."""
    names = "|".join(RESPONSE_CATEGORIES if response else CATEGORIES)
    return f" (None|({names})(, ({names}))*)"


#: One output token: its text and the alternatives the server returned, as
#: ``(text, logprob)`` pairs.
TokenStep = tuple[str, Sequence[tuple[str, float]]]


def severity_probabilities(steps: Iterable[TokenStep], *, emitted: str = ""
                           ) -> dict[Severity, float] | None:
    """P(Safe), P(Controversial), P(Unsafe) at the token after ``Safety:``, in an answer
    that began with ``emitted`` (the part of it given to the guard).

    The severity words are recognised from the token texts the server returned (a
    word may be split, as " Cont" + "roversial" is in Qwen3's vocabulary): each
    alternative counts for the one severity word it begins.
    """
    for token, top in steps:
        if emitted.strip() == "Safety:":
            return _by_severity(top)
        emitted += token
    return None


def _by_severity(top: Iterable[tuple[str, float]]) -> dict[Severity, float]:
    probabilities: dict[Severity, float] = {"safe": 0.0, "controversial": 0.0, "unsafe": 0.0}
    for text, logprob in top:
        severity = severity_begun(text)
        if severity is not None:
            probabilities[severity] += math.exp(logprob)
    return probabilities


def severity_begun(token: str) -> Severity | None:
    """The one severity word a token's text begins (" Cont" begins Controversial), if any."""
    word = token.strip()
    matches = [sev for name, sev in SEVERITY_WORDS.items() if word and name.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def with_scores(verdict: Verdict, probabilities: Mapping[Severity, float] | None) -> Verdict:
    """Score each named category with the probability that the text is not safe."""
    if probabilities is None:
        return verdict
    flagged = min(1.0, probabilities["unsafe"] + probabilities["controversial"])
    return replace(verdict, scores={name: round(flagged, 6) for name in verdict.categories})
