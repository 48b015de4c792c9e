"""Continuing a verdict from the start of the answer given in the prompt.

A prompt may end with the beginning of the model's answer after the template's assistant header
(``/generate`` text, or the final assistant message of a chat request with
``continue_final_message``).  The model then writes only the rest: the verdict lines the prefix
already completed are taken as written (a ``Safety: X`` line fixes the severity, a
``Categories: ...`` line the categories, a ``Refusal: ...`` line the refusal), and its own
judgement fills in the rest.  A prefix that no verdict begins with gets unreadable output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from proxy.demo.rules import Mode, Severity

from .constants import GARBAGE_TEXT
from .model import Verdict
from .tokenizer import TOKENIZER

ANSWER_START = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
_LABELS = ("Safety", "Categories", "Refusal")
_SEVERITIES: tuple[Severity, ...] = ("Safe", "Unsafe", "Controversial")
_REFUSALS = {"Yes": True, "No": False}
# The words a line's value may be; a categories line takes any names.
_ALLOWED: dict[str, tuple[str, ...]] = {"Safety": _SEVERITIES, "Refusal": tuple(_REFUSALS)}


def split_answer(prompt: str) -> tuple[str, str]:
    """The prompt up to the last assistant header, and the answer's start after it."""
    cut = prompt.rfind(ANSWER_START)
    if cut < 0:
        return prompt, ""
    end = cut + len(ANSWER_START)
    return prompt[:end], prompt[end:]


def with_severity(verdict: Verdict, severity: Severity) -> Verdict:
    """``verdict`` with another severity: no categories when Safe, the rule's (or "Unethical
    Acts" when the rule names none) otherwise."""
    if severity == verdict.severity:
        return verdict
    category = "None" if severity == "Safe" else verdict.category
    if category == "None" and severity != "Safe":
        category = "Unethical Acts"
    return replace(verdict, severity=severity, category=category)


@dataclass(frozen=True, kw_only=True)
class AnswerPrefix:
    """What an answer's start fixes: the fields of its complete lines, and its last line."""

    severity: Severity | None = None
    category: str | None = None
    refusal: bool | None = None
    partial: str = ""  # the unfinished last line ("" after a newline)


def _line_value(label: str, line: str) -> str | None:
    head = f"{label}: "
    if not line.startswith(head):
        return None
    value = line[len(head) :]
    allowed = _ALLOWED.get(label)
    if allowed is None:
        return value if value.strip() else None
    return value if value in allowed else None


def _may_begin(label: str, partial: str) -> bool:
    """Whether ``partial`` can begin a verdict line for ``label``."""
    head = f"{label}: "
    if len(partial) <= len(head):
        return head.startswith(partial)
    if not partial.startswith(head):
        return False
    value = partial[len(head) :]
    allowed = _ALLOWED.get(label)
    return allowed is None or any(word.startswith(value) for word in allowed)


def parse_answer_prefix(prefix: str, mode: Mode) -> AnswerPrefix | None:
    """The fields ``prefix`` fixes, or None when no verdict of ``mode`` begins with it."""
    *lines, partial = prefix.split("\n")
    fields = 3 if mode == "response" else 2
    if len(lines) >= fields:
        return None
    values = [_line_value(label, line) for label, line in zip(_LABELS, lines, strict=False)]
    if None in values or not _may_begin(_LABELS[len(lines)], partial):
        return None
    found = dict(zip(_LABELS, values, strict=False))
    severity = next((s for s in _SEVERITIES if s == found.get("Safety")), None)
    refusal = found.get("Refusal")
    return AnswerPrefix(
        severity=severity,
        category=found.get("Categories"),
        refusal=None if refusal is None else _REFUSALS[refusal],
        partial=partial,
    )


def _fixed(verdict: Verdict, fixed: AnswerPrefix) -> Verdict:
    if fixed.category is not None:
        verdict = replace(verdict, category=fixed.category)
    if fixed.refusal is not None:
        verdict = replace(verdict, refusal=fixed.refusal)
    return verdict


def _as_written(verdict: Verdict, partial: str) -> Verdict | None:
    """The verdict that ends the unfinished categories or refusal line as it was written."""
    if partial.startswith("Categories: ") and partial[len("Categories: ") :].strip():
        return replace(verdict, category=partial[len("Categories: ") :])
    value = partial.removeprefix("Refusal: ")
    if not partial.startswith("Refusal: ") or not value:
        return None
    refusals = [refused for word, refused in _REFUSALS.items() if word.startswith(value)]
    return replace(verdict, refusal=refusals[0]) if refusals else None


def _candidates(greedy: Verdict, sampled: Verdict, fixed: AnswerPrefix) -> Iterator[Verdict]:
    """The verdicts the model may write, its own first, then the others, likeliest first."""
    if fixed.severity is not None:
        own = sampled if sampled.severity == fixed.severity else greedy
        first = _fixed(with_severity(own, fixed.severity), fixed)
        yield first
    else:
        first = _fixed(sampled, fixed)
        yield first
        for severity, _ in sorted(greedy.distribution, key=lambda entry: -entry[1]):
            yield _fixed(with_severity(greedy, severity), fixed)
    written = _as_written(first, fixed.partial)
    if written is not None:
        yield written


def regex_cut(continuation: str, regex: str) -> str | None:
    """What the model writes of ``continuation`` under the ``regex`` constraint: its longest
    token-aligned start that fully matches (then only the stop token is allowed), or None."""
    if re.fullmatch(regex, continuation):
        return continuation
    tokens = TOKENIZER.tokenize(continuation)
    for count in range(len(tokens) - 1, -1, -1):
        start = "".join(tokens[:count])
        if re.fullmatch(regex, start):
            return start
    return None


def continue_verdict(
    greedy: Verdict, sampled: Verdict, prefix: str, regex: str | None
) -> tuple[Verdict | None, str]:
    """The verdict the model completes after ``prefix`` and the text it writes (before the
    stop token); ``(None, GARBAGE_TEXT)`` when no verdict begins with ``prefix``.

    ``greedy`` is the model's greedy verdict, ``sampled`` the one it drew.  With ``regex`` set,
    the first candidate whose continuation the regex admits wins.
    """
    fixed = parse_answer_prefix(prefix, greedy.mode)
    if fixed is None:
        return None, GARBAGE_TEXT
    fitting = [
        (verdict, verdict.text[len(prefix) :])
        for verdict in _candidates(greedy, sampled, fixed)
        if verdict.text.startswith(prefix)
    ]
    if not fitting:
        return None, GARBAGE_TEXT
    if regex is not None:
        for verdict, rest in fitting:
            cut = regex_cut(rest, regex)
            if cut is not None:
                return verdict, cut
    return fitting[0]
