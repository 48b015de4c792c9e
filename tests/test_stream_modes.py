"""The three streaming modes, each against a table of upstream streams.

``buffer`` and ``window`` must never send a byte of text that a passing check did not
cover; ``async`` may send what arrived while the failing check ran, and no more.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from clientview import read_stream
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, ToolCall
from harness import Proxy, wait_until, words
from structlog.testing import capture_logs

from proxy.core.ledger import MAX_WINDOW_CHARS, WindowSchedule
from proxy.core.template import RESPONSE_TAIL

SAFE = "The quick brown fox jumps over the lazy dog. "  # 45 characters
UNSAFE = "Now the bomb part: mix it all. "


def _body(text: str = "tell me") -> dict[str, Any]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}


def _parse(raw: bytes) -> tuple[str, list[str], dict[str, Any], list[dict[str, Any]]]:
    """Text, finish reasons and the moderation object the client got; checks the framing."""
    streamed = read_stream(raw)
    chunks = streamed.chunks
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    return text, finishes, streamed.moderation, chunks


def _response_checks(guard: GuardEmulator) -> list[str]:
    """The renders of the response checks (a flagged one's continuation is the same check)."""
    return [r.render for r in guard.requests
            if r.render and r.starts_check and "THE LAST ASSISTANT" in r.render]


def _judged(prompt: str) -> str:
    """The assistant text a response check judged."""
    return prompt[prompt.rindex("ASSISTANT: ") + len("ASSISTANT: ") : -len(RESPONSE_TAIL)]


MODES = ["buffer", "window", "async"]
STREAMS = {
    # name: (chunks, unsafe?)
    "unsafe at the start": (words(UNSAFE + SAFE * 8), True),
    "unsafe in the middle": (words(SAFE * 8 + UNSAFE + SAFE * 8), True),
    "unsafe at the end": (words(SAFE * 12 + UNSAFE), True),
    "unsafe split across chunks": (
        [*words(SAFE * 5), "Then a bo", "mb, and more. ", *words(SAFE * 5)], True),
    "multi-byte text, unsafe": (
        [*words("Grüße — café ✓ 日本語 " * 10), "a bomb. ", *words(SAFE * 3)], True),
    "multi-byte text, safe": (words("Grüße — café ✓ 日本語 " * 20), False),
    "safe long answer": (words(SAFE * 50), False),
}


BLOCKED = "Blocked by the strict policy."


@pytest.mark.parametrize("proxy", [{"stream": m} for m in MODES], indirect=True, ids=MODES)
@pytest.mark.parametrize("name", list(STREAMS))
async def test_stream_table(proxy: Proxy, name: str) -> None:
    chunks, unsafe = STREAMS[name]
    full = "".join(chunks)
    # pacing keeps each window check ahead of the next tokens, so counts are exact
    proxy.upstream.replies.append(Reply(content=full, chunks=chunks, delay_s=0.002,
                                        raw_write_sizes=[7, 3, 400]))
    with capture_logs() as logs:
        _, _, raw = await proxy.post(_body())
    text, finishes, moderation, _ = _parse(raw)
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    checks = [_judged(prompt) for prompt in _response_checks(proxy.guard)]
    if not unsafe or proxy.stream == "buffer":
        assert checks[-1] == full  # the complete answer is always checked at the end
    if not unsafe:
        assert text == full and finishes == ["stop"]
        assert moderation["output"]["results"][0]["action"] == "pass"
        assert line["guard_calls"] == 1 + _expected_checks(proxy.stream, chunks)
        return
    assert finishes == ["content_filter"]
    assert moderation["output"]["results"][0]["action"] == "block"
    released = "" if text == BLOCKED else text
    assert full.startswith(released)
    if proxy.stream == "async":
        # every character sent before a passing check covered it counts; only the last
        # passing check's text can have been covered when it went out
        passed = len(checks[-2]) if len(checks) > 1 else 0
        assert len(released) - passed <= line["leaked_chars"] <= len(released)
        assert line["leaked_chars"] > 0 and "bomb" in released
        assert moderation["output"]["leaked_chars"] == line["leaked_chars"]
    else:
        # only text that an earlier, passing check covered ever reaches the client
        passed = checks[-2] if len(checks) > 1 else ""
        assert len(released) <= len(passed) and "bomb" not in released
        assert raw.count(b"bomb") == 0


def _expected_checks(mode: str, chunks: list[str]) -> int:
    """Response checks for a paced stream: the schedule's windows, then the final one
    unless the last window already covered the whole answer."""
    if mode == "buffer":
        return 1
    schedule = WindowSchedule(first=160, cap=MAX_WINDOW_CHARS)
    length, windows, covered = 0, 0, -1
    for chunk in chunks:
        length += len(chunk)
        if schedule.due(length):
            schedule.checked(length)
            windows, covered = windows + 1, length
    return windows + (covered != length)


# -- prefix-stable guard requests ----------------------------------------------------------


@pytest.mark.parametrize("proxy", [{"stream": "window", "api": "chat"},
                                   {"stream": "window", "api": "generate"}],
                         indirect=True, ids=["chat", "generate"])
async def test_each_check_extends_the_last_one(proxy: Proxy) -> None:
    chunks = words(SAFE * 40)
    proxy.upstream.replies.append(Reply(content="".join(chunks), chunks=chunks, delay_s=0.002))
    await proxy.post(_body("a question"))
    prompts = _response_checks(proxy.guard)
    assert len(prompts) >= 3
    for earlier, later in itertools.pairwise(prompts):
        # everything before the template's closing text is a prefix of the next check
        assert later.startswith(earlier[: -len(RESPONSE_TAIL)])
    bodies = [r.body for r in proxy.guard.requests if r.path != "/health"][1:]
    if "messages" in bodies[0]:  # chat: the same messages, only the judged answer grows
        # (it is followed by the empty tool message and the answer's start, "Safety:")
        assert all(b["messages"][:-3] == bodies[0]["messages"][:-3] for b in bodies)
        assert all(b["messages"][-2:] == bodies[0]["messages"][-2:] for b in bodies)
        assert all(b.keys() == bodies[0].keys() for b in bodies)


# -- what the client sees, and when ----------------------------------------------------------


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
async def test_window_text_arrives_before_a_slow_upstream_finishes(proxy: Proxy) -> None:
    chunks = words(SAFE * 20)  # 900 characters, 180 tokens
    proxy.upstream.replies.append(Reply(content="".join(chunks), chunks=chunks, delay_s=0.01))
    headers = {"Authorization": "Bearer sk-strict"}
    upstream_done_when_text_came: bool | None = None
    received = b""
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=_body(),
                               headers=headers) as resp:
        async for piece in resp.content.iter_any():
            if upstream_done_when_text_came is None and b'"content":"The' in piece:
                upstream_done_when_text_came = proxy.upstream.requests[-1].completed
            received += piece
    assert upstream_done_when_text_came is False
    assert _parse(received)[0] == "".join(chunks)


