"""What a stream releases, and when, through the proxy on all three APIs.

- A tool call, a legacy function call or a citation that follows a whole window of text is
  judged by a final check before it goes out (``window`` and ``async``).
- With a guard the test holds open, ``window`` writes nothing past what the last passing
  check covered while the next check is pending.
- A window's text ends at a word boundary when one lies close to its end; text written
  without spaces ends where the check ended.

The upstream pauses its stream where the test says (``Reply.pause``) and the guard holds a
check open where the test says (``GuardEmulator.hold``): each scenario happens in the order
the test sets, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from emulators.guard import judged_message
from emulators.upstream import Reply, ToolCall
from harness import KEYS, Proxy, wait_until, words
from sdktypes import message_event, response_event

from proxy.core.template import RESPONSE_TAIL

Json = dict[str, Any]
APIS = ["chat", "responses", "messages"]
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
SAFE = "The quick brown fox jumps over the lazy dog. "  # 45 characters
WINDOW = 160  # the tenants' window_chars


def request(api: str, text: str = "tell me") -> Json:
    body: Json = {"model": "m", "stream": True}
    if api == "responses":
        return {**body, "input": text}
    body["messages"] = [{"role": "user", "content": text}]
    return {**body, "max_tokens": 500} if api == "messages" else body


@dataclass
class Seen:
    """What a client read of a stream, in any of the three APIs."""

    text: str
    calls: str  # tool calls' names and arguments, as sent
    blocked: bool
    ended: bool


def seen(api: str, raw: bytes) -> Seen:
    """The text and calls of a (possibly unfinished) stream; only whole events count."""
    text, calls, blocked, ended = [], [], False, False
    for block in raw.split(b"\n\n")[:-1]:
        data = next((line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")),
                    None)
        if data is None:
            continue
        if data == b"[DONE]":
            ended = True
            continue
        event = orjson.loads(data)
        if api != "chat":  # as the SDK types it
            (response_event if api == "responses" else message_event)(event)
        pieces, called, stop = _read(api, event)
        text += pieces
        calls += called
        blocked |= stop
        ended |= api != "chat" and event.get("type") in ("response.completed",
                                                         "response.incomplete", "message_stop")
    return Seen("".join(text), "".join(calls), blocked, ended)


def _read(api: str, event: Json) -> tuple[list[str], list[str], bool]:
    if api == "chat":
        texts, calls, stop = [], [], False
        for choice in event.get("choices") or []:
            delta = choice["delta"]
            texts.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                calls.append(call["function"]["name"] + call["function"]["arguments"])
            if delta.get("function_call"):
                calls.append(orjson.dumps(delta["function_call"]).decode())
            if delta.get("annotations"):
                calls.append(orjson.dumps(delta["annotations"]).decode())
            stop |= choice["finish_reason"] == "content_filter"
        return texts, calls, stop
    kind = event.get("type")
    if api == "responses":
        if kind == "response.output_text.delta":
            return [event["delta"]], [], False
        if kind in ("response.output_item.added", "response.function_call_arguments.delta"):
            item = event.get("item") or {}
            return [], [item.get("name") or "", event.get("delta") or ""], False
        return [], [], kind == "response.incomplete"
    if kind == "content_block_delta":
        delta = event["delta"]
        return [delta.get("text") or ""], [delta.get("partial_json") or ""], False
    if kind == "content_block_start":
        return [], [event["content_block"].get("name") or ""], False
    return [], [], (event.get("delta") or {}).get("stop_reason") == "refusal"


_READERS: list[asyncio.Task[int]] = []


@pytest.fixture(autouse=True)
async def _readers_end() -> AsyncIterator[None]:
    yield
    while _READERS:  # a failed test leaves its reader running
        task = _READERS.pop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _paused(proxy: Proxy) -> bool:
    return bool(proxy.upstream.requests) and proxy.upstream.requests[-1].paused


def _upstream_done(proxy: Proxy) -> bool:
    return bool(proxy.upstream.requests) and proxy.upstream.requests[-1].completed


class Reader:
    """A client reading a stream through the proxy as it arrives."""

    def __init__(self, proxy: Proxy, api: str, body: Json | None = None) -> None:
        self.api, self.raw = api, b""
        self.task = asyncio.create_task(self._read(proxy, body or request(api)))
        _READERS.append(self.task)

    async def _read(self, proxy: Proxy, body: Json) -> int:
        headers = {"Authorization": f"Bearer {KEYS['strict']}"}
        async with proxy.http.post(proxy.url + PATHS[self.api], json=body,
                                   headers=headers) as resp:
            async for piece in resp.content.iter_any():
                self.raw += piece
            return resp.status

    @property
    def seen(self) -> Seen:
        return seen(self.api, self.raw)

    async def done(self) -> Seen:
        assert await self.task == 200
        result = self.seen
        assert result.ended, self.raw[-300:]
        return result


def response_checks(proxy: Proxy) -> list[str]:
    """The answer text each response check judged, in order (a flagged check's continuation
    is the same check)."""
    judged = []
    for record in proxy.guard.requests:
        render = record.render
        if render and record.starts_check and judged_message(render)[0] == "response":
            start = render.rindex("ASSISTANT: ") + len("ASSISTANT: ")
            judged.append(render[start : -len(RESPONSE_TAIL)])
    return judged


# -- what follows a whole window is judged ----------------------------------------------------

TEXT = (SAFE * 4)[:WINDOW - 1] + " "  # exactly one window, ending at a word's end
assert len(TEXT) == WINDOW
UNSAFE_CALL = ToolCall(name="place_order", arguments='{"item": "a bomb kit"}')


def _chat_head(delta: Json, finish: str | None = None, **top: Any) -> Json:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}], **top}


def _after_text(tail: list[Json]) -> list[Json]:
    """A chat stream: the window of text, then ``tail``."""
    return [_chat_head({"role": "assistant", "content": ""}),
            *(_chat_head({"content": piece}) for piece in words(TEXT)), *tail]


FUNCTION_CALL = _after_text([
    _chat_head({"function_call": {"name": "place_order", "arguments": ""}}),
    _chat_head({"function_call": {"arguments": '{"item": "a bomb kit"}'}}),
    _chat_head({}, "function_call")])
CITATION = _after_text([_chat_head({"annotations": [{"type": "url_citation", "url_citation": {
    "start_index": 0, "end_index": 4, "title": "place_order: how to build a bomb",
    "url": "https://example.com/x"}}]}, "stop")])


async def _after_a_window(proxy: Proxy, api: str, resume: asyncio.Event) -> Seen:
    reader = Reader(proxy, api)
    # the window check starts over the text alone: the upstream waits before the call
    await wait_until(lambda: len(response_checks(proxy)) >= 1)
    assert response_checks(proxy)[0] == TEXT
    resume.set()
    return await reader.done()


@pytest.mark.parametrize("proxy", [{"stream": "window"}, {"stream": "async"}], indirect=True,
                         ids=["window", "async"])
@pytest.mark.parametrize("api", APIS)
async def test_a_tool_call_after_a_whole_window_is_judged(proxy: Proxy, api: str) -> None:
    resume = asyncio.Event()
    proxy.upstream.replies.append(Reply(content=TEXT, chunks=words(TEXT),
                                        tool_calls=[UNSAFE_CALL], pause=(b"place_order", resume)))
    result = await _after_a_window(proxy, api, resume)
    assert "bomb" not in result.text + result.calls
    assert result.blocked and "place_order" not in result.calls
    checks = response_checks(proxy)
    assert len(checks) == 2 and 'place_order({"item": "a bomb kit"})' in checks[1]


@pytest.mark.parametrize("proxy", [{"stream": "window"}, {"stream": "async"}], indirect=True,
                         ids=["window", "async"])
@pytest.mark.parametrize("events", [FUNCTION_CALL, CITATION], ids=["function_call", "citation"])
async def test_a_function_call_or_citation_after_a_whole_window_is_judged(
        proxy: Proxy, events: list[Json]) -> None:
    resume = asyncio.Event()
    marker = b"place_order" if events is FUNCTION_CALL else b"url_citation"
    proxy.upstream.replies.append(Reply(events=events, pause=(marker, resume)))
    reader = Reader(proxy, "chat")
    await wait_until(lambda: len(response_checks(proxy)) >= 1)
    assert response_checks(proxy)[0] == TEXT
    resume.set()
    result = await reader.done()
    assert b"bomb" not in reader.raw and b"place_order" not in reader.raw
    assert result.blocked
    assert len(response_checks(proxy)) == 2 and "bomb" in response_checks(proxy)[1]


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
@pytest.mark.parametrize("api", APIS)
async def test_a_safe_call_after_a_whole_window_goes_out_after_its_check(
        proxy: Proxy, api: str) -> None:
    resume = asyncio.Event()
    call = ToolCall(name="place_order", arguments='{"item": "a kettle"}')
    proxy.upstream.replies.append(Reply(content=TEXT, chunks=words(TEXT), tool_calls=[call],
                                        pause=(b"place_order", resume)))
    result = await _after_a_window(proxy, api, resume)
    assert not result.blocked and result.text == TEXT
    assert "place_order" in result.calls and "kettle" in result.calls
    assert len(response_checks(proxy)) == 2  # the final check judged the call


# -- a pending check holds the window -----------------------------------------------------------

FIRST = SAFE * 4  # 180 characters: the first window's check starts within them
REST = "Now a bomb part. " + SAFE * 2


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
@pytest.mark.parametrize("api", APIS)
async def test_nothing_past_the_covered_text_while_a_check_is_pending(
        proxy: Proxy, api: str) -> None:
    resume, held = asyncio.Event(), asyncio.Event()
    proxy.guard.hold[1] = held  # the answer's second check waits for the test
    proxy.upstream.replies.append(Reply(content=FIRST + REST, chunks=words(FIRST + REST),
                                        pause=(b"bomb", resume)))
    reader = Reader(proxy, api)
    await wait_until(lambda: _paused(proxy)
                     and len(response_checks(proxy)) == 1)
    covered = response_checks(proxy)[0]  # the first check: it passes
    assert (FIRST + REST).startswith(covered) and len(covered) >= WINDOW
    assert "bomb" not in covered
    await wait_until(lambda: reader.seen.text == covered)  # released once it passed
    resume.set()  # the rest arrives while the next check is held open
    await wait_until(lambda: proxy.guard.holding == [1] and _upstream_done(proxy))
    assert reader.seen.text == covered and not reader.seen.blocked
    assert "bomb" in response_checks(proxy)[1]
    held.set()
    result = await reader.done()
    assert result.text == covered and result.blocked  # nothing past it, ever
    assert b"bomb" not in reader.raw


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
@pytest.mark.parametrize("api", APIS)
async def test_a_passing_held_check_releases_what_it_covered(proxy: Proxy, api: str) -> None:
    held = asyncio.Event()
    proxy.guard.hold[0] = held
    text = SAFE * 12
    proxy.upstream.replies.append(Reply(content=text, chunks=words(text)))
    reader = Reader(proxy, api)
    await wait_until(lambda: proxy.guard.holding == [0] and _upstream_done(proxy))
    assert reader.seen.text == ""  # the whole answer is here; no check passed yet
    held.set()
    result = await reader.done()
    assert result.text == text and not result.blocked


# -- windows end at word boundaries --------------------------------------------------------------

NUMBERED = "".join(f"word{index:03d} " for index in range(40))  # 320 characters
#: "word", then "000 word", "001 word", ...: no piece ends where a word does
STRADDLING = [NUMBERED[:4], *(NUMBERED[i : i + 8] for i in range(4, len(NUMBERED), 8))]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
@pytest.mark.parametrize("api", APIS)
async def test_a_window_ends_at_a_word_boundary(proxy: Proxy, api: str) -> None:
    resume = asyncio.Event()
    proxy.upstream.replies.append(Reply(content=NUMBERED, chunks=STRADDLING,
                                        pause=(b"024 word", resume)))
    reader = Reader(proxy, api)
    await wait_until(lambda: _paused(proxy)
                     and len(response_checks(proxy)) == 1)
    covered = response_checks(proxy)[0]
    assert covered.endswith("word")  # the check ended inside a word: "word" + "024 "
    await wait_until(lambda: reader.seen.text != "")
    assert reader.seen.text == covered.removesuffix("word")  # the half-written word waits
    resume.set()
    assert (await reader.done()).text == NUMBERED


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
async def test_text_without_spaces_ends_where_the_check_ended(proxy: Proxy) -> None:
    text = "".join(chr(0x4E00 + index) for index in range(360))  # ideographs, no spaces
    pieces = _pieces(text, 5)
    resume = asyncio.Event()
    proxy.upstream.replies.append(Reply(content=text, chunks=pieces,
                                        pause=(pieces[40].encode(), resume)))
    reader = Reader(proxy, "chat")
    await wait_until(lambda: _paused(proxy)
                     and len(response_checks(proxy)) == 1)
    covered = response_checks(proxy)[0]
    await wait_until(lambda: reader.seen.text != "")
    assert reader.seen.text == covered
    resume.set()
    assert (await reader.done()).text == text
