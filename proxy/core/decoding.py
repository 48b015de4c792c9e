"""How a verdict is asked of the guard: decoded whole, or read a token at a time.  No I/O.

Qwen3Guard-Gen's answer always begins ``Safety:``, and the one token after it decides
the severity, which is all a safe check needs.  So by default (``guard.decoding:
one_token``) the guard is given that beginning as the start of its answer and asked
for **one** token with its top log-probabilities.  Only a severity that is not Safe
needs more: the guard continues from ``Safety: <severity>\\nCategories:`` (a prefix its
cache already holds, so only the few new tokens are computed) to name the categories.
An answer's refusal is read the same way, one token after ``Refusal:``, and only
for tenants that ask for it (``response.detect_refusal``).

At temperature 0 this gives the verdict full decoding gives: every token the guard
is handed is the one it would have written itself (a safe verdict's categories are
``None``, as the template instructs the model), and every token it is asked for
is its greedy choice in the same context.  ``guard.decoding: full`` decodes the whole
verdict in one call, as a guard server without answer prefixes needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from proxy.core.verdict import (
    SEVERITY_WORDS,
    Severity,
    TokenStep,
    Verdict,
    categories_regex,
    parse_verdict,
    severity_begun,
    severity_probabilities,
    unreadable,
    verdict_regex,
    with_scores,
)

_SEVERITY_REGEX = " (Safe|Unsafe|Controversial)"
_REFUSAL_REGEX = " (Yes|No)"
_NAMES: dict[Severity, str] = {sev: word for word, sev in SEVERITY_WORDS.items()}


@dataclass(frozen=True, slots=True)
class Ask:
    """One generation asked of the guard.

    ``prefix`` is the start of the guard's answer, given to it; ``max_tokens`` caps the
    new tokens (None: ``guard.max_tokens``); ``stop`` ends the answer early; ``regex``
    is the shape the *new* text must have, for guards that constrain decoding;
    ``scored`` asks for the top log-probabilities of the new tokens; ``step`` names the
    call in metrics (``severity``, ``categories``, ``refusal`` or ``full``)."""

    step: str
    prefix: str
    max_tokens: int | None
    stop: str | None
    regex: str
    scored: bool = False


def _rest(*, response: bool) -> str:
    """The regex of an answer after its ``Categories:``."""
    return categories_regex(response=response) + (
        "\nRefusal:" + _REFUSAL_REGEX if response else "")


def full_ask(*, response: bool) -> Ask:
    return Ask(step="full", prefix="", max_tokens=None, stop=None,
               regex=verdict_regex(response=response), scored=True)


def _severity_ask(*, response: bool) -> Ask:
    return Ask(step="severity", prefix="Safety:", max_tokens=1, stop=None,
               regex=_SEVERITY_REGEX + "\nCategories:" + _rest(response=response), scored=True)


_SEVERITY_ASKS = {response: _severity_ask(response=response) for response in (False, True)}


def severity_ask(*, response: bool) -> Ask:
    """Every check's first ask (made once: it is the same for every prompt, and for
    every answer)."""
    return _SEVERITY_ASKS[response]


def categories_ask(severity: Severity, *, response: bool, refusal: bool) -> Ask:
    """The continuation naming the categories (and the refusal, when asked): an answer's
    ``Refusal:`` line is cut off by the stop unless it is wanted."""
    return Ask(step="categories", prefix=f"Safety: {_NAMES[severity]}\nCategories:",
               max_tokens=None,
               stop=None if refusal or not response else "\n",
               regex=_rest(response=response))


REFUSAL_ASK = Ask(step="refusal", prefix="Safety: Safe\nCategories: None\nRefusal:",
                  max_tokens=1, stop=None, regex=_REFUSAL_REGEX)
#: A bound on the tokens any answer's start adds to a guard input (its UTF-8 length).
PREFIX_TOKENS_MAX = max(len(prefix.encode()) for prefix in (
    REFUSAL_ASK.prefix, *(categories_ask(sev, response=True, refusal=True).prefix
                          for sev in ("controversial", "unsafe"))))


def read_full(text: str, steps: Iterable[TokenStep], *, response: bool, refusal: bool) -> Verdict:
    """The whole verdict decoded in one answer; an answer's refusal kept only if asked."""
    verdict = with_scores(parse_verdict(text, response=response),
                          severity_probabilities(steps))
    return verdict if refusal or not response else replace(verdict, refusal=None)


def read_severity(text: str) -> Severity:
    """The severity the one new token after ``Safety:`` begins (Qwen3's vocabulary splits
    " Controversial" into " Cont" + "roversial")."""
    severity = severity_begun(text)
    if severity is None:
        raise unreadable(text, "no severity after 'Safety:'")
    return severity


def read_categories(ask: Ask, text: str, *, refusal: bool) -> Verdict:
    """The verdict spelled by a categories ask's prefix and the guard's continuation."""
    return parse_verdict(ask.prefix + text, response=refusal)


def read_refusal(text: str) -> bool:
    word = text.strip()
    if word not in ("Yes", "No"):
        raise unreadable(text, "no 'Yes' or 'No' after 'Refusal:'")
    return word == "Yes"
