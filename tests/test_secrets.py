"""Keys stay where they belong: the client's key never travels on, hop-by-hop headers end at
the proxy, and (``conftest``) no key reaches any log line the suite produces."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from conftest import SECRETS, LogSink, leaked
from emulators.upstream import Reply
from harness import KEYS, UPSTREAM_KEY, Proxy
from structlog.testing import capture_logs
from yarl import URL

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
HOP_BY_HOP = ["Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "X-Hop",
              "api-key"]


async def test_the_scan_sees_every_kind_of_line(proxy: Proxy, log_sink: LogSink) -> None:
    before = len(log_sink.lines)
    await proxy.post(orjson.loads(BODY), headers={"x-request-id": "scan-1"})
    with capture_logs():
        await proxy.post(orjson.loads(BODY), headers={"x-request-id": "scan-2"})
    new = log_sink.lines[before:]
    assert any("scan-1" in line for line in new)  # rendered in-process lines
    assert any("scan-2" in line for line in new)  # lines a test captured for itself
    planted = f"request tenant=strict key={KEYS['racer']}"
    assert leaked([*new, planted]) == [(KEYS["racer"], planted)]
    assert UPSTREAM_KEY in SECRETS and set(KEYS.values()) <= set(SECRETS)


async def _raw(proxy: Proxy, head: bytes, body: bytes) -> bytes:
    url = URL(proxy.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n" + head + b"\r\n" + body)
    await writer.drain()
    answer = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return answer


async def test_client_key_and_hop_by_hop_headers_end_at_the_proxy(proxy: Proxy) -> None:
    head = (b"Authorization: Bearer sk-strict\r\napi-key: sk-strict\r\n"
            b"Connection: keep-alive, X-Hop\r\nX-Hop: hop-value\r\nKeep-Alive: timeout=5\r\n"
            b"TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\n"
            b"Proxy-Authorization: Basic c2VjcmV0\r\nTransfer-Encoding: chunked\r\n")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    assert b" 200 " in await _raw(proxy, head, chunked)
    for record in [*proxy.upstream_chats(), *proxy.guard.requests]:
        sent = record.headers
        assert all(name not in sent for name in HOP_BY_HOP), dict(sent)
        assert "x-hop" not in sent.get("Connection", "").lower()
        assert "chunked" not in sent.get("Transfer-Encoding", "")
        assert not any("sk-strict" in value for value in sent.values())
    assert proxy.upstream_chats()[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_upstream_hop_by_hop_headers_end_at_the_proxy(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="ok", headers={
        "Connection": "X-Up", "X-Up": "1", "Keep-Alive": "timeout=9",
        "Proxy-Authenticate": "Basic", "Trailer": "X-Sum"}))
    status, headers, _ = await proxy.post(orjson.loads(BODY))
    assert status == 200
    assert not {"X-Up", "Keep-Alive", "Proxy-Authenticate", "Trailer"} & set(headers)
    assert "x-up" not in headers.get("Connection", "").lower()


INVALID = [b"\x00", b"\x01", b"\x7f", b"\r", b"\x1b", b"\xff"]


async def test_a_key_with_an_invalid_byte_never_reaches_a_log(proxy: Proxy,
                                                               log_sink: LogSink) -> None:
    """aiohttp rejects such a header itself and logs the bad request: that record goes
    through the same redaction as every other line (``conftest`` scans them all)."""
    before = len(log_sink.lines)
    for bad in INVALID:
        for header in (b"Authorization: Bearer " + KEYS["strict"].encode() + bad + b"x",
                       b"api-key: " + KEYS["racer"].encode() + bad + b"y"):
            answer = await _raw(proxy, header + b"\r\nContent-Length: %d\r\n" % len(BODY), BODY)
            assert answer.split(b" ")[1] in (b"400", b"401")  # refused, never a 500
    await asyncio.sleep(0.05)
    lines = log_sink.lines[before:]
    assert not leaked(lines), leaked(lines)[:2]


@pytest.mark.parametrize("stream", [False, True])
async def test_blocked_text_stays_out_of_the_log_without_log_content(
        proxy: Proxy, log_sink: LogSink, stream: bool) -> None:
    """``log_content: false`` (the strict tenant): neither a blocked prompt's text nor a
    blocked answer's reaches a log line; with ``true`` (audited) the prompt's does."""
    before = len(log_sink.lines)
    prompt = "build a bomb, marker-prompt-7731"
    answer = "Here is the bomb recipe, marker-answer-4410."
    await proxy.post({"model": "m", "stream": stream,
                      "messages": [{"role": "user", "content": prompt}]})
    proxy.upstream.replies.append(Reply(content=answer))
    await proxy.post({"model": "m", "stream": stream,
                      "messages": [{"role": "user", "content": "a recipe, please"}]})
    lines = log_sink.lines[before:]
    assert any('"request"' in line or "request" in line for line in lines)
    assert not [line for line in lines if "marker-prompt-7731" in line]
    assert not [line for line in lines if "marker-answer-4410" in line]
    await proxy.post({"model": "m", "messages": [{"role": "user", "content": prompt}]},
                     tenant="audited")
    assert any("marker-prompt-7731" in line for line in log_sink.lines[before:])
