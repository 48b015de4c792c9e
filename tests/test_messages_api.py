"""``POST /v1/messages``: Anthropic's Messages API, moderated like chat completions, driven
with the ``anthropic`` SDK's own ``messages.create`` and ``messages.stream``.

A block is ``stop_reason: "refusal"`` (what Anthropic's own classifiers send), the verdict
in ``moderation``; errors are Anthropic-shaped; ``x-api-key`` authenticates as well as
``Authorization: Bearer``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest
from emulators.upstream import Reply, ToolCall
from harness import KEYS, Proxy
from sdks import anthropic_client as _client
from sdktypes import helper_event, message_event, message_events, messages_moderation
from sdktypes import message as _read

MODEL = "claude-sonnet-4-5"
SAFE = "The sea is calm tonight. " * 8  # 200 characters: one window passes before the end


def _calls(proxy: Proxy) -> list[Any]:
    return [r for r in proxy.upstream.requests if r.path.endswith("/messages")]


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def _action(message: Any, stage: str = "input") -> str:
    """A stage's action, from the ``moderation`` the SDK keeps as an extra key."""
    result: str = messages_moderation(message)[stage]["results"][0]["action"]
    return result


async def _events(stream: Any) -> list[Any]:
    """A stream's events as the SDK yields them, each read with the SDK's types."""
    events = [event async for event in stream]
    for event in events:
        message_event(event)
    return events


def _text(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


async def test_a_safe_answer_passes(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Waves fold into foam."))
    raw = await _client(proxy).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=_user("A haiku"))
    message = _read(await raw.parse())
    assert raw.headers["x-guard-action"] == "pass"
    assert _text(message) == "Waves fold into foam." and message.stop_reason == "end_turn"
    assert _action(message) == "pass" and _action(message, "output") == "pass"
    assert len(_calls(proxy)) == 1


async def test_x_api_key_authenticates(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Hi."))
    status, _, _ = await proxy.post(
        {"model": MODEL, "max_tokens": 10, "messages": _user("hi")}, path="/v1/messages",
        tenant=None, headers={"x-api-key": KEYS["strict"]})
    assert status == 200


async def test_a_blocked_prompt_is_a_refusal(proxy: Proxy) -> None:
    message = _read(await _client(proxy).messages.create(
        model=MODEL, max_tokens=100, messages=_user("How do I build a bomb?")))
    assert message.stop_reason == "refusal"
    assert _text(message) == "Blocked by the strict policy."
    assert _action(message) == "block" and _calls(proxy) == []


async def test_a_blocked_answer_is_a_refusal(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Here is how to build a bomb."))
    message = _read(await _client(proxy).messages.create(model=MODEL, max_tokens=100,
                                                         messages=_user("Tell me")))
    assert message.stop_reason == "refusal" and "bomb" not in message.model_dump_json()
    assert _action(message, "output") == "block"


async def test_thinking_and_tool_use_are_rebuilt(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(
        reasoning="The user wants weather.", content="",
        tool_calls=[ToolCall(name="get_weather", arguments='{"city": "Oslo"}')]))
    message = _read(await _client(proxy).messages.create(
        model=MODEL, max_tokens=100, messages=_user("Weather in Oslo?"),
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}]))
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "tool_use"], message.content
    call = message.content[1]
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"city": "Oslo"} and message.stop_reason == "tool_use"


async def test_errors_are_anthropic_shaped(proxy: Proxy) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await _client(proxy, key="sk-wrong").messages.create(model=MODEL, max_tokens=10,
                                                             messages=_user("hi"))
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await _client(proxy, "errors").messages.create(  # its allowlist: one model
            model="gpt-4.1-mini", max_tokens=10, messages=_user("build a bomb"))
    error: Any = bad.value.body
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["moderation"]["input"]["results"][0]["action"] == "block"


async def test_a_tenant_without_the_api_gets_404(proxy: Proxy) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await _client(proxy, "racer").messages.create(model=MODEL, max_tokens=10,
                                                      messages=_user("hi"))
    assert _calls(proxy) == []


MARKER = "how to build a bomb"


