"""The guard's HTTP/1.1 client: response framing, bounds, and kept-alive connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.http1 import MAX_RESPONSE_BYTES, HTTPFormatError, Origin, _parse

OK = b"HTTP/1.1 200 OK\r\n"


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
    ],
)
def test_framing(raw: bytes, eof: bool, answer: tuple[int, bytes, bool] | None) -> None:
    parsed = _parse(bytearray(raw), eof=eof)
    assert (parsed if parsed is None else parsed[:3]) == answer


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        OK + b"Content-Length: -1\r\n\r\n",
        OK + b"Content-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1),
        OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 " + b"x" * 70000,
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


@pytest.fixture
async def server() -> AsyncIterator[tuple[list[Answer], list[int]]]:
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
            if reply is None:
                writer.close()
                return
            writer.write(reply)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    answers.append(lambda _: str(port).encode())  # a way for the test to learn the port
    yield answers, connections
    listener.close()


def _echo(body: bytes) -> bytes:
    return OK + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def test_keep_alive_reuses_one_connection(server: tuple[list[Answer], list[int]]) -> None:
    answers, connections = server
    port = answers.pop(0)(b"").decode()
    origin = Origin(f"http://127.0.0.1:{port}")
    head = origin.head("/x", {"Content-Type": "application/json"})
    answers.extend([_echo, _echo, _echo])
    for n in range(3):
        assert (await origin.post(head, b"body %d" % n))[:2] == (200, b"body %d" % n)
    assert len(connections) == 1
    origin.close()


async def test_a_connection_the_server_closed_is_replaced(
        server: tuple[list[Answer], list[int]]) -> None:
    answers, connections = server
    port = answers.pop(0)(b"").decode()
    origin = Origin(f"http://127.0.0.1:{port}")
    head = origin.head("/x", {})
    answers.extend([_echo, lambda _: None, _echo])
    assert (await origin.post(head, b"one"))[:2] == (200, b"one")
    # the kept-alive connection is closed by the server on the next request: retried anew
    assert (await origin.post(head, b"two"))[:2] == (200, b"two")
    assert len(connections) == 2
    origin.close()


async def test_refused_is_an_os_error() -> None:
    origin = Origin("http://127.0.0.1:1")
    with pytest.raises(ConnectionRefusedError):
        await origin.post(origin.head("/", {}), b"")
