"""The upstream emulator's Responses and Messages APIs, read by the official SDKs.

openai's ``responses.create`` and ``responses.stream`` drive ``/v1/responses``, anthropic's
``messages.create`` and ``messages.stream`` drive ``/v1/messages``, from the same ``Reply``
scripts as chat completions.  Every event and every whole answer is validated against the
SDK's own pydantic types (openai's ``ResponseStreamEvent`` union and ``Response``, anthropic's
``RawMessageStreamEvent`` union and ``Message``), and the raw streams are read too: one
``event: <type>`` and one ``data:`` line per event, the type matching, nothing after the last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from emulators.upstream import Reply, ToolCall, UpstreamEmulator
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from openai_schema import validate
from pydantic import TypeAdapter

Json = dict[str, Any]

RESPONSE_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
MESSAGE_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
HI: Any = [{"role": "user", "content": "hi"}]
VERSION = {"anthropic-version": "2023-06-01"}
CALLS = [
    ToolCall(name="get_weather", arguments='{"city": "Paris", "unit": "celsius"}', id="call_w1",
             argument_chunks=['{"city": "Pa', 'ris", "unit"', ': "celsius"}']),
    ToolCall(name="get_time", arguments='{"tz": "Europe/Paris"}'),  # 3 pieces of 8 characters
]


def reply(kind: str) -> Reply:
    """The scripts every API is read with."""
    if kind == "text":
        return Reply(chunks=["Hel", "lo, ", "wörld ✓"])
    if kind == "reasoning":
        return Reply(reasoning_chunks=["The user greets; ", "greet back."], chunks=["Hi", "!"])
    return Reply(tool_calls=CALLS)


def openai_events(kind: str, *, final: str = "response.completed") -> list[str]:
    """The event types api.openai.com sends for ``reply(kind)``."""
    item, summary = "response.output_item", "response.reasoning_summary"

    def message(pieces: int) -> list[str]:
        return [f"{item}.added", "response.content_part.added",
                *["response.output_text.delta"] * pieces, "response.output_text.done",
                "response.content_part.done", f"{item}.done"]

    reasoning = [f"{item}.added", f"{summary}_part.added", *[f"{summary}_text.delta"] * 2,
                 f"{summary}_text.done", f"{summary}_part.done", f"{item}.done"]
    call = [f"{item}.added", *["response.function_call_arguments.delta"] * 3,
            "response.function_call_arguments.done", f"{item}.done"]
    items = {"text": message(3), "reasoning": [*reasoning, *message(2)], "tools": call * 2}
    return ["response.created", "response.in_progress", *items[kind], final]


def anthropic_events(kind: str) -> list[str]:
    """The event types api.anthropic.com sends for ``reply(kind)`` (``ping`` included)."""
    start, delta, stop = "content_block_start", "content_block_delta", "content_block_stop"
    if kind == "text":
        blocks = [start, "ping", *[delta] * 3, stop]
    elif kind == "reasoning":
        blocks = [start, "ping", *[delta] * 3, stop, start, *[delta] * 2, stop]
    else:  # an empty input_json_delta, then the pieces
        blocks = [start, "ping", *[delta] * 4, stop, start, *[delta] * 4, stop]
    return ["message_start", *blocks, "message_delta", "message_stop"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def oai(upstream_emulator: UpstreamEmulator) -> AsyncIterator[openai.AsyncOpenAI]:
    url, key = upstream_emulator.url + "/v1", upstream_emulator.api_key or "x"
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(upstream_emulator: UpstreamEmulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    key = upstream_emulator.api_key or "x"
    async with anthropic.AsyncAnthropic(base_url=upstream_emulator.url, api_key=key,
                                        max_retries=0) as client:
        yield client


async def raw_sse(
    http: aiohttp.ClientSession, url: str, body: Json, headers: dict[str, str] | None = None
) -> list[Json]:
    """A stream's events, each checked for its framing: ``event: <type>``, then ``data:``."""
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        text = await response.text()
    assert text.endswith("\n\n") and "[DONE]" not in text
    events = []
    for block in text.split("\n\n")[:-1]:
        name, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}" and data.startswith("data: {")
        events.append(event)
    return events


def check_openai_events(events: list[Json]) -> None:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        RESPONSE_EVENT.validate_python(event)
    opening = events[0]["response"]
    assert opening["status"] == "in_progress" and opening["output"] == []


def check_anthropic_events(events: list[Json]) -> None:
    for event in events:
        if event["type"] == "ping":
            assert event == {"type": "ping"}
        else:
            MESSAGE_EVENT.validate_python(event)


def sans_ids(value: Any) -> Any:
    """``value`` without what differs from answer to answer (ids, times, signatures), nulls,
    and what the SDKs' stream helpers add (``parsed`` fields)."""
    volatile = {"id", "call_id", "created_at", "completed_at", "signature", "parsed",
                "output_parsed", "parsed_output"}
    if isinstance(value, dict):
        return {k: sans_ids(v) for k, v in value.items() if k not in volatile and v is not None}
    if isinstance(value, list):
        return [sans_ids(v) for v in value]
    return value


# --- /v1/responses ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "reasoning", "tools"])
async def test_responses_stream_events(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession, kind: str
) -> None:
    upstream_emulator.replies.append(reply(kind))
    body = {"model": "gpt-5-mini", "input": "hi", "stream": True}
    events = await raw_sse(http, upstream_emulator.url + "/v1/responses", body)
    check_openai_events(events)
    assert [e["type"] for e in events] == openai_events(kind)
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.usage is not None
    finished = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert finished == events[-1]["response"]["output"]
    deltas = [e for e in events if e["type"].endswith(".delta")]
    assert all(e["obfuscation"] for e in deltas)
    for event in events:
        if event["type"] == "response.output_text.delta":
            assert event["logprobs"] == [] and event["content_index"] == 0


@pytest.mark.parametrize("kind", ["text", "reasoning", "tools"])
async def test_responses_sdk_stream_matches_whole(
    upstream_emulator: UpstreamEmulator, oai: openai.AsyncOpenAI, kind: str
) -> None:
    upstream_emulator.replies += [reply(kind), reply(kind)]
    async with oai.responses.stream(model="gpt-5-mini", input="hi",
                                    instructions="Be kind.") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    for event in events:
        RESPONSE_EVENT.validate_python(event.to_dict(warnings=False))
    assert [e.type for e in events] == openai_events(kind)
    raw = await oai.responses.with_raw_response.create(model="gpt-5-mini", input="hi",
                                                       instructions="Be kind.")
    whole = Response.model_validate(raw.http_response.json())
    assert sans_ids(final.to_dict(warnings=False)) == sans_ids(whole.to_dict())
    assert whole.instructions == "Be kind." and whole.error is None
    assert whole.id.startswith("resp_") and whole.object == "response"
    if kind == "text":
        assert whole.output_text == "Hello, wörld ✓" and [o.type for o in whole.output] == [
            "message"]
    if kind == "reasoning":
        assert [o.type for o in whole.output] == ["reasoning", "message"]
        thought = whole.output[0]
        assert thought.type == "reasoning" and thought.id.startswith("rs_")
        assert [s.text for s in thought.summary] == ["The user greets; greet back."]
        assert whole.output_text == "Hi!"
        assert whole.usage and whole.usage.output_tokens_details.reasoning_tokens == 2
    if kind == "tools":
        calls = [o for o in whole.output if o.type == "function_call"]
        assert [(c.name, c.arguments, c.status) for c in calls] == [
            (c.name, c.arguments, "completed") for c in CALLS]
        assert calls[0].call_id == "call_w1" and calls[1].call_id.startswith("call_")
        assert all(c.id and c.id.startswith("fc_") for c in calls)
    record = upstream_emulator.requests[-1]
    assert (record.path, record.method) == ("/v1/responses", "POST")
    assert record.body == {"model": "gpt-5-mini", "input": "hi", "instructions": "Be kind."}
    assert record.headers["Authorization"] == "Bearer x" and record.completed


async def test_responses_default_reply_echoes_the_last_user_input(
    oai: openai.AsyncOpenAI,
) -> None:
    conversation: Any = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
    ]
    response = await oai.responses.create(model="m", input=conversation)
    assert response.output_text == "You said: second"
    response = await oai.responses.create(model="m", input="plain")
    assert response.output_text == "You said: plain"