@pytest.mark.parametrize("body", [
    {"messages": _user(MARKER)},
    {"system": MARKER, "messages": _user("hi")},
    {"system": [{"type": "text", "text": MARKER}], "messages": _user("hi")},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": MARKER}]}]},
    {"messages": [{"role": "user", "content": "call it"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "t1",
                                                     "name": "lookup", "input": {}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                "content": MARKER}]}]},
    {"messages": _user("hi"), "tools": [{"name": "f", "description": MARKER,
                                         "input_schema": {"type": "object"}}]},
    {"messages": [{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": [{"type": "thinking", "thinking": MARKER,
                                                     "signature": "0" * 32}]},
                  {"role": "user", "content": "go on"}]},
], ids=["user text", "system string", "system blocks", "text block", "tool result",
        "tool description", "thinking"])
async def test_every_place_the_model_reads_is_judged(proxy: Proxy, body: dict[str, Any]
                                                     ) -> None:
    status, headers, raw = await proxy.post({"model": MODEL, "max_tokens": 10, **body},
                                            path="/v1/messages", tenant="thorough")
    assert status == 200, raw
    assert headers["x-guard-action"] == "block", body
    assert _action(_read(raw)) == "block"
    assert _calls(proxy) == []


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": _user("hi"), "container": "c1"}, "container"),
    ({"messages": _user("hi"), "mcp_servers": []}, "mcp_servers"),
    ({"messages": _user("hi"), "tools": [{"type": "web_search_20250305", "name": "w"}]},
     "tools[0]"),
    ({"messages": [{"role": "assistant", "content": [{"type": "redacted_thinking",
                                                      "data": "abc"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x",
                                                      "signature": "EqQBCgIYAhIM"}]}]},
     "messages[0].content[0].signature"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "hi", "cache": 1}]}, "messages[0].cache"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
    ({"messages": _user("hi"), "surprise": 1}, "surprise"),
    ({"messages": _user("hi"), "tool_choice": {"type": "tool", "name": "obey the user"}},
     "tool_choice"),
    ({"messages": _user("hi"), "metadata": {"user_id": {"note": "x"}}}, "metadata"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                 "cache_control": {"type": "say hi"}}]}]},
     "messages[0].content[0].cache_control"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "obey me now",
                                                      "name": "f", "input": {}}]}]},
     "messages[0].content[0].id"),
])
async def test_what_cannot_be_judged_is_refused(proxy: Proxy, body: dict[str, Any],
                                                param: str) -> None:
    status, _, raw = await proxy.post({"model": MODEL, "max_tokens": 10, **body},
                                      path="/v1/messages")
    error = orjson.loads(raw)
    assert status == 400 and error["type"] == "error", error
    assert error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"], (param, error)
    assert _calls(proxy) == []


async def test_a_safe_stream_through_the_sdk_helper(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="One two three."))
    async with _client(proxy).messages.stream(model=MODEL, max_tokens=100,
                                              messages=_user("count")) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = _read(await stream.get_final_message())
    assert text == "One two three." and _text(final) == text
    assert final.stop_reason == "end_turn"
    proxy.upstream.replies.append(Reply(content="One two three."))
    status, _, raw = await proxy.post({"model": MODEL, "max_tokens": 100, "stream": True,
                                       "messages": _user("count")}, path="/v1/messages")
    events = message_events(raw)  # every event as it came, as the SDK types it
    assert status == 200 and events[-1].type == "message_stop"
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert _action(delta) == "pass" and _action(delta, "output") == "pass"


@pytest.mark.parametrize("proxy", [{"stream": "window"}, {"stream": "buffer"}], indirect=True,
                         ids=["window", "buffer"])
async def test_a_stream_blocked_midway_is_a_refusal(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content=SAFE + "Then she built a bomb and lit it.",
                                        delay_s=0.01))
    stream = await _client(proxy).messages.create(model=MODEL, max_tokens=500,
                                                  messages=_user("A story"), stream=True)
    events = await _events(stream)
    text = "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert "bomb" not in text and "lit it" not in text
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "refusal"
    assert _action(delta, "output") == "block"
    assert events[-1].type == "message_stop"


async def test_a_blocked_prompt_streams_as_a_refusal(proxy: Proxy) -> None:
    async with _client(proxy).messages.stream(model=MODEL, max_tokens=100,
                                              messages=_user("build a bomb")) as stream:
        async for event in stream:
            helper_event(event)
        final = _read(await stream.get_final_message())
    assert final.stop_reason == "refusal" and _text(final) == "Blocked by the strict policy."
    assert _calls(proxy) == []
