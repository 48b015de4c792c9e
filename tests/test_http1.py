"""The guard's HTTP/1.1 client: response framing, bounds, and kept-alive connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import pytest
from harness import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clients import http1, http1wire
from proxy.clients.http1 import MAX_RESPONSE_BYTES, Origin
from proxy.clients.http1wire import Chunked, WholeReader
from proxy.errors import HTTPFormatError, StaleConnection, StreamCut

OK = b"HTTP/1.1 200 OK\r\n"


def _parse(raw: bytearray, *, eof: bool, split: int = 0) -> http1wire.Answer | None:
    """A whole answer read from ``raw`` (fed in ``split``-byte reads, or at once)."""
    reader = WholeReader(MAX_RESPONSE_BYTES)
    data, answer = bytes(raw), None
    for start in range(0, len(data), split or max(1, len(data))):
        answer = answer or reader.feed(data[start : start + (split or len(data))])
    if answer is None and eof:
        answer = reader.at_close()
    return answer


@pytest.mark.parametrize(
    ("raw", "eof", "answer"),
    [
        (OK + b"Content-Length: 2\r\n\r\nhi", False, (200, b"hi", True)),
        (OK + b"Content-Length: 4\r\n\r\nhi", False, None),  # not all there yet
        (OK + b"content-length: 0\r\nConnection: close\r\n\r\n", False, (200, b"", False)),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\nx", False, (500, b"x", True)),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=1\r\nllo\r\n0\r\n\r\n", False,
         (200, b"hello", True)),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nll", False, None),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n0\r\n", False, None),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", False, None),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", True, (200, b"until the end", False)),
        (OK + b"Content-Len", False, None),
        # the same length twice is one length
        (OK + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi", False, (200, b"hi", True)),
        # interim answers are skipped, the final one read
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nhi", False,
         (200, b"hi", True)),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
         False, (204, b"", True)),
        # no body, whatever the headers say
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, (204, b"", True)),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False, (304, b"", True)),
    ],
)
@pytest.mark.parametrize("split", [0, 1, 7])
def test_framing(raw: bytes, eof: bool, answer: tuple[int, bytes, bool] | None,
                 split: int) -> None:
    parsed = _parse(bytearray(raw), eof=eof, split=split)
    assert (parsed if parsed is None else parsed[:3]) == answer


@pytest.mark.parametrize("raw", [
    OK + b"Content-Length: 2\r\n\r\nhiEXTRA",
    OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nEXTRA",
])
def test_bytes_after_the_body_end_the_connections_use(raw: bytes) -> None:
    """Read with the body, they mean the framing is lost: the answer stands, the
    connection is not kept (arriving later, ``_Connection`` closes on them)."""
    assert _parse(bytearray(raw), eof=False) == (200, b"hi", False, "", b"")


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        OK + b"Content-Length: -1\r\n\r\n",
        OK + b"Content-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1),
        OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 " + b"x" * 70000,
        # what a library parser refuses, this one refuses too (RFC 9112 section 6)
        OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
        OK + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        OK + b"Transfer-Encoding: xchunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    ],
)
def test_unreadable_answers(raw: bytes) -> None:
    with pytest.raises(HTTPFormatError):
        _parse(bytearray(raw), eof=False)


def test_content_type_is_reported() -> None:
    raw = OK + b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}"
    answer = _parse(bytearray(raw), eof=False)
    assert answer is not None and answer.content_type == "application/json; charset=utf-8"


Answer = Callable[[bytes], bytes | None]


class Server(NamedTuple):
    answers: list[Answer]  # scripted, one per request
    connections: list[int]  # one entry per accepted connection
    origin: Origin  # a client of it
HANG_UP = b"<hang up>"  # an answer ending in this closes the connection after it


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A raw server: each request gets the next scripted answer (None: close instead);
    ``connections`` counts the connections it accepted."""
    answers: list[Answer] = []
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            reply = answers.pop(0)(await reader.readexactly(length))
            if reply is None or reply.endswith(HANG_UP):
                writer.write((reply or b"").removesuffix(HANG_UP))
                writer.close()
                return
            writer.write(reply)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    origin = Origin(f"http://127.0.0.1:{port}")
    yield Server(answers, connections, origin)
    origin.close()
    listener.close()