async def test_responses_obfuscation_can_be_turned_off(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "input": "hi", "stream": True,
            "stream_options": {"include_obfuscation": False}}
    events = await raw_sse(http, upstream_emulator.url + "/v1/responses", body)
    assert not any("obfuscation" in e for e in events)


async def test_responses_incomplete(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession, oai: openai.AsyncOpenAI
) -> None:
    upstream_emulator.replies.append(Reply(content="Cut sho", finish_reason="length"))
    whole = await oai.responses.create(model="m", input="hi")
    assert whole.status == "incomplete" and whole.incomplete_details
    assert whole.incomplete_details.reason == "max_output_tokens"
    upstream_emulator.replies.append(Reply(content="Cut sho", finish_reason="length"))
    body = {"model": "m", "input": "hi", "stream": True}
    events = await raw_sse(http, upstream_emulator.url + "/v1/responses", body)
    check_openai_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


async def test_responses_errors(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession, oai: openai.AsyncOpenAI
) -> None:
    upstream_emulator.replies.append(Reply(status=429, headers={"retry-after": "1"}))
    with pytest.raises(openai.RateLimitError) as limited:
        await oai.responses.create(model="m", input="hi", stream=True)
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    validate("ErrorResponse", limited.value.response.json())
    custom = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    upstream_emulator.replies.append(Reply(status=500, error_body=custom))
    with pytest.raises(openai.InternalServerError) as failed:
        await oai.responses.create(model="m", input="hi")
    assert failed.value.response.json() == custom
    async with http.post(upstream_emulator.url + "/v1/responses", json={"input": "hi"}) as answer:
        assert answer.status == 400
        error = (await answer.json())["error"]
    assert (error["param"], error["code"]) == ("model", "missing_required_parameter")
    async with http.post(upstream_emulator.url + "/v1/responses", data=b"{nope") as answer:
        assert answer.status == 400 and "could not parse" in (await answer.json())["error"][
            "message"]