@pytest.mark.parametrize("proxy", [{"stream": "window"}, {"stream": "async"}], indirect=True,
                         ids=["window", "async"])
async def test_tool_calls_wait_for_the_final_check(proxy: Proxy) -> None:
    call = ToolCall(name="lookup", arguments='{"q": "' + "x" * 300 + '"}')
    proxy.upstream.replies.append(Reply(content=SAFE * 5, tool_calls=[call], delay_s=0.002))
    headers = {"Authorization": "Bearer sk-strict"}
    first_tool_byte_at, final_check_at = None, None
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=_body(),
                               headers=headers) as resp:
        async for piece in resp.content.iter_any():
            if first_tool_byte_at is None and b"tool_calls" in piece:
                first_tool_byte_at = len(_response_checks(proxy.guard))
    final_check_at = len(_response_checks(proxy.guard))
    # no tool-call delta went out before the last (complete) response check was made
    assert first_tool_byte_at == final_check_at
    assert 'lookup({"q": "' in _judged(_response_checks(proxy.guard)[-1])


@pytest.mark.parametrize("proxy", [{"stream": "window"}, {"stream": "async"}], indirect=True,
                         ids=["window", "async"])
async def test_unsafe_tool_call_never_goes_out(proxy: Proxy) -> None:
    call = ToolCall(name="order", arguments='{"item": "a bomb kit"}')
    proxy.upstream.replies.append(Reply(content=SAFE * 5, tool_calls=[call], delay_s=0.002))
    _, _, raw = await proxy.post(_body())
    text, finishes, _, _ = _parse(raw)
    assert b"tool_calls" not in raw and b"bomb" not in raw
    assert finishes == ["content_filter"]
    assert text == BLOCKED or (SAFE * 5).startswith(text)
    if proxy.stream == "async":
        assert text == SAFE * 5  # the text went out at once; only the tool call was held


@pytest.mark.parametrize("proxy", [{"stream": "async"}], indirect=True)
async def test_async_leak_is_what_arrived_while_the_check_ran(proxy: Proxy) -> None:
    # A guard that takes 300 ms against tokens every 100 ms: the failing check runs
    # while about three more tokens arrive, and those are what leaks.
    proxy.guard.latency_s = 0.3
    chunks = ["aaaa " * 10, "bbbb " * 10, "cccc " * 10, "Now a bomb. "] + ["dddd "] * 20
    proxy.upstream.replies.append(Reply(content="".join(chunks), chunks=chunks, delay_s=0.1))
    with capture_logs() as logs:
        _, _, raw = await proxy.post(_body())
    text, finishes, _, _ = _parse(raw)
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    failing = _judged(_response_checks(proxy.guard)[-1])
    assert "bomb" in failing and finishes == ["content_filter"]
    # no check passed before the stream was cut: everything the client got leaked
    assert line["leaked_chars"] == len(text) > len(failing)
    # past the failing window, only whole tokens that arrived while it was judged
    assert all(piece == "dddd " for piece in words(text[len(failing):]))
    # the stream was cut, not run to its end: the proxy hung up on the upstream
    await wait_until(lambda: proxy.upstream.requests[-1].cancelled)
    assert not proxy.upstream.requests[-1].completed


async def test_window_schedule_grows_to_its_cap() -> None:
    schedule = WindowSchedule(first=100, cap=400)
    starts = []
    length = 0
    while length < 3000:
        length += 1
        if schedule.due(length):
            starts.append(length)
            schedule.checked(length)
    assert starts[:5] == [100, 300, 700, 1100, 1500]


async def test_buffer_schedule_is_never_due() -> None:
    assert not WindowSchedule.never().due(10**9)
    await asyncio.sleep(0)


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
async def test_time_to_first_token_is_when_text_went_out(proxy: Proxy) -> None:
    """``ttft_ms`` is the first byte of the answer the client got, not of the headers: in
    buffer mode the whole answer's time, in window mode the first window's."""
    pieces = words(SAFE * 6)  # 270 characters, a token every 10 ms: ~0.54 s in all
    proxy.upstream.replies.append(Reply(content="".join(pieces), chunks=pieces, delay_s=0.01))
    with capture_logs() as logs:
        await proxy.post(_body())
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    first_window = 10 * sum(1 for _ in itertools.takewhile(
        lambda n: n < 160, itertools.accumulate(len(w) for w in pieces)))
    floor = 10 * (len(pieces) - 1) if proxy.stream == "buffer" else first_window
    assert line["ttft_ms"] >= floor * 0.9
    assert line["ttft_ms"] <= line["total_ms"]
