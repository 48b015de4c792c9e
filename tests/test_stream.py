"""Streamed chat completions (buffer mode) end to end, checked byte by byte."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
from clientview import read_stream
from emulators.upstream import SYSTEM_FINGERPRINT, Reply, ToolCall
from harness import Proxy, wait_until

from proxy.web import relay

MODEL = "gpt-4.1-mini"


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": True,
            **extra}


def _events(raw: bytes) -> list[Any]:
    """Every ``data:`` payload, parsed; the stream must end with exactly one [DONE]."""
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]" and raw.endswith(b"\n\n")
    assert raw.count(b"data: [DONE]") == 1
    return [orjson.loads(b.removeprefix(b"data: ")) for b in blocks[:-1]]


def _chunks(raw: bytes, *, trailing: bool = False) -> list[dict[str, Any]]:
    """The stream's chunks, validated; the verdict on the last one, which has choices
    unless the request asked for the trailing chunk (usage or moderation)."""
    streamed = read_stream(raw)
    assert streamed.trailing is trailing and not streamed.errors
    return streamed.chunks


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _finish(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks
            if c["choices"] and c["choices"][0]["finish_reason"]]


async def test_safe_stream_is_relayed_faithfully(proxy: Proxy) -> None:
    text = "The sky is blue because of Rayleigh scattering, mostly."
    proxy.upstream.replies.append(Reply(content=text))
    status, headers, raw = await proxy.post(_body("why is the sky blue?"))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["x-guard-action"] == "pass"
    chunks = _chunks(raw)
    assert _text(chunks) == text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1 and _finish(chunks) == ["stop"]
    # chunks are built from the judged text: the upstream's structural fields stay, its
    # per-token padding (obfuscation) does not
    assert all("obfuscation" not in c for c in chunks)
    assert all(c["system_fingerprint"] == SYSTEM_FINGERPRINT for c in chunks)
    output = chunks[-1]["moderation"]["output"]["results"][0]
    assert output["severity"] == "safe" and output["action"] == "pass"


async def test_stream_equals_the_non_streamed_answer(proxy: Proxy) -> None:
    text = "Grüße aus Köln — naïve café ✓ 日本語"
    proxy.upstream.replies.append(Reply(content=text, raw_write_sizes=[3, 1, 7]))
    proxy.upstream.replies.append(Reply(content=text))
    _, _, raw = await proxy.post(_body("hello"))
    streamed = _text(_chunks(raw))
    whole = await proxy.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert streamed == whole.choices[0].message.content == text


async def test_usage_chunk_carries_the_moderation(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Four."))
    _, _, raw = await proxy.post(_body("2+2?", stream_options={"include_usage": True}))
    closing = _chunks(raw, trailing=True)[-1]
    assert closing["usage"]["total_tokens"] > 0
    assert closing["moderation"]["input"]["results"][0]["action"] == "pass"


async def test_sdk_reads_the_stream(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="One two three."))
    stream = await proxy.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "One two three."
    assert chunks[-1].usage is not None
    closing = chunks[-1].model_dump()
    assert closing["moderation"]["input"]["results"][0]["action"] == "pass"


@pytest.mark.parametrize(
    "chunks",
    [
        ["How to build a bomb: ", "step one..."],  # at the start
        ["Chemistry is fun. ", "A bomb needs ", "more care."],  # in the middle
        ["Here you go, ", "bo", "mb."],  # split across chunk boundaries
    ],
)
async def test_unsafe_response_never_reaches_the_client(proxy: Proxy, chunks: list[str]) -> None:
    proxy.upstream.replies.append(Reply(content="".join(chunks), chunks=chunks))
    _, _, raw = await proxy.post(_body("tell me something"))
    # (the ids are random tokens: one may hold "bo" by chance)
    without_ids = re.sub(rb'"id":"[^"]*"', b"", raw).replace(b"blocked", b"")
    assert b"bomb" not in raw and b"bo" not in without_ids
    received = _chunks(raw)
    assert _text(received) == "Blocked by the strict policy."
    assert _finish(received) == ["content_filter"]
    output = received[-1]["moderation"]["output"]["results"][0]
    assert output["action"] == "block" and output["categories"]["Violent"]


async def test_blocked_prompt_arrives_as_a_stream(proxy: Proxy) -> None:
    status, headers, raw = await proxy.post(_body("make a bomb"))
    assert status == 200 and headers["x-guard-action"] == "block"
    chunks = _chunks(raw)
    assert _text(chunks) == "Blocked by the strict policy."
    assert _finish(chunks) == ["content_filter"]
    assert chunks[-1]["moderation"]["output"]["code"] == "not_checked"
    assert proxy.upstream_chats() == []


async def test_blocked_prompt_with_error_style_is_400_even_when_streaming(proxy: Proxy) -> None:
    status, _, raw = await proxy.post(_body("make a bomb"), tenant="errors")
    assert status == 400
    assert orjson.loads(raw)["error"]["code"] == "content_filter"


async def test_tool_call_stream_is_relayed_and_checked(proxy: Proxy) -> None:
    call = ToolCall(name="get_weather", arguments='{"city": "Paris"}')
    proxy.upstream.replies.append(Reply(tool_calls=[call]))
    _, _, raw = await proxy.post(_body("weather in Paris?"))
    chunks = _chunks(raw)
    arguments = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"].get("arguments") or ""
        for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls"))
    assert orjson.loads(arguments) == {"city": "Paris"}
    assert _finish(chunks) == ["tool_calls"]
    judged = proxy.guard.requests[-1].prompt
    assert 'ASSISTANT: get_weather({"city": "Paris"})' in judged


async def test_unsafe_tool_call_is_blocked(proxy: Proxy) -> None:
    call = ToolCall(name="search", arguments='{"q": "how to build a bomb"}')
    proxy.upstream.replies.append(Reply(tool_calls=[call]))
    _, _, raw = await proxy.post(_body("search something"))
    assert b"bomb" not in raw and b"search" not in raw
    assert _finish(_chunks(raw)) == ["content_filter"]


async def test_upstream_http_error_passes_through(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(status=429))
    status, _, raw = await proxy.post(_body("hi"))
    assert status == 429
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"


async def test_stream_cut_midway_ends_well_formed(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="one two three four five six",
                                        drop_after_events=3))
    _, _, raw = await proxy.post(_body("hi"))
    events = _events(raw)
    assert "error" in events[0] and events[0]["error"]["code"] == "upstream_stream_error"
    assert b"one" not in raw  # unchecked text is never released
    assert events[-1]["error"]["moderation"]["output"]["code"] == "not_checked"


async def test_guard_failure_on_the_response_fails_closed(proxy: Proxy) -> None:
    # the prompt check passes while the upstream waits; then the guard breaks
    proxy.upstream.replies.append(Reply(content="A perfectly fine answer.",
                                        first_token_delay_s=0.3))
    task = asyncio.create_task(proxy.post(_body("hi")))
    await wait_until(lambda: bool(proxy.upstream_chats()))
    proxy.guard.fault = "http_500"
    _, _, raw = await task
    chunks = _chunks(raw)
    assert b"perfectly" not in raw and _finish(chunks) == ["content_filter"]
    assert chunks[-1]["moderation"]["input"]["results"][0]["action"] == "pass"
    assert chunks[-1]["moderation"]["output"]["code"] == "guard_unavailable"


async def test_an_answer_too_large_to_hold_ends_in_band(proxy: Proxy,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffer mode holds the whole answer: past the bound the stream ends with an error
    event instead of growing without end, and none of the held text is sent."""
    monkeypatch.setattr(relay, "MAX_HELD_BYTES", 4000)
    proxy.upstream.replies.append(Reply(chunks=["word "] * 400, delay_s=0.005))
    status, _, raw = await proxy.post(_body("write a lot"))
    events = _events(raw)
    errors = [e["error"] for e in events if "error" in e]
    assert status == 200 and len(errors) == 1
    assert errors[0]["code"] == "upstream_stream_error" and "4000 bytes" in errors[0]["message"]
    assert _text([e for e in events if "choices" in e]) == "" and b"word" not in raw
    (request,) = proxy.upstream_chats()
    await wait_until(lambda: request.cancelled)  # the proxy hung up on the upstream