async def test_responses_auth(upstream_emulator: UpstreamEmulator, oai: openai.AsyncOpenAI) -> None:
    upstream_emulator.api_key = "sk-upstream"
    with pytest.raises(openai.AuthenticationError) as caught:
        await oai.with_options(api_key="sk-client").responses.create(model="m", input="hi")
    assert caught.value.code == "invalid_api_key"
    response = await oai.with_options(api_key="sk-upstream").responses.create(model="m", input="hi")
    assert response.output_text == "You said: hi"


async def test_responses_dropped_stream(
    upstream_emulator: UpstreamEmulator, oai: openai.AsyncOpenAI
) -> None:
    upstream_emulator.replies.append(Reply(chunks=["a", "b", "c"], drop_after_events=5))
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async with oai.responses.stream(model="m", input="hi") as stream:
            async for event in stream:
                seen.append(event.type)
    assert seen == openai_events("text")[:5]
    assert not upstream_emulator.requests[-1].completed


async def test_responses_verbatim_shapes(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession
) -> None:
    shape = [{"type": "response.created", "sequence_number": 0, "response": {"id": "resp_v"}}]
    upstream_emulator.replies += [Reply(events=shape), Reply(completion={"id": "resp_w"}),
                                  Reply(raw=b"data: [DONE]\n\n")]
    url, body = upstream_emulator.url + "/v1/responses", {"model": "m", "input": "hi"}
    assert await raw_sse(http, url, {**body, "stream": True}) == shape
    async with http.post(url, json=body) as answer:
        assert await answer.json() == {"id": "resp_w"}
    async with http.post(url, json={**body, "stream": True}) as answer:
        assert await answer.read() == b"data: [DONE]\n\n"


@pytest.mark.parametrize("kind", ["text", "reasoning", "tools"])
async def test_responses_vllm_dialect(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession, oai: openai.AsyncOpenAI,
    kind: str,
) -> None:
    upstream_emulator.dialect = "vllm"
    upstream_emulator.replies += [reply(kind), reply(kind), reply(kind)]
    body = {"model": "Qwen/Qwen3-8B", "input": "hi", "stream": True}
    events = await raw_sse(http, upstream_emulator.url + "/v1/responses", body)
    types = [e["type"] for e in events]
    expected = openai_events(kind)
    if kind == "reasoning":  # vLLM's own part events, and reasoning_text instead of a summary
        expected[3:8] = ["response.reasoning_part.added", *["response.reasoning_text.delta"] * 2,
                         "response.reasoning_text.done", "response.reasoning_part.done"]
    assert types == expected
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        assert "obfuscation" not in event
        if event["type"].startswith("response.reasoning_part."):
            assert event["part"]["type"] == "reasoning_text"  # no openai type for the event
            continue
        if "response" in event:  # vLLM's usage details lack the SDK's cache_write_tokens
            event = {**event, "response": {**event["response"], "usage": None}}
        RESPONSE_EVENT.validate_python(event)
    final = events[-1]["response"]
    assert "error" not in final and final["service_tier"] == "auto" and final["status"] == (
        "completed")
    streamed = {e["item"]["id"] for e in events if e["type"] == "response.output_item.done"}
    assert streamed.isdisjoint(item["id"] for item in final["output"])  # drawn afresh
    async with oai.responses.stream(model="Qwen/Qwen3-8B", input="hi") as stream:
        async for _ in stream:
            pass
        parsed = await stream.get_final_response()
    whole = await oai.responses.create(model="Qwen/Qwen3-8B", input="hi")
    assert sans_ids(parsed.to_dict(warnings=False)) == sans_ids(whole.to_dict())
    if kind == "reasoning":
        thought = whole.output[0]
        assert thought.type == "reasoning" and thought.summary == [] and thought.content
        assert thought.id.startswith("rs_") and thought.content[0].text == (
            "The user greets; greet back.")
    if kind == "tools":
        assert [o.type for o in whole.output] == ["function_call"] * 2  # no empty message


