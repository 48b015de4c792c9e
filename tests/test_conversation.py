"""OpenAI messages → the turns the guard template can render, and the two views."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.conversation import (
    Turn,
    message_text,
    prompt_view,
    response_view,
    turns_from_messages,
)
from proxy.errors import BadRequest

U, A, S = "user", "assistant", "system"
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":1}'}}


@pytest.mark.parametrize(
    ("messages", "turns"),
    [
        ([{"role": U, "content": "hi"}], [Turn(U, "hi")]),
        # content parts are flattened to their text; images carry no text
        ([{"role": U, "content": [{"type": "text", "text": "a"},
                                  {"type": "image_url", "image_url": {"url": "x"}},
                                  {"type": "text", "text": "b"}]}], [Turn(U, "a\nb")]),
        # system (and developer) only first; several leading ones merge; later ones drop
        ([{"role": S, "content": "s1"}, {"role": "developer", "content": "s2"},
          {"role": U, "content": "q"}, {"role": S, "content": "late"}],
         [Turn(S, "s1\n\ns2"), Turn(U, "q")]),
        # tool results are dropped; a tool-call-only assistant turn becomes text
        ([{"role": U, "content": "q"}, {"role": A, "content": None, "tool_calls": [CALL]},
          {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
         [Turn(U, "q"), Turn(A, 'get_weather({"c":1})')]),
        # an assistant turn with nothing at all is dropped rather than rendered as None
        ([{"role": U, "content": "q"}, {"role": A, "content": None}], [Turn(U, "q")]),
        ([{"role": U, "content": "q"}, {"role": A, "content": "a"}, {"role": U, "content": "q2"}],
         [Turn(U, "q"), Turn(A, "a"), Turn(U, "q2")]),
    ],
)
def test_turns(messages: list[Any], turns: list[Turn]) -> None:
    assert list(turns_from_messages(messages)) == turns


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (["hi"], "messages[0]"),
        ([{"role": "robot", "content": "x"}], "messages[0]"),
        ([{"role": U}], "messages[0]"),
        ([{"role": U, "content": 5}], "messages[0].content"),
        ([{"role": U, "content": [{"type": "text", "text": 5}]}], "messages[0].content"),
        ([{"role": U, "content": ["x"]}], "messages[0].content"),
    ],
)
def test_bad_messages_name_the_field(messages: list[Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        turns_from_messages(messages)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("turns", "view"),
    [
        # the last user turn is judged; what follows it is not part of the prompt check
        ([Turn(U, "q"), Turn(A, "a"), Turn(U, "q2"), Turn(A, "tool")],
         [Turn(U, "q"), Turn(A, "a"), Turn(U, "q2")]),
        # a leading assistant turn would be dropped by the template: anchor it
        ([Turn(A, "hello"), Turn(U, "q")], [Turn(U, ""), Turn(A, "hello"), Turn(U, "q")]),
        # no user turn at all: everything is judged as the user's
        ([Turn(S, "be evil")], [Turn(U, "be evil")]),
    ],
)
def test_prompt_view(turns: list[Turn], view: list[Turn]) -> None:
    assert list(prompt_view(turns)) == view


def test_response_view_appends_the_answer_and_keeps_a_prefix() -> None:
    turns = [Turn(S, "sys"), Turn(U, "q")]
    first = response_view(turns, "Hello")
    later = response_view(turns, "Hello world")
    assert first == (Turn(S, "sys"), Turn(U, "q"), Turn(A, "Hello"))
    assert later[:-1] == first[:-1]


def test_message_text_includes_refusal_and_tool_calls() -> None:
    message = {"role": A, "content": "ok", "refusal": "no", "tool_calls": [CALL]}
    assert message_text(message) == 'ok\n\nno\n\nget_weather({"c":1})'
    assert message_text(None) == ""
