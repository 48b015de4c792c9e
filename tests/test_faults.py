"""Faults on every side of the proxy: the guard, the upstream and the client.

Each fault must end in a well-formed answer the openai SDK can read (or an error it raises
as its documented ``APIError``), follow the tenant's ``on_guard_error``, and be named in the
request's log line.  Waiting is bounded by the configured timeouts, proven by the answer
arriving while the emulator would have hung forever.  Client disconnects run against
``guardproxy serve`` itself, as deployed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from clientview import read_stream
from emulators.guard import GuardEmulator, RecordedRequest
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, Proxy, wait_until, write_config
from openai_schema import validate
from structlog.testing import capture_logs

from proxy.config import BlockPolicy

MODEL = "gpt-4.1-mini"
ROOT = Path(__file__).resolve().parents[1]
ANSWER = "A perfectly ordinary answer."
BLOCKED = "Blocked by the strict policy."
# A fail-closed tenant's answer when the guard failed: not the policy's block message.
UNAVAILABLE = BlockPolicy().unavailable_message


def _body(text: str = "hello", *, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": text}]}


def _events(raw: bytes) -> list[Any]:
    """Every ``data:`` payload of a stream, which must end with exactly one ``[DONE]``."""
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]" and raw.endswith(b"\n\n")
    assert raw.count(b"data: [DONE]") == 1
    return [orjson.loads(b.removeprefix(b"data: ")) for b in blocks[:-1]]


@dataclass
class Answer:
    """What a client got, read the same way for whole and streamed answers."""

    status: int
    headers: Any
    text: str
    finish: str | None
    moderation: dict[str, Any]
    errors: list[dict[str, Any]]


def _read(status: int, headers: Any, raw: bytes, *, stream: bool) -> Answer:
    if not stream:
        body = orjson.loads(raw)
        validate("CreateChatCompletionResponse", body)
        choice = body["choices"][0]
        return Answer(status, headers, choice["message"]["content"], choice["finish_reason"],
                      body["moderation"], [])
    streamed = read_stream(raw)
    chunks = streamed.chunks
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    return Answer(status, headers, text, finishes[-1] if finishes else None,
                  streamed.moderation, streamed.errors)


async def _ask(proxy: Proxy, tenant: str, *, stream: bool) -> Answer:
    async with asyncio.timeout(10):  # a hung proxy fails here instead of hanging the suite
        status, headers, raw = await proxy.post(_body(stream=stream), tenant=tenant)
    return _read(status, headers, raw, stream=stream)


def _request_line(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    return line


def _checks(guard: GuardEmulator) -> list[RecordedRequest]:
    return [r for r in guard.requests if r.path == "/v1/chat/completions"]


# -- guard faults --------------------------------------------------------------------------

#: each fault, the kind the log line names, and a piece of the annotation's message
GUARD_FAULTS = {
    "refused": ("unreachable", "unreachable"),
    "http_500": ("http_error", "HTTP 500"),
    "garbage": ("unreadable", "unreadable"),
    "hang": ("timeout", "within 0.3s"),
    "reset": ("connection", "connection"),
}


# Only the hanging guard needs a short budget; every other fault shows at once, and a
# loaded machine must not turn it into a timeout.
FAULT_CASES = [pytest.param(fault, {"timeout": 0.3 if fault == "hang" else 30.0}, id=fault)
               for fault in GUARD_FAULTS]


async def _break_guard(guard: GuardEmulator, fault: str) -> None:
    if fault == "refused":
        await guard.close()  # nothing listens on its port any more
    else:
        guard.fault = fault  # type: ignore[assignment]


async def _with_response_fault(proxy: Proxy, tenant: str, fault: str, *, stream: bool
                               ) -> Answer:
    """The prompt check passes; the guard breaks while the upstream holds its answer."""
    gate = asyncio.Event()
    proxy.upstream.replies.append(Reply(content=ANSWER, gate=gate))
    task = asyncio.create_task(_ask(proxy, tenant, stream=stream))
    await wait_until(lambda: bool(proxy.upstream_chats()))
    await _break_guard(proxy.guard, fault)
    gate.set()
    return await task


async def _with_prompt_fault(proxy: Proxy, tenant: str, fault: str, *, stream: bool) -> Answer:
    proxy.upstream.replies.append(Reply(content=ANSWER))
    await _break_guard(proxy.guard, fault)
    return await _ask(proxy, tenant, stream=stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("fault", "proxy"), FAULT_CASES, indirect=["proxy"])
async def test_prompt_check_fault_fails_closed(proxy: Proxy, fault: str, stream: bool) -> None:
    with capture_logs() as logs:
        answer = await _with_prompt_fault(proxy, "strict", fault, stream=stream)
    kind, message = GUARD_FAULTS[fault]
    assert answer.status == 200 and answer.headers["x-guard-action"] == "block"
    assert answer.text == UNAVAILABLE and answer.finish == "content_filter"
    assert answer.moderation["input"]["code"] == "guard_unavailable"
    assert message in answer.moderation["input"]["message"]
    assert proxy.upstream_chats() == []
    line = _request_line(logs)
    assert line["input"].items() >= {
        "error": "guard_unavailable", "kind": kind, "action": "block"}.items()
    assert line["action"] == "block" and line["guard_calls"] == 1
    await _abandoned_if_hung(proxy.guard, fault)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("fault", "proxy"), FAULT_CASES, indirect=["proxy"])
async def test_prompt_check_fault_fails_open(proxy: Proxy, fault: str, stream: bool) -> None:
    with capture_logs() as logs:
        answer = await _with_prompt_fault(proxy, "lenient", fault, stream=stream)
    kind, message = GUARD_FAULTS[fault]
    assert answer.status == 200 and answer.headers["x-guard-action"] == "unchecked"
    assert answer.text == ANSWER and answer.finish == "stop"
    # the guard is still broken for the answer's check: both stages say so
    for stage in ("input", "output"):
        assert answer.moderation[stage]["code"] == "guard_unavailable"
        assert message in answer.moderation[stage]["message"]
    assert len(proxy.upstream_chats()) == 1
    line = _request_line(logs)
    for stage in ("input", "output"):
        assert line[stage].items() >= {
            "error": "guard_unavailable", "kind": kind, "action": "pass"}.items()
    assert line["action"] == "pass" and line["guard_calls"] == 2
    await _abandoned_if_hung(proxy.guard, fault)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("tenant", ["strict", "lenient"])
@pytest.mark.parametrize(("fault", "proxy"), FAULT_CASES, indirect=["proxy"])
async def test_response_check_fault_follows_the_policy(proxy: Proxy, fault: str, tenant: str,
                                                       stream: bool) -> None:
    with capture_logs() as logs:
        answer = await _with_response_fault(proxy, tenant, fault, stream=stream)
    kind, message = GUARD_FAULTS[fault]
    closed = tenant == "strict"
    assert answer.status == 200 and answer.headers["x-guard-action"] == "pass"
    assert answer.moderation["input"]["results"][0]["action"] == "pass"
    assert answer.moderation["output"]["code"] == "guard_unavailable"
    assert message in answer.moderation["output"]["message"]
    if closed:  # the unchecked answer never reaches the client
        assert answer.text == UNAVAILABLE and answer.finish == "content_filter"
    else:
        assert answer.text == ANSWER and answer.finish == "stop"
    line = _request_line(logs)
    action = "block" if closed else "pass"
    assert line["output"].items() >= {
        "error": "guard_unavailable", "kind": kind, "action": action}.items()
    assert line["input"]["action"] == "pass" and line["guard_calls"] == 2
    await _abandoned_if_hung(proxy.guard, fault)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_guard_outage_is_named_not_blamed_on_the_policy(proxy: Proxy,
                                                                 stream: bool) -> None:
    """Error style: a 503 ``guard_unavailable`` the client can retry, not a 400
    ``content_filter`` that says the prompt broke the rules."""
    proxy.guard.fault = "http_500"
    body = {"model": "gpt-4.1-mini", "stream": stream,
            "messages": [{"role": "user", "content": "a harmless haiku"}]}
    with capture_logs() as logs:
        status, headers, raw = await proxy.post(body, tenant="errors")
    answer = orjson.loads(raw)
    error = answer["error"]
    assert status == 503 and headers["Retry-After"] == "1"
    assert (error["code"], error["type"]) == ("guard_unavailable", "server_error")
    assert error["message"] == UNAVAILABLE and "Blocked" not in error["message"]
    assert error["moderation"]["input"]["code"] == "guard_unavailable"
    assert proxy.upstream_chats() == []
    assert _request_line(logs)["code"] == "guard_unavailable"


async def _abandoned_if_hung(guard: GuardEmulator, fault: str) -> None:
    """A hung guard call was given up: the proxy closed its connection (the emulator would
    have waited forever), so the answer above came within the guard's timeout."""
    if fault == "hang":
        hung = _checks(guard)[-1]
        await wait_until(lambda: hung.dropped)


