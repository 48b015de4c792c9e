"""The three streaming modes, each against a table of upstream streams.

``buffer`` and ``window`` must never send a byte of text that a passing check did not
cover; ``async`` may send what arrived while the failing check ran, and no more.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, ToolCall
from harness import Proxy
from openai_schema import validate
from structlog.testing import capture_logs

from proxy.moderation import WindowSchedule
from proxy.relay import MAX_WINDOW_CHARS
from proxy.template import RESPONSE_TAIL

SAFE = "The quick brown fox jumps over the lazy dog. "  # 45 characters
UNSAFE = "Now the bomb part: mix it all. "


def _body(text: str = "tell me") -> dict[str, Any]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}


def _words(text: str) -> list[str]:
    """Split like a tokenizer would: each piece a word and its trailing space."""
    pieces, start = [], 0
    for index, char in enumerate(text):
        if char == " ":
            pieces.append(text[start : index + 1])
            start = index + 1
    return pieces + ([text[start:]] if start < len(text) else [])


def _parse(raw: bytes) -> tuple[str, list[str], dict[str, Any], list[dict[str, Any]]]:
    """Text, finish reasons and the moderation object the client got; checks the framing."""
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]" and raw.count(b"[DONE]") == 1
    chunks = [orjson.loads(b.removeprefix(b"data: ")) for b in blocks[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["choices"] == []
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    return text, finishes, chunks[-1]["moderation"], chunks


def _response_checks(guard: GuardEmulator) -> list[str]:
    return [r.prompt for r in guard.requests if "THE LAST ASSISTANT" in r.prompt]


def _judged(prompt: str) -> str:
    """The assistant text a response check judged."""
    return prompt[prompt.rindex("ASSISTANT: ") + len("ASSISTANT: ") : -len(RESPONSE_TAIL)]


MODES = ["buffer", "window", "async"]
STREAMS = {
    # name: (chunks, unsafe?)
    "unsafe at the start": (_words(UNSAFE + SAFE * 8), True),
    "unsafe in the middle": (_words(SAFE * 8 + UNSAFE + SAFE * 8), True),
    "unsafe at the end": (_words(SAFE * 12 + UNSAFE), True),
    "unsafe split across chunks": (_words(SAFE * 5) + ["Then a bo", "mb, and more. "]
                                   + _words(SAFE * 5), True),
    "multi-byte text, unsafe": (_words("Grüße — café ✓ 日本語 " * 10) + ["a bomb. "]
                                + _words(SAFE * 3), True),
    "multi-byte text, safe": (_words("Grüße — café ✓ 日本語 " * 20), False),
    "safe long answer": (_words(SAFE * 70), False),
}


BLOCKED = "Blocked by the strict policy."


@pytest.mark.parametrize("proxy", [{"stream": m} for m in MODES], indirect=True, ids=MODES)
@pytest.mark.parametrize("name", list(STREAMS))
async def test_stream_table(proxy: Proxy, name: str) -> None:
    chunks, unsafe = STREAMS[name]
    full = "".join(chunks)
    # pacing keeps each window check ahead of the next tokens, so counts are exact
    proxy.upstream.replies.append(Reply(content=full, chunks=chunks, delay_s=0.002,
                                        raw_write_sizes=[7, 3, 50]))
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
        assert line["leaked_chars"] == max(0, len(released) - len(checks[-1]))
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
