"""The guard's answer, read strictly: every shape Qwen3Guard-Gen emits, and what it must not."""

from __future__ import annotations

import pytest

from proxy.core.verdict import Verdict, parse_verdict
from proxy.errors import GuardError


@pytest.mark.parametrize(
    ("text", "response", "verdict"),
    [
        # prompt moderation: two lines
        ("Safety: Safe\nCategories: None", False, Verdict("safe")),
        ("Safety: Unsafe\nCategories: Violent", False, Verdict("unsafe", ("Violent",))),
        ("Safety: Controversial\nCategories: Jailbreak", False,
         Verdict("controversial", ("Jailbreak",))),
        ("Safety: Unsafe\nCategories: Violent, PII", False, Verdict("unsafe", ("Violent", "PII"))),
        ("Safety: Unsafe\nCategories: Suicide & Self-Harm\n", False,
         Verdict("unsafe", ("Suicide & Self-Harm",))),
        # surrounding white space and CRLF are tolerated
        ("  Safety: Safe\r\nCategories: None  \n\n", False, Verdict("safe")),
        # response moderation: three lines
        ("Safety: Safe\nCategories: None\nRefusal: Yes", True, Verdict("safe", refusal=True)),
        ("Safety: Unsafe\nCategories: Non-violent Illegal Acts\nRefusal: No", True,
         Verdict("unsafe", ("Non-violent Illegal Acts",), refusal=False)),
    ],
)
def test_readable(text: str, response: bool, verdict: Verdict) -> None:
    assert parse_verdict(text, response=response) == verdict


@pytest.mark.parametrize(
    ("text", "response"),
    [
        ("", False),
        ("I think it's fine", False),
        ("Safety: Safe", False),  # a line missing
        ("Safety: Safe\nCategories: None", True),  # Refusal missing
        ("Safety: Safe\nCategories: None\nRefusal: No", False),  # an extra line
        ("Safety: safe\nCategories: None", False),  # wrong case
        ("Safety: Dangerous\nCategories: None", False),
        ("Safety: Unsafe\nCategories: Violence", False),  # not a category name
        ("Safety: Unsafe\nCategories: Violent,", False),  # an empty name
        ("Categories: None\nSafety: Safe", False),  # wrong order
        ("Safety: Safe\nCategories: None\nRefusal: Maybe", True),
        ("<think>\n</think>\nSafety: Safe\nCategories: None", False),
    ],
)
def test_unreadable_is_a_guard_error(text: str, response: bool) -> None:
    with pytest.raises(GuardError) as caught:
        parse_verdict(text, response=response)
    assert caught.value.kind == "unreadable"


def test_error_message_never_echoes_the_output() -> None:
    with pytest.raises(GuardError) as caught:
        parse_verdict("secret user text leaked", response=False)
    assert "secret" not in caught.value.message