def _echo(body: bytes) -> bytes:
    return OK + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def test_keep_alive_reuses_one_connection(server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {"Content-Type": "application/json"})
    answers.extend([_echo, _echo, _echo])
    for n in range(3):
        assert (await origin.post(head, b"body %d" % n))[:2] == (200, b"body %d" % n)
    assert len(connections) == 1


async def test_a_connection_the_server_closed_is_replaced(
        server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {})
    answers.extend([_echo, lambda _: None, _echo])
    assert (await origin.post(head, b"one"))[:2] == (200, b"one")
    # the kept-alive connection is closed by the server on the next request: retried anew
    assert (await origin.post(head, b"two"))[:2] == (200, b"two")
    assert len(connections) == 2


def _half(body: bytes) -> bytes:
    return (OK + b"Content-Length: 100\r\n\r\npartial") + HANG_UP


async def test_an_answer_cut_midway_is_never_sent_again(server: Server) -> None:
    """Only a connection that closed before any byte of the answer is retried: a cut
    answer may have been acted on, and an idle pool must not turn one request into many."""
    answers, connections, origin = server
    head = origin.head("/x", {})
    answers.extend([_echo, _echo, _echo, _half])
    # three kept-alive connections in the pool
    await asyncio.gather(*(origin.post(head, b"%d" % n) for n in range(3)))
    assert len(connections) == 3
    with pytest.raises(ConnectionResetError) as caught:
        await origin.post(head, b"once")
    assert not isinstance(caught.value, StaleConnection)
    assert answers == [] and len(connections) == 3  # one request, not one per connection


async def test_a_stale_connection_is_retried_once_on_a_new_one(server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {})
    answers.extend([_echo, _echo, lambda _: None, lambda _: None])
    await asyncio.gather(*(origin.post(head, b"%d" % n) for n in range(2)))
    # both pooled connections are stale now; the retry goes to a new connection, which
    # fails too: that failure is not retried again
    with pytest.raises(StaleConnection):
        await origin.post(head, b"twice at most")
    assert answers == [] and len(connections) == 3


async def test_a_cut_stream_head_is_not_retried(server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {})
    answers.extend([lambda _: OK + b"Transfer-Enc" + HANG_UP, _echo])
    with pytest.raises(ConnectionResetError) as caught:
        await origin.stream(head, b"x")
    assert not isinstance(caught.value, StaleConnection)
    assert len(answers) == 1 and len(connections) == 1


async def test_refused_is_an_os_error() -> None:
    origin = Origin("http://127.0.0.1:1")
    with pytest.raises(ConnectionRefusedError):
        await origin.post(origin.head("/", {}), b"")


CHUNKED = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [b"hello", b" world", b"x" * 300]
                   ) + b"0\r\nX-Trailer: 1\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=60))
def test_chunked_decoding_is_the_same_for_any_split(sizes: list[int]) -> None:
    decoder, out, at = Chunked(), b"", 0
    for size in [*sizes, len(CHUNKED)]:
        out += decoder.feed(CHUNKED[at : at + size])
        at += size
    assert out == b"hello world" + b"x" * 300 and decoder.done