# --- /v1/messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "reasoning", "tools"])
async def test_messages_stream_events(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession, kind: str
) -> None:
    upstream_emulator.replies.append(reply(kind))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": HI, "stream": True}
    events = await raw_sse(http, upstream_emulator.url + "/v1/messages", body, VERSION)
    check_anthropic_events(events)
    assert [e["type"] for e in events] == anthropic_events(kind)
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith(
        "msg_01")
    openings = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    if kind == "reasoning":
        assert openings == [{"type": "thinking", "thinking": "", "signature": ""},
                            {"type": "text", "text": ""}]
        assert [d["type"] for d in deltas] == ["thinking_delta", "thinking_delta",
                                               "signature_delta", "text_delta", "text_delta"]
        assert deltas[2]["signature"]
    if kind == "tools":
        assert [(o["type"], o["name"], o["input"]) for o in openings] == [
            ("tool_use", c.name, {}) for c in CALLS]
        assert openings[0]["id"] == "call_w1" and openings[1]["id"].startswith("toolu_01")
        assert [d["partial_json"] for d in deltas[:4]] == ["", *(CALLS[0].argument_chunks or [])]
    assert events[-2]["delta"] == {"stop_reason": "tool_use" if kind == "tools" else "end_turn",
                                   "stop_sequence": None}


@pytest.mark.parametrize("kind", ["text", "reasoning", "tools"])
async def test_messages_sdk_stream_matches_whole(
    upstream_emulator: UpstreamEmulator, claude: anthropic.AsyncAnthropic, kind: str
) -> None:
    upstream_emulator.replies += [reply(kind), reply(kind), reply(kind)]
    raw = await claude.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=HI,
                                       stream=True)
    events = [event async for event in raw]
    for event in events:
        MESSAGE_EVENT.validate_python(event.to_dict())
    assert [e.type for e in events] == [t for t in anthropic_events(kind) if t != "ping"]
    async with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=1024,
                                      messages=HI) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_message()
    response = await claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=HI)
    whole = Message.model_validate(response.http_response.json())
    assert response.http_response.headers["request-id"].startswith("req_")
    assert sans_ids(final.to_dict()) == sans_ids(whole.to_dict())
    assert whole.id.startswith("msg_01") and whole.role == "assistant" and whole.type == "message"
    assert whole.stop_sequence is None and whole.usage.output_tokens > 0
    if kind == "text":
        assert [b.type for b in whole.content] == ["text"] and whole.stop_reason == "end_turn"
        assert whole.content[0].text == "Hello, wörld ✓"  # type: ignore[union-attr]
    if kind == "reasoning":
        thinking, text = whole.content
        assert thinking.type == "thinking" and thinking.thinking == "The user greets; greet back."
        assert thinking.signature and text.type == "text" and text.text == "Hi!"
    if kind == "tools":
        assert whole.stop_reason == "tool_use"
        uses = [b for b in whole.content if b.type == "tool_use"]
        assert [(u.name, u.input) for u in uses] == [
            ("get_weather", {"city": "Paris", "unit": "celsius"}),
            ("get_time", {"tz": "Europe/Paris"}),
        ]
    record = upstream_emulator.requests[-1]
    assert (record.path, record.body) == ("/v1/messages", {
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": HI})
    key = record.headers.get("x-api-key") or record.headers["Authorization"].removeprefix("Bearer ")
    assert key == "x" and record.headers["anthropic-version"]


async def test_messages_default_reply_and_stop_reasons(
    upstream_emulator: UpstreamEmulator, claude: anthropic.AsyncAnthropic
) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "Bonjour"}]}]
    whole = await claude.messages.create(model="m", max_tokens=16, messages=messages,
                                         system="Be brief.")
    assert whole.content[0].type == "text" and whole.content[0].text == "You said: Bonjour"
    assert whole.usage.input_tokens > 0
    for finish, stop in [("length", "max_tokens"), ("content_filter", "refusal"),
                         ("stop_sequence", "stop_sequence")]:
        upstream_emulator.replies.append(Reply(content="x", finish_reason=finish))
        whole = await claude.messages.create(model="m", max_tokens=16, messages=HI)
        assert whole.stop_reason == stop


