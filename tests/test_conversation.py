"""OpenAI messages → the turns the guard judges: every text the upstream's model reads."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.conversation import (
    Conversation,
    Turn,
    prompt_view,
    read_messages,
    response_view,
)
from proxy.errors import BadRequest, UnsupportedContent, UnsupportedParameter

U, A, S = "user", "assistant", "system"
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":1}'}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


@pytest.mark.parametrize(
    ("messages", "turns"),
    [
        ([{"role": U, "content": "hi"}], [Turn(U, "hi")]),
        # every text part type an upstream renders as text
        ([{"role": U, "content": [{"type": "text", "text": "a"},
                                  {"type": "input_text", "text": "b"},
                                  {"type": "output_text", "text": "c"},
                                  {"type": "thinking", "thinking": "d"},
                                  {"type": "reasoning", "text": "e"},
                                  {"type": "tool_reference", "name": "f"}]}],
         [Turn(U, "a\nb\nc\nd\ne\nf")]),
        # system, developer and later system messages join the user's turn: all are judged
        ([{"role": S, "content": "s1"}, {"role": "developer", "content": "s2"},
          {"role": U, "content": "q"}, {"role": S, "content": "late"}],
         [Turn(U, "s1\n\ns2\n\nq\n\nlate")]),
        # tool results are read like the user's words (they re-enter the model)
        ([{"role": U, "content": "q"}, {"role": A, "content": None, "tool_calls": [CALL]},
          {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
         [Turn(U, "q"), Turn(A, 'get_weather({"c":1})'), Turn(U, "sunny")]),
        ([{"role": U, "content": "q"}, {"role": A, "content": None, "function_call":
          {"name": "f", "arguments": "{}"}}, {"role": "function", "name": "f", "content": "1"}],
         [Turn(U, "q"), Turn(A, "f({})"), Turn(U, "f: 1")]),
        # an assistant turn with nothing at all is dropped rather than rendered as None
        ([{"role": U, "content": "q"}, {"role": A, "content": None}, {"role": U, "content": "r"}],
         [Turn(U, "q"), Turn(U, "r")]),
        ([{"role": U, "content": "q"}, {"role": A, "content": "a"}, {"role": U, "content": "q2"}],
         [Turn(U, "q"), Turn(A, "a"), Turn(U, "q2")]),
        # names travel with their text
        ([{"role": U, "name": "bob", "content": "hi"}], [Turn(U, "bob: hi")]),
        # an assistant turn: reasoning, content, refusal, calls
        ([{"role": U, "content": "q"},
          {"role": A, "reasoning_content": "r1", "reasoning": "r2", "content": "c",
           "refusal": "no", "tool_calls": [CALL]}, {"role": U, "content": "q2"}],
         [Turn(U, "q"), Turn(A, 'r1\n\nr2\n\nc\n\nno\n\nget_weather({"c":1})'), Turn(U, "q2")]),
        # a conversation that starts with the assistant is anchored by an empty user turn
        ([{"role": A, "content": "hello"}, {"role": U, "content": "q"}],
         [Turn(U, ""), Turn(A, "hello"), Turn(U, "q")]),
    ],
)
def test_turns(messages: list[Any], turns: list[Turn]) -> None:
    conversation = read_messages(messages)
    assert list(conversation.turns) == turns and conversation.prefill == ""


def test_instructions_are_listed_with_the_turn_that_holds_them() -> None:
    conversation = read_messages([
        {"role": S, "content": "be kind"}, {"role": U, "content": "q"},
        {"role": A, "content": "a"}, {"role": "developer", "content": "be brief"},
        {"role": U, "content": "q2"}])
    assert conversation.instructions == ((0, "be kind"), (2, "be brief"))


def test_a_trailing_assistant_message_is_a_prefill() -> None:
    conversation = read_messages([{"role": U, "content": "write a guide"},
                                  {"role": A, "content": "Here is the guide to building a"}])
    assert conversation == Conversation(turns=(Turn(U, "write a guide"),),
                                        prefill="Here is the guide to building a")
    # the prompt check reads it with the user's words
    assert prompt_view(conversation.turns, conversation.prefill) == (
        Turn(U, "write a guide\n\nHere is the guide to building a"),)


def test_non_text_parts_follow_the_tenant() -> None:
    messages = [{"role": U, "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]
    with pytest.raises(UnsupportedContent) as caught:
        read_messages(messages)
    assert caught.value.param == "messages[0].content[1]"
    assert caught.value.code == "unsupported_content" and caught.value.status == 400
    passed = read_messages(messages, non_text="pass")
    assert passed.turns == (Turn(U, "what is this?"),)
    assert passed.unchecked == ("messages[0].content[1]",)


@pytest.mark.parametrize(
    ("messages", "error", "param"),
    [
        (["hi"], BadRequest, "messages[0]"),
        ([{"role": "robot", "content": "x"}], BadRequest, "messages[0]"),
        ([{"role": U}], BadRequest, "messages[0]"),
        ([{"role": U, "content": 5}], BadRequest, "messages[0].content"),
        ([{"role": U, "content": [{"type": "text", "text": 5}]}], BadRequest,
         "messages[0].content[0]"),
        ([{"role": U, "content": ["x"]}], BadRequest, "messages[0].content[0]"),
        ([{"role": U, "content": "x", "name": 5}], BadRequest, "messages[0].name"),
        ([{"role": A, "content": "x", "reasoning": 5}], BadRequest, "messages[0].reasoning"),
        ([{"role": A, "content": "x", "audio": {"id": "a", "data": "AAAA"}}], BadRequest,
         "messages[0].audio"),
        ([{"role": A, "tool_calls": [{"id": "1", "type": "function"}]}], BadRequest,
         "messages[0].tool_calls[0]"),
        # what the proxy does not read is refused, never forwarded unjudged
        ([{"role": U, "content": "x", "documents": ["y"]}], UnsupportedParameter,
         "messages[0].documents"),
        ([{"role": "developer", "content": "x", "tools": []}], UnsupportedParameter,
         "messages[0].tools"),
        ([{"role": U, "content": [{"type": "prompt_embeds", "data": "AAAA"}]}],
         UnsupportedContent, "messages[0].content[0]"),
        ([{"role": U, "content": [{"type": "file", "file": {"file_id": "f"}}]}],
         UnsupportedContent, "messages[0].content[0]"),
    ],
)
def test_bad_messages_name_the_field(messages: list[Any], error: type[Exception],
                                     param: str) -> None:
    with pytest.raises(error) as caught:
        read_messages(messages)
    assert caught.value.param == param  # type: ignore[attr-defined]


def test_a_tenant_may_allow_a_message_key() -> None:
    messages = [{"role": U, "content": "x", "cache_control": {"type": "ephemeral"}}]
    with pytest.raises(UnsupportedParameter):
        read_messages(messages)
    assert read_messages(messages, allowed={"messages.cache_control"}).turns == (Turn(U, "x"),)


@pytest.mark.parametrize(
    ("turns", "view"),
    [
        # the last user turn is judged; what follows it is not part of the prompt check
        ([Turn(U, "q"), Turn(A, "a"), Turn(U, "q2"), Turn(A, "tool")],
         [Turn(U, "q"), Turn(A, "a"), Turn(U, "q2")]),
        # a leading assistant turn would be dropped by the template: anchor it
        ([Turn(A, "hello"), Turn(U, "q")], [Turn(U, ""), Turn(A, "hello"), Turn(U, "q")]),
        # no user turn at all: everything is judged as the user's
        ([Turn(A, "be evil")], [Turn(U, "be evil")]),
    ],
)
def test_prompt_view(turns: list[Turn], view: list[Turn]) -> None:
    assert list(prompt_view(turns)) == view


def test_response_view_appends_the_answer_and_keeps_a_prefix() -> None:
    turns = [Turn(U, "sys\n\nq")]
    first = response_view(turns, "Hello")
    later = response_view(turns, "Hello world")
    assert first == (Turn(U, "sys\n\nq"), Turn(A, "Hello"))
    assert later[:-1] == first[:-1]
