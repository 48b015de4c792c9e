"""Hostile input: whatever a client (or an upstream) sends, the answer is a 4xx in OpenAI's
shape (or, mid-stream, an in-band error and ``[DONE]``), never a 500, and nothing reaches
the guard or the upstream unchecked.  ``test_http`` covers the everyday malformed bodies."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
from emulators.upstream import Reply
from harness import Proxy
from openai_schema import validate
from yarl import URL

from proxy.core.sse import DEFAULT_MAX_EVENT_BYTES

ONE = b'[{"role":"user","content":"x"}]'


def _with(extra: bytes) -> bytes:
    return b'{"model":"m","messages":' + ONE + extra + b"}"


def _error(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    validate("ErrorResponse", data)
    error: dict[str, Any] = data["error"]
    return error


def _nothing_sent(proxy: Proxy) -> bool:
    return proxy.guard.requests == [] and proxy.upstream_chats() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # -- not UTF-8, or text that cannot be encoded again ---------------------------------
        (b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}', None),
        (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}', None),
        (b'{"model":"m\\udc00","messages":' + ONE + b"}", None),
        (b'\xef\xbb\xbf{"model":"m","messages":' + ONE + b"}", None),  # a BOM
        # -- not one JSON object --------------------------------------------------------------
        (b"", None),
        (b"null", None),
        (b'"a string"', None),
        (_with(b"} trailing"), None),
        (_with(b',"x":NaN'), None),
        # -- nested deeper than anything the proxy reads, or than the parser allows ----------
        (b'{"model":"m","messages":[{"role":"user","content":' + b"[" * 600 + b"]" * 600 + b"}]}",
         "messages[0].content[0]"),
        (_with(b',"x":' + b'{"a":' * 1100 + b"1" + b"}" * 1100), None),
        # -- wrong types and missing fields -----------------------------------------------------
        (b'{"model":null,"messages":' + ONE + b"}", "model"),
        (b'{"model":["m"],"messages":' + ONE + b"}", "model"),
        (b'{"model":"m","messages":{"role":"user"}}', "messages"),
        (b'{"model":"m","messages":[null]}', "messages[0]"),
        (b'{"model":"m","messages":[{"content":"x"}]}', "messages[0]"),
        (b'{"model":"m","messages":[{"role":5,"content":"x"}]}', "messages[0]"),
        (b'{"model":"m","messages":[{"role":{},"content":"x"}]}', "messages[0]"),
        (b'{"model":"m","messages":[{"role":["user"],"content":"x"}]}', "messages[0]"),
        (b'{"model":"m","messages":[{"role":"user","content":{}}]}', "messages[0].content"),
        (b'{"model":"m","messages":[{"role":"system"}]}', "messages[0]"),
        (b'{"model":"m","messages":[{"role":"user","content":[{"type":5}]}]}',
         "messages[0].content[0]"),
        (b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":null}]}]}',
         "messages[0].content[0]"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"},'
         b'{"role":"assistant","content":[{"type":"refusal","refusal":5}]}]}',
         "messages[1].content[0]"),
        (b'{"model":"m","messages":[{"role":"tool","content":5}]}', "messages[0].content"),
        (_with(b',"n":"2"'), "n"),
        (_with(b',"n":0'), "n"),
        (_with(b',"n":1.5'), "n"),
        (_with(b',"n":true'), "n"),
        (_with(b',"n":100000000000000000000000'), "n"),  # beyond 64 bits
        (_with(b',"stream":1'), "stream"),
        (_with(b',"stream_options":{"include_usage":"yes"}'), "stream_options.include_usage"),
        # -- a key twice in one object: parsers disagree on which copy wins --------------------
        (b'{"model":"m","messages":[{"role":"user","content":"bomb"}],'
         b'"messages":[{"role":"user","content":"hi"}]}', "messages"),
        (b'{"model":"gpt-5","model" : "gpt-4.1-mini","messages":' + ONE + b"}", "model"),
        (b'{"model":"m","messages":[{"role":"user","content":"bomb","content":"hi"}]}',
         "content"),
    ],
)
async def test_hostile_bodies_are_400_and_go_nowhere(proxy: Proxy, body: bytes,
                                                     param: str | None) -> None:
    status, _, answer = await proxy.post(body)
    assert status == 400
    error = _error(answer)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert _nothing_sent(proxy)


@pytest.mark.parametrize(
    "body",
    [
        # unknown fields pass through, however deep (within the parser's limit)
        _with(b',"metadata":' + b'{"a":' * 900 + b"1" + b"}" * 900),
        # quotes and colons inside strings take the slow path of the repeated-key test
        b'{"model":"m","messages":[{"role":"user","content":"say \\"a\\": 1, \\"a\\" :2"}]}',
        # a key repeated in *different* objects is fine
        b'{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}',
    ],
)
async def test_odd_but_valid_bodies_are_checked_and_forwarded(proxy: Proxy,
                                                              body: bytes) -> None:
    status, _, _ = await proxy.post(body)
    assert status == 200
    (chat,) = proxy.upstream_chats()
    assert chat.body == orjson.loads(body)
    assert len(proxy.guard.requests) == 2  # the prompt and the answer were both checked


@pytest.mark.parametrize("proxy", [{"max_body": 1 << 20}], indirect=True)
async def test_thousands_of_messages_are_checked_and_served(proxy: Proxy) -> None:
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"m{n}"}
                for n in range(4001)]
    status, headers, _ = await proxy.post({"model": "m", "messages": messages})
    assert status == 200 and headers["x-guard-action"] == "pass"
    prompt = proxy.guard.requests[0].body["messages"]
    assert prompt[-1] == {"role": "assistant", "content": "Safety:"}  # the answer's start
    assert prompt[-2] == {"role": "user", "content": "m4000"}  # judged, with what context fits
    assert len(proxy.upstream_chats()[0].body["messages"]) == 4001


# -- raw HTTP -------------------------------------------------------------------------------


async def _raw(proxy: Proxy, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send a request as bytes; the status, the head and the body of the answer."""
    url = URL(proxy.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                     b"Authorization: Bearer sk-strict\r\nConnection: close\r\n" + head
                     + b"\r\n" + body)
        await writer.drain()
        answer_head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer_head)
        # Read by the answer's length: the server may linger before closing the connection.
        answer_body = await reader.readexactly(int(length[1])) if length else await reader.read()
    finally:
        writer.close()
    return int(answer_head.split(b" ")[1]), answer_head, answer_body