async def test_messages_errors(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession,
    claude: anthropic.AsyncAnthropic,
) -> None:
    upstream_emulator.replies.append(Reply(status=529))
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await claude.messages.create(model="m", max_tokens=16, messages=HI, stream=True)
    body = overloaded.value.response.json()
    assert body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                    "request_id": overloaded.value.response.headers["request-id"]}
    upstream_emulator.replies.append(Reply(status=429, headers={"retry-after": "2"}))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await claude.messages.create(model="m", max_tokens=16, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited.value.response.headers["retry-after"] == "2"
    url = upstream_emulator.url + "/v1/messages"
    for missing in ("model", "max_tokens", "messages"):
        body = {"model": "m", "max_tokens": 16, "messages": HI}
        del body[missing]
        async with http.post(url, json=body, headers=VERSION) as answer:
            assert answer.status == 400
            error = await answer.json()
        assert error["type"] == "error" and error["error"] == {
            "type": "invalid_request_error", "message": f"{missing}: Field required"}
    async with http.post(url, json={"model": "m", "max_tokens": 16, "messages": HI}) as answer:
        assert answer.status == 400
        assert (await answer.json())["error"]["message"] == "anthropic-version: header is required"
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(model="m", max_tokens=16, messages="hi")  # type: ignore[arg-type]


async def test_messages_auth(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession,
    claude: anthropic.AsyncAnthropic,
) -> None:
    upstream_emulator.api_key = "sk-upstream"
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await claude.with_options(api_key="sk-client").messages.create(
            model="m", max_tokens=16, messages=HI)
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "authentication_error", "message": "invalid x-api-key"}
    whole = await claude.with_options(api_key="sk-upstream").messages.create(
        model="m", max_tokens=16, messages=HI)
    assert whole.content[0].type == "text"
    async with anthropic.AsyncAnthropic(base_url=upstream_emulator.url, auth_token="sk-upstream",
                                        max_retries=0) as bearer:
        await bearer.messages.create(model="m", max_tokens=16, messages=HI)
    assert upstream_emulator.requests[-1].headers["Authorization"] == "Bearer sk-upstream"
    body = {"model": "m", "max_tokens": 16, "messages": HI}
    url = upstream_emulator.url + "/v1/messages"
    async with http.post(url, json=body, headers=VERSION) as answer:
        assert answer.status == 401
        assert (await answer.json())["error"]["message"] == "x-api-key header is required"
    for key, status in [("sk-upstream", 200), ("sk-client", 401)]:
        async with http.post(url, json=body, headers={**VERSION, "x-api-key": key}) as answer:
            assert answer.status == status


async def test_messages_dropped_stream(
    upstream_emulator: UpstreamEmulator, claude: anthropic.AsyncAnthropic
) -> None:
    upstream_emulator.replies.append(Reply(chunks=["a", "b", "c"], drop_after_events=5))
    seen: list[str] = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        async with claude.messages.stream(model="m", max_tokens=16, messages=HI) as stream:
            async for event in stream:
                seen.append(event.type)
    # message_start, content_block_start, ping (not shown), two text deltas (each also a "text")
    assert seen == ["message_start", "content_block_start", "content_block_delta", "text",
                    "content_block_delta", "text"]
    assert not upstream_emulator.requests[-1].completed


