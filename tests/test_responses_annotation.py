"""The ``moderation`` annotation of ``/v1/responses``: the openai SDK's ``Response.moderation``,
each stage one ``moderation_result`` or one ``error``.  Several checks of one stage (a long
message's pieces, the user turns of ``prompt.scope: all``) are one result: the outcome that
decided the stage speaks, the categories and scores are every verdict's.  Pure: the
annotation is built from outcomes, as the proxy builds it.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses.response import Moderation
from sdktypes import dumped, responses_moderation

from proxy.config import Action
from proxy.core.policy import Outcome
from proxy.core.protocol import annotation, responses_annotation
from proxy.core.verdict import Verdict

GUARD = "Qwen/Qwen3Guard-Gen-0.6B"
SAFE_PASS = Outcome(Action.PASS, Verdict("safe"))
VIOLENT = Outcome(Action.BLOCK, Verdict("unsafe", ("Violent",), scores={"Violent": 0.9}))
POLITICAL = Outcome(Action.FLAG, Verdict("controversial", ("Politically Sensitive Topics",
                                                           "Violent"),
                                         scores={"Politically Sensitive Topics": 0.6,
                                                 "Violent": 0.4}))
FAILED_OPEN = Outcome(Action.PASS, error_code="guard_unavailable", error="guard down")
FAILED_CLOSED = Outcome(Action.BLOCK, error_code="guard_unavailable", error="guard down")


def _stage(outcomes: list[Outcome], *, output: bool = False) -> dict[str, Any]:
    """One stage's object, checked against the SDK's own ``Moderation``."""
    stages = (outcomes, [SAFE_PASS]) if not output else ([SAFE_PASS], outcomes)
    moderation = responses_annotation(GUARD, *stages, unchecked=["input[1]"], leaked=3)
    responses_moderation(moderation)
    typed = Moderation.model_validate(moderation)
    stage = "output" if output else "input"
    assert dumped(typed)[stage] == moderation[stage]
    result: dict[str, Any] = moderation[stage]
    return result


def test_several_checks_of_a_stage_are_one_result() -> None:
    """Pieces or turns of one stage: the strictest outcome speaks (its severity, action
    and refusal); the categories are those any verdict named, each score the highest."""
    merged = _stage([SAFE_PASS, POLITICAL, VIOLENT])
    assert (merged["type"], merged["action"], merged["severity"]) == (
        "moderation_result", "block", "unsafe")
    assert merged["flagged"] is True and merged["model"] == GUARD
    named = {name for name, on in merged["categories"].items() if on}
    assert named == {"Violent", "Politically Sensitive Topics"}
    assert merged["category_scores"]["Violent"] == 0.9
    assert merged["category_scores"]["Politically Sensitive Topics"] == 0.6
    assert merged["category_scores"]["PII"] == 0.0
    assert merged["unchecked_parts"] == ["input[1]"]  # the stage's own extensions
    output = _stage([VIOLENT, POLITICAL], output=True)
    assert output["refusal"] is None and output["leaked_chars"] == 3
    assert "Politically Sensitive Topics" in output["categories"]


def test_one_check_is_chats_result_as_it_is() -> None:
    (chat,) = annotation(GUARD, [POLITICAL], [SAFE_PASS])["input"]["results"]
    assert _stage([POLITICAL]) == {**chat, "unchecked_parts": ["input[1]"]}


@pytest.mark.parametrize(("outcomes", "expected"), [
    ([SAFE_PASS, FAILED_OPEN], {"type": "error", "code": "guard_unavailable",
                                "message": "guard down"}),  # some text went unchecked
    ([FAILED_CLOSED, VIOLENT], {"action": "block", "severity": "unsafe"}),  # a verdict explains it
    ([POLITICAL, FAILED_OPEN], {"action": "flag", "flagged": True}),  # the stricter speaks
    ([], {"type": "error", "code": "not_checked", "message": "no check ran"}),
], ids=["failed open", "blocked both ways", "flag over unchecked", "none"])
def test_the_outcome_that_decided_the_stage_speaks(outcomes: list[Outcome],
                                                   expected: dict[str, Any]) -> None:
    stage = _stage(outcomes)
    assert stage.items() >= expected.items(), stage