async def test_readyz_names_a_refused_guard(proxy: Proxy) -> None:
    await proxy.guard.close()
    async with proxy.http.get(proxy.admin_url + "/readyz") as resp:
        body = await resp.json()
    assert resp.status == 503 and body["status"] == "unavailable"
    assert "unreachable" in body["reason"]


# -- upstream faults ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_upstream_refused_is_502_for_the_sdk(proxy: Proxy, stream: bool) -> None:
    await proxy.upstream.close()
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.client().chat.completions.create(**_body(stream=stream))
    assert caught.value.status_code == 502
    error = caught.value.response.json()
    validate("ErrorResponse", error)
    assert error["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("proxy", [{"upstream_timeout": 0.3}], indirect=True)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_upstream_silent_before_its_first_byte_is_504(proxy: Proxy, stream: bool) -> None:
    # the upstream would send nothing for an hour: the answer proves the wait was bounded
    proxy.upstream.replies.append(Reply(content=ANSWER, head_delay_s=3600))
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.client().chat.completions.create(**_body(stream=stream))
    assert caught.value.status_code == 504
    assert caught.value.response.json()["error"]["code"] == "upstream_timeout"
    (request,) = proxy.upstream_chats()
    await wait_until(lambda: request.cancelled)  # the proxy hung up on it


@pytest.mark.parametrize("proxy", [{"upstream_timeout": 0.3}], indirect=True)
async def test_upstream_silent_between_chunks_ends_in_band(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(chunks=["one ", "two ", "three"], delay_s=3600))
    status, _, raw = await proxy.post(_body(stream=True))
    answer = _read(status, {}, raw, stream=True)
    assert status == 200 and len(answer.errors) == 1
    assert set(answer.errors[0]) == {"message", "type", "param", "code", "moderation"}
    assert answer.errors[0]["code"] == "upstream_stream_error"
    assert answer.text == "" and answer.moderation["output"]["code"] == "not_checked"
    (request,) = proxy.upstream_chats()
    await wait_until(lambda: request.cancelled)


@pytest.mark.parametrize("proxy", [{"upstream_timeout": 0.3}], indirect=True)
async def test_sdk_raises_api_error_on_an_in_band_error(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(chunks=["one ", "two"], delay_s=3600))
    stream = await proxy.client().chat.completions.create(**_body(stream=True))
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "upstream" in caught.value.message


UPSTREAM_ERRORS = [
    # upstream status, what the client gets, the SDK's class
    (400, 400, openai.BadRequestError),
    (429, 429, openai.RateLimitError),
    (500, 502, openai.InternalServerError),
    (503, 503, openai.InternalServerError),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("status", "sent", "kind"), UPSTREAM_ERRORS)
async def test_upstream_http_error_keeps_its_status_not_its_body(
        proxy: Proxy, status: int, sent: int, kind: type[openai.APIStatusError],
        stream: bool) -> None:
    error = {"error": {"message": f"upstream says {status}", "type": "server_error",
                       "param": None, "code": f"e{status}"}, "extra": "never relayed"}
    proxy.upstream.replies.append(Reply(status=status, error_body=error))
    with pytest.raises(kind) as caught:
        await proxy.client().chat.completions.create(**_body(stream=stream))
    assert caught.value.status_code == sent
    body = orjson.loads(caught.value.response.content)
    # the proxy's own words, type and code: the upstream's never reach the client
    said, error_type, code = {
        400: ("the upstream refused the request", "invalid_request_error", "upstream_400"),
        429: ("", "rate_limit_error", "rate_limit_exceeded"),
        500: ("the upstream failed", "upstream_error", "upstream_500"),
        503: ("the upstream failed", "upstream_error", "upstream_503")}[status]
    said = (f"{said}; its own message is not shown" if said
            else "the upstream's rate limit was reached; retry later")
    assert body == {"error": {"message": f"upstream error (HTTP {status}): {said}",
                              "type": error_type, "param": None, "code": code}}


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
async def test_stream_cut_midway_ends_well_formed(proxy: Proxy) -> None:
    words = [f"word{n} " for n in range(80)]  # 480 characters: windows pass before the cut
    proxy.upstream.replies.append(Reply(chunks=words, delay_s=0.002, drop_after_events=60))
    status, _, raw = await proxy.post(_body(stream=True))
    answer = _read(status, {}, raw, stream=True)
    assert status == 200 and [e["code"] for e in answer.errors] == ["upstream_stream_error"]
    assert "".join(words).startswith(answer.text)  # what was released, if anything, stands
    assert answer.finish is None and answer.moderation["output"]["code"] == "not_checked"
    if proxy.stream == "buffer":
        assert answer.text == ""


async def test_sdk_raises_api_error_on_a_cut_stream(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="one two three four", drop_after_events=2))
    stream = await proxy.client().chat.completions.create(**_body(stream=True))
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_whole_answer_cut_midway_is_502(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content=ANSWER, cut_body=True))
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.client().chat.completions.create(**_body())
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_unreachable"


