"""A small HTTP/1.1 client for the hops of every request: two guard calls and a
whole (non-streamed) upstream answer.

Those three hops are most of what the proxy costs, and they need far less than a
general client: keep-alive connections, one request at a
time on each, a response framed by ``Content-Length`` or chunked encoding (or by
the connection closing), and a bound on its size.  Failures surface as
``OSError`` (refused, reset, closed early), ``TimeoutError`` and ``HTTPFormatError``;
the guard client translates them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import NamedTuple, cast

import yarl

MAX_RESPONSE_BYTES = 4 << 20


class HTTPFormatError(Exception):
    """The server's answer is not HTTP/1.1 we can read."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self.limit = MAX_RESPONSE_BYTES

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            answer = _parse(self._buffer, eof=False, limit=self.limit)
        except HTTPFormatError as exc:
            self._waiter.set_exception(exc)
            return
        if answer is not None:
            self._buffer.clear()
            self._waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        try:
            answer = _parse(self._buffer, eof=True, limit=self.limit) if self._buffer else None
        except HTTPFormatError as error:
            self._waiter.set_exception(error)
            return
        if answer is None:
            self._waiter.set_exception(ConnectionResetError("the guard closed the connection"))
        else:
            self._waiter.set_result(answer)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Answer(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool
    content_type: str


def _parse(buffer: bytearray, *, eof: bool, limit: int = MAX_RESPONSE_BYTES) -> Answer | None:
    """The answer once ``buffer`` holds a whole response, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 65536:
            raise HTTPFormatError("response headers too long")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    status = _status(lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    keep = headers.get(b"connection") != b"close" and lines[0].startswith(b"HTTP/1.1")
    body = _body(buffer, end + 4, headers, eof, limit)
    if body is None:
        return None
    return Answer(status, body, keep, headers.get(b"content-type", b"").decode("latin-1"))


def _status(line: bytes) -> int:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HTTPFormatError("not an HTTP/1.x status line")
    return int(parts[1])


def _body(buffer: bytearray, start: int, headers: Mapping[bytes, bytes], eof: bool,
          limit: int) -> bytes | None:
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        return _chunked(buffer, start, limit)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or int(length) > limit:
            raise HTTPFormatError("bad or too large Content-Length")
        size = int(length)
        return bytes(buffer[start : start + size]) if len(buffer) - start >= size else None
    if len(buffer) - start > limit:
        raise HTTPFormatError("response too large")
    return bytes(buffer[start:]) if eof else None  # framed by the connection closing


def _chunked(buffer: bytearray, start: int, limit: int) -> bytes | None:
    body, at = bytearray(), start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HTTPFormatError("bad chunk size") from None
        if size == 0:
            return bytes(body) if buffer.find(b"\r\n\r\n", line_end) >= 0 else None
        if len(body) + size > limit:
            raise HTTPFormatError("response too large")
        if len(buffer) < line_end + 2 + size + 2:
            return None
        body += buffer[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2


class Origin:
    """Keep-alive connections to one ``http(s)://host:port``; ``post`` is safe to call
    concurrently (each call has a connection of its own)."""

    def __init__(self, url: str, *, limit: int = MAX_RESPONSE_BYTES) -> None:
        self._limit = limit
        parsed = yarl.URL(url)
        if parsed.host is None or parsed.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url}")
        self._host, self._port = parsed.host, parsed.port or 80
        self._ssl = ssl.create_default_context() if parsed.scheme == "https" else None
        authority = parsed.host if parsed.is_default_port() else f"{parsed.host}:{self._port}"
        self._host_header = f"Host: {authority}\r\n".encode()
        self._idle: list[_Connection] = []

    def head(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The fixed part of a POST's request head, built once by the caller."""
        return (f"POST {path} HTTP/1.1\r\n".encode() + self._host_header
                + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()))

    async def post(self, head: bytes, body: bytes, extra: bytes = b"") -> Answer:
        """A POST's answer; ``extra`` are more header lines.  The caller bounds it with
        ``asyncio.timeout``; cancelling it closes the connection."""
        length = b"Content-Length: %d\r\n\r\n" % len(body)
        return await self._exchange(head + extra + length + body)

    async def _exchange(self, request: bytes) -> Answer:
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await self._use(connection, request)
            except ConnectionResetError:
                continue  # a kept-alive connection the server had closed: try another
        return await self._use(await self._connect(), request)

    async def _use(self, connection: _Connection, request: bytes) -> Answer:
        try:
            answer = await connection.send(request)
        except BaseException:
            connection.close()
            raise
        if answer.keep_alive and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection, self._host, self._port, ssl=self._ssl,
            server_hostname=self._host if self._ssl else None)
        connection.limit = self._limit
        return connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