async def test_a_streamed_answer_arrives_piece_by_piece_and_keeps_its_connection(
        server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/s", {})
    chunked = OK + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED
    answers.extend([lambda _: chunked, lambda _: chunked])
    for _ in range(2):
        answer = await origin.stream(head, b"go")
        assert answer.status == 200
        assert b"".join([piece async for piece in answer.iter_any()]) == (
            b"hello world" + b"x" * 300)
        answer.release()
    assert len(connections) == 1


async def test_a_cut_stream_raises_stream_cut(server: Server) -> None:
    answers, _, origin = server
    answers.append(lambda _: OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel" + HANG_UP)
    answer = await origin.stream(origin.head("/s", {}), b"go")
    answer.read_timeout = 5
    with pytest.raises(StreamCut):
        await answer.read_all(1000)


async def test_within_s_bounds_a_silent_server_and_closes_the_connection(
        server: Server) -> None:
    answers, _, origin = server
    head = origin.head("/x", {})
    answers.append(_echo)
    assert (await origin.post(head, b"one", within_s=5))[:2] == (200, b"one")
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    quiet = Origin(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}")
    with pytest.raises(TimeoutError):
        await quiet.post(head, b"two", within_s=0.05)
    assert quiet._idle == []  # the timed-out connection was closed, not pooled
    quiet.close()
    listener.close()
    never.cancel()


async def _end_later(served: list[int], gate: asyncio.Event) -> tuple[asyncio.Server, Origin]:
    """A server whose streamed answers send their data at once and the body's last
    chunk only once ``gate`` is set; ``served`` counts connections."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await gate.wait()
            writer.write(b"0\r\n\r\n")
            gate.clear()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    return listener, Origin(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}")


async def test_an_answer_released_before_its_end_keeps_its_connection() -> None:
    """A relay stops reading at ``[DONE]``; the body's last chunk often comes a moment
    later.  The released connection waits for it and then serves the next request; an
    answer released anywhere else is closed at once (the upstream sees the hang-up)."""
    served: list[int] = []
    gate = asyncio.Event()
    listener, origin = await _end_later(served, gate)
    try:
        for _ in range(2):
            answer = await origin.stream(origin.head("/s", {}), b"go")
            assert await answer.read() == b"hello" and not answer.done
            answer.release(ending=True)  # before the end arrived
            gate.set()
            await wait_until(lambda a=answer: a.done)  # type: ignore[misc]
        assert len(served) == 1 and not answer.closed
        answer = await origin.stream(origin.head("/s", {}), b"go")
        assert await answer.read() == b"hello"
        answer.release()  # not at its end: closed, not kept
        assert answer.closed and origin._idle_streams == []
    finally:
        origin.close()
        listener.close()


async def test_an_answer_whose_end_never_comes_is_closed(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(http1, "DRAIN_S", 0.01)
    served: list[int] = []
    listener, origin = await _end_later(served, asyncio.Event())  # the gate never opens
    try:
        answer = await origin.stream(origin.head("/s", {}), b"go")
        assert await answer.read() == b"hello"
        answer.release(ending=True)
        await wait_until(lambda: answer.closed)
        assert origin._idle_streams == []
    finally:
        origin.close()
        listener.close()


# -- against a raw server: what a library parser refuses, refused and not reused ------------

async def test_an_interim_answer_and_a_bodiless_one_do_not_hang(server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {})
    continued = b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nok"
    answers.extend([lambda _: continued, lambda _: b"HTTP/1.1 204 No Content\r\n\r\n", _echo])
    assert (await origin.post(head, b"a", within_s=5))[:3] == (200, b"ok", True)
    assert (await origin.post(head, b"b", within_s=5))[:3] == (204, b"", True)
    assert (await origin.post(head, b"c", within_s=5))[:2] == (200, b"c")
    assert len(connections) == 1  # all three framed exactly: one connection throughout


@pytest.mark.parametrize("answer", [
    OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    OK + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    OK + b"Transfer-Encoding: xchunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
])
async def test_smuggling_shapes_are_refused_and_the_connection_dropped(
        server: Server, answer: bytes) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {})
    answers.extend([lambda _: answer, _echo])
    with pytest.raises(HTTPFormatError):
        await origin.post(head, b"a", within_s=5)
    assert (await origin.post(head, b"b", within_s=5))[:2] == (200, b"b")
    assert len(connections) == 2  # the refused answer's connection was not used again


async def test_bytes_after_a_body_are_not_read_as_the_next_answer(server: Server) -> None:
    answers, connections, origin = server
    head = origin.head("/x", {})
    # the smuggled "answer" would be taken as the reply to the next request on this connection
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    answers.extend([lambda _: OK + b"Content-Length: 2\r\n\r\nok" + smuggled, _echo])
    assert (await origin.post(head, b"a", within_s=5))[:3] == (200, b"ok", False)
    assert (await origin.post(head, b"b", within_s=5))[:2] == (200, b"b")
    assert len(connections) == 2