# -- slow readers ----------------------------------------------------------------------------

PIECE = "x" * 65536
PIECES = 1024  # 64 MiB of text: far more than the sockets between the three can hold


async def _raw_request(url: str, body: dict[str, Any], tenant: str, *, rcvbuf: int = 0
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP/1.1 request on a socket of our own (``rcvbuf``: a small receive buffer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf or 2**16)
    data = orjson.dumps(body)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEYS[tenant]}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data)
    await writer.drain()
    return reader, writer


async def _stalled(read: Any) -> int:
    """Wait until ``read()`` stops growing (unchanged over 50 looks, 10 ms apart); its value."""
    last, same = -1, 0
    while same < 50:
        await asyncio.sleep(0.01)
        now = read()
        same = same + 1 if now == last else 0
        last = now
    return int(last)


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    received = bytearray()
    while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the chunked body
        piece = await reader.read(1 << 20)
        assert piece, "the proxy closed the stream early"
        received += piece
    return bytes(received)


async def test_a_slow_reader_holds_back_the_upstream(proxy: Proxy) -> None:
    # "audited" relays the stream as it arrives (no response check): only backpressure can
    # stop the upstream from pushing all 32 MiB into the proxy
    proxy.upstream.replies.append(Reply(chunks=[PIECE] * PIECES))
    reader, writer = await _raw_request(proxy.url, _body("tell me", stream=True), "audited",
                                        rcvbuf=4096)
    try:
        await wait_until(lambda: bool(proxy.upstream_chats()))
        (request,) = proxy.upstream_chats()
        stalled_at = await _stalled(lambda: request.bytes_sent)
        assert not request.completed
        assert stalled_at < len(PIECE) * PIECES // 2
        received = await _read_to_end(reader)  # reading again lets the rest through
    finally:
        writer.close()
    assert received.count(PIECE.encode()) == PIECES and b"data: [DONE]" in received
    assert request.completed