async def test_messages_timing_and_gate(
    upstream_emulator: UpstreamEmulator, claude: anthropic.AsyncAnthropic
) -> None:
    gate = asyncio.Event()
    upstream_emulator.replies.append(Reply(content="late", gate=gate, first_token_delay_s=0.05))
    task = asyncio.create_task(claude.messages.create(model="m", max_tokens=16, messages=HI))
    await asyncio.sleep(0.05)
    assert not task.done()
    gate.set()
    whole = await task
    assert whole.content[0].type == "text" and whole.content[0].text == "late"


async def test_messages_verbatim_shapes(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession
) -> None:
    shape: list[Json] = [{"type": "message_start", "message": {"id": "msg_v"}},
                         {"type": "message_stop"}]
    upstream_emulator.replies += [Reply(events=shape), Reply(completion={"id": "msg_w"})]
    url, body = upstream_emulator.url + "/v1/messages", {"model": "m", "max_tokens": 8,
                                                         "messages": HI}
    assert await raw_sse(http, url, {**body, "stream": True}, VERSION) == shape
    async with http.post(url, json=body, headers=VERSION) as answer:
        assert await answer.json() == {"id": "msg_w"}


@pytest.mark.parametrize("kind", ["text", "reasoning", "tools"])
async def test_messages_vllm_dialect(
    upstream_emulator: UpstreamEmulator, http: aiohttp.ClientSession,
    claude: anthropic.AsyncAnthropic, kind: str,
) -> None:
    upstream_emulator.dialect = "vllm"
    upstream_emulator.replies += [reply(kind), reply(kind), reply(kind)]
    body = {"model": "Qwen/Qwen3-8B", "max_tokens": 64, "messages": HI, "stream": True}
    events = await raw_sse(http, upstream_emulator.url + "/v1/messages", body)  # no version
    expected = [t for t in anthropic_events(kind) if t != "ping"]
    if kind == "tools":  # no empty input_json_delta first
        block = ["content_block_start", *["content_block_delta"] * 3, "content_block_stop"]
        expected = ["message_start", *block, *block, "message_delta", "message_stop"]
    assert [e["type"] for e in events] == expected
    start = events[0]["message"]
    assert "type" not in start and "role" not in start and start["id"].startswith("chatcmpl-")
    assert start["usage"]["output_tokens"] == 0
    assert events[-2]["delta"] == {"stop_reason": "tool_use" if kind == "tools" else "end_turn"}
    if kind == "reasoning":
        assert events[1]["content_block"] == {"type": "thinking", "thinking": ""}
        signature = events[4]["delta"]
        assert signature["type"] == "signature_delta" and len(signature["signature"]) == 32
    async with claude.messages.stream(model="Qwen/Qwen3-8B", max_tokens=64, messages=HI) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_message()
    response = await claude.messages.with_raw_response.create(model="Qwen/Qwen3-8B",
                                                              max_tokens=64, messages=HI)
    whole = response.http_response.json()
    assert "stop_sequence" not in whole and set(whole["usage"]) == {"input_tokens",
                                                                    "output_tokens"}
    Message.model_validate(whole)
    assert sans_ids([b.to_dict() for b in final.content]) == sans_ids(whole["content"])


# --- chat completions: reasoning ------------------------------------------------------------------


async def test_chat_reasoning_content(upstream_emulator: UpstreamEmulator,
                                      oai: openai.AsyncOpenAI) -> None:
    script = {"reasoning_chunks": ["Mull", " it over."], "chunks": ["Fine", "."]}
    upstream_emulator.replies += [Reply(**script), Reply(**script)]  # type: ignore[arg-type]
    stream = await oai.chat.completions.create(model="m", messages=HI, stream=True)
    chunks = [ChatCompletionChunk.model_validate(c.to_dict()) async for c in stream]
    deltas = [c.choices[0].delta.to_dict() for c in chunks]
    assert deltas[:5] == [{"role": "assistant", "content": "", "refusal": None},
                          {"reasoning_content": "Mull"}, {"reasoning_content": " it over."},
                          {"content": "Fine"}, {"content": "."}]
    raw = await oai.chat.completions.with_raw_response.create(model="m", messages=HI)
    whole = ChatCompletion.model_validate(raw.http_response.json())
    message = raw.http_response.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "Mull it over." and message["content"] == "Fine."
    assert whole.usage and whole.usage.completion_tokens_details
    assert whole.usage.completion_tokens_details.reasoning_tokens == 2
    assert whole.usage.completion_tokens == 4
    plain = await oai.chat.completions.with_raw_response.create(model="m", messages=HI)
    assert "reasoning_content" not in plain.http_response.json()["choices"][0]["message"]