async def test_a_declared_length_over_the_limit_is_413_before_any_body(proxy: Proxy) -> None:
    status, _, body = await _raw(proxy, b"Content-Length: 1000000000000\r\n")
    assert status == 413 and _error(body)["code"] == "request_too_large"
    assert _nothing_sent(proxy)


BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
LENGTH = b"Content-Length: %d\r\n" % len(BODY)


@pytest.mark.parametrize(
    "header",
    [
        b"x-request-id: abc\r\n injected: yes\r\n",  # obsolete line folding
        b"x-request-id: abc\rinjected: yes\r\n",
        b"x-request-id: abc\ninjected: yes\r\n",
        b"x-request-id: a\x00b\r\n",
        b"Transfer-Encoding: chunked\r\n",  # both framings at once: a smuggling attempt
        b"X-Big: " + b"a" * 20000 + b"\r\n",
    ],
)
async def test_broken_framing_is_400_and_goes_nowhere(proxy: Proxy, header: bytes) -> None:
    # The HTTP parser refuses these before the app runs; the answer is still OpenAI's shape.
    status, head, body = await _raw(proxy, header + LENGTH, BODY)
    assert status == 400
    assert b"injected" not in head.lower()
    assert b"content-type: application/json" in head.lower()
    assert _error(body)["code"] == "bad_http_request"
    assert _nothing_sent(proxy)


async def test_a_request_id_that_is_not_text_is_replaced(proxy: Proxy) -> None:
    status, head, _ = await _raw(proxy, b"x-request-id: \xff\xfe\x80\r\n" + LENGTH, BODY)
    assert status == 200
    sent = proxy.upstream_chats()[0].headers["X-Request-Id"]
    assert len(sent) == 32 and sent.isalnum()
    assert b"x-request-id: " + sent.encode() + b"\r\n" in head


# -- a hostile upstream ---------------------------------------------------------------------


async def test_an_oversized_upstream_event_ends_the_stream_cleanly(proxy: Proxy) -> None:
    huge = "x" * (DEFAULT_MAX_EVENT_BYTES + 1000)
    proxy.upstream.replies.append(Reply(content=huge, chunks=[huge]))
    status, _, raw = await proxy.post({"model": "m", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert raw.endswith(b"\n\ndata: [DONE]\n\n") and b"xxxxxxxx" not in raw
    events = [orjson.loads(block.removeprefix(b"data: ")) for block in raw.split(b"\n\n")
              if block and block != b"data: [DONE]"]
    errors = [event for event in events if "error" in event]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "upstream_stream_error"
    validate("ErrorResponse", errors[0])
    assert events[-1] is errors[0]  # the last event: the verdict inside the error
    assert errors[0]["error"]["moderation"]["output"]["type"] == "error"