# -- client faults, against ``guardproxy serve`` ------------------------------------------------


@dataclass
class Served:
    url: str
    process: asyncio.subprocess.Process

    async def output(self) -> list[dict[str, Any]]:
        """Stop the proxy; its log lines."""
        assert self.process.stdout is not None
        self.process.terminate()
        out = await asyncio.wait_for(self.process.stdout.read(), timeout=20)
        await self.process.wait()
        return [orjson.loads(line) for line in out.splitlines()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def served(tmp_path: Path, guard_emulator: GuardEmulator,
                 upstream_emulator: UpstreamEmulator) -> AsyncIterator[Served]:
    """``guardproxy serve`` in window mode, guard timeout 30 s, before both emulators."""
    upstream_emulator.api_key = UPSTREAM_KEY
    config = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url,
                          stream="window", timeout=30)
    port = _free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": UPSTREAM_KEY}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    started = orjson.loads(await asyncio.wait_for(process.stdout.readline(), timeout=20))
    assert started["event"] == "listening"
    await _until_listening(port)
    try:
        yield Served(f"http://127.0.0.1:{port}", process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _until_listening(port: int) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def _hang_up(writer: asyncio.StreamWriter) -> float:
    writer.close()
    return time.monotonic()


def _response_checks(guard: GuardEmulator) -> list[RecordedRequest]:
    """Checks of an answer: their conversation has an assistant turn (read from the request,
    since a hung check never gets as far as rendering its prompt).  The final assistant
    message of a request that continues it is the start of the guard's answer, not a turn."""
    def judged(body: dict[str, Any]) -> list[dict[str, Any]]:
        return body["messages"][:-1] if body.get("continue_final_message") else body["messages"]

    return [r for r in _checks(guard)
            if any(m.get("role") == "assistant" for m in judged(r.body))]


async def test_disconnect_during_a_window_check_cancels_upstream_and_guard(
        served: Served, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    upstream_emulator.replies.append(Reply(chunks=["word "] * 400, delay_s=0.02))
    reader, writer = await _raw_request(served.url, _body(stream=True), "strict")
    await wait_until(lambda: bool(upstream_emulator.requests))
    guard_emulator.fault = "hang"  # the prompt passed; the first window check never answers
    await reader.readuntil(b"\r\n\r\n")  # the stream's head arrived
    await wait_until(lambda: bool(_response_checks(guard_emulator)))
    hung_up = await _hang_up(writer)
    (upstream,), (check,) = upstream_emulator.requests, _response_checks(guard_emulator)
    await wait_until(lambda: upstream.cancelled and check.dropped)
    assert not upstream.completed
    assert upstream.cancelled_at is not None and upstream.cancelled_at >= hung_up
    lines = await served.output()
    (line,) = [entry for entry in lines if entry["event"] == "request"]
    assert line["status"] == 499


async def test_disconnect_during_the_prompt_check_never_calls_the_upstream(
        served: Served, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    guard_emulator.fault = "hang"
    # lenient fails open: had the proxy waited out the guard, the upstream would be called
    reader, writer = await _raw_request(served.url, _body(stream=True), "lenient")
    await wait_until(lambda: bool(_checks(guard_emulator)))
    await _hang_up(writer)
    (check,) = _checks(guard_emulator)
    await wait_until(lambda: check.dropped)
    assert upstream_emulator.requests == []
    lines = await served.output()
    (line,) = [entry for entry in lines if entry["event"] == "request"]
    assert line["status"] == 499 and upstream_emulator.requests == []
    del reader
