"""A keyword stand-in for Qwen3Guard-Gen: what the demo guard and the test suite's guard
emulator judge with.  Not a model: a table of patterns, each giving a severity and a
category when it occurs in the judged message.  No I/O.

``judged_message`` finds, in a rendered Qwen3Guard prompt, which moderation it asks for
and the text of the message it judges (the last turn of the conversation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Severity = Literal["Safe", "Unsafe", "Controversial"]
Mode = Literal["prompt", "response"]


@dataclass(frozen=True, kw_only=True)
class Rule:
    """When ``pattern`` (a regex, case-insensitive) occurs in the judged message, the verdict is
    ``severity`` / ``category``, and the model puts ``probability`` on the severity token."""

    pattern: str
    severity: Severity
    category: str
    probability: float = 0.9
    applies_to: Literal["prompt", "response", "both"] = "both"

    def matches(self, text: str, mode: Mode) -> bool:
        if self.applies_to not in ("both", mode):
            return False
        return re.search(self.pattern, text, re.IGNORECASE) is not None


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(pattern=r"\bbomb", severity="Unsafe", category="Violent", probability=0.97),
    Rule(pattern=r"steal a car", severity="Unsafe", category="Non-violent Illegal Acts",
         probability=0.93),
    Rule(pattern=r"ignore all previous instructions", severity="Unsafe", category="Jailbreak",
         probability=0.95, applies_to="prompt"),
    Rule(pattern=r"\belection", severity="Controversial",
         category="Politically Sensitive Topics", probability=0.7),
    Rule(pattern=r"lockpick", severity="Controversial", category="Non-violent Illegal Acts",
         probability=0.65),
    Rule(pattern=r"home address of", severity="Unsafe", category="PII", probability=0.9),
)
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI can(?:'|\u2019)?t\b",
    r"\bI cannot\b",
    r"unable to fulfill",
    r"\bI won(?:'|\u2019)?t\b",
)

_PROMPT_TASK = "THE LAST USER's query"
_BEGIN = "<BEGIN CONVERSATION>\n\n"
_END = "\n\n<END CONVERSATION>"
_TURN_SPLIT_RE = re.compile(r"\n\n(?=(?:USER|ASSISTANT): )")
_ROLE_PREFIX_RE = re.compile(r"^(?:USER|ASSISTANT): ")


def judged_message(prompt: str) -> tuple[Mode, str]:
    """Which moderation the rendered prompt asks for, and the text of the message it judges."""
    mode: Mode = "prompt" if _PROMPT_TASK in prompt else "response"
    start, end = prompt.find(_BEGIN), prompt.rfind(_END)
    if start < 0 or end < start:
        return mode, prompt
    turns = _TURN_SPLIT_RE.split(prompt[start + len(_BEGIN) : end])
    return mode, _ROLE_PREFIX_RE.sub("", turns[-1])


def verdict_text(prompt: str, rules: tuple[Rule, ...] = DEFAULT_RULES) -> str:
    """The verdict Qwen3Guard-Gen writes for a rendered prompt, by the rules."""
    mode, text = judged_message(prompt)
    rule = next((r for r in rules if r.matches(text, mode)), None)
    lines = [f"Safety: {rule.severity if rule else 'Safe'}",
             f"Categories: {rule.category if rule else 'None'}"]
    if mode == "response":
        refused = any(re.search(p, text, re.IGNORECASE) for p in REFUSAL_PATTERNS)
        lines.append(f"Refusal: {'Yes' if refused else 'No'}")
    return "\n".join(lines)


_TOKEN_RE = re.compile(r" ?[\w-]+|\n|.")


def continued_verdict(prompt: str, prefix: str, *, max_tokens: int | None = None,
                      stop: str | None = None, rules: tuple[Rule, ...] = DEFAULT_RULES) -> str:
    """The rest of the verdict after ``prefix`` (the start of the answer the guard was
    handed), at most ``max_tokens`` word-sized tokens, cut before ``stop``.  A prefix the
    rules' verdict does not begin with is answered ``?``: the demo guard does not guess."""
    text = verdict_text(prompt, rules)
    if not text.startswith(prefix):
        return "?"
    tokens = _TOKEN_RE.findall(text[len(prefix):])
    rest = "".join(tokens if max_tokens is None else tokens[:max_tokens])
    return rest.split(stop, 1)[0] if stop else rest
