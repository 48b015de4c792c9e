"""A small HTTP/1.1 client for the hops of every request: two guard calls and a
whole (non-streamed) upstream answer.

Those three hops are most of what the proxy costs, and they need far less than a
general client: keep-alive connections, one request at a
time on each, a response framed by ``Content-Length`` or chunked encoding (or by
the connection closing), and a bound on its size.  Failures surface as
``OSError`` (refused, reset, closed early), ``TimeoutError`` and ``HTTPFormatError``;
the guard client translates them.

This module holds the connections and their pool; what the bytes they receive mean
(heads, framing, chunked bodies) is read by ``proxy.clients.http1wire``, which does no I/O.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import cast

import yarl

from proxy.clients.http1wire import Answer, Body, WholeReader, final_head
from proxy.errors import HTTPFormatError, StaleConnection, StreamCut

MAX_RESPONSE_BYTES = 4 << 20


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        # the loop, once: asking for the running loop costs a system call on Python 3.11
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader: WholeReader | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self.limit = MAX_RESPONSE_BYTES

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter, reader = self._waiter, self._reader
        if waiter is None or waiter.done() or reader is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        try:
            answer = reader.feed(data)
        except HTTPFormatError as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if answer is not None:
            self._reader = None
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, reader = self._waiter, self._reader
        if waiter is None or waiter.done() or reader is None:
            return
        if not reader.started:
            waiter.set_exception(StaleConnection("closed before the answer began"))
            return
        answer = reader.at_close()
        if answer is None:
            waiter.set_exception(ConnectionResetError("closed in the middle of the answer"))
        else:
            waiter.set_result(answer)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._waiter = self.loop.create_future()
        self._reader = WholeReader(self.limit)
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


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
        self._idle_streams: list[StreamedAnswer] = []

    def head(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The fixed part of a POST's request head, built once by the caller."""
        return (f"POST {path} HTTP/1.1\r\n".encode() + self._host_header
                + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()))

    async def post(self, head: bytes, body: bytes, extra: bytes = b"", *,
                   within_s: float | None = None) -> Answer:
        """A POST's answer; ``extra`` are more header lines.  ``within_s`` bounds the
        whole exchange (``TimeoutError``); cancelling it closes the connection."""
        request = head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
        connection = self._idle_connection()
        loop = asyncio.get_running_loop() if connection is None else connection.loop
        deadline = None if within_s is None else loop.time() + within_s
        if connection is not None:
            try:
                return await self._use(connection, request, deadline)
            except StaleConnection:
                pass  # closed by the server while idle: once more, on a new connection
        async with asyncio.timeout_at(deadline):
            connection = await self._connect()
        return await self._use(connection, request, deadline)

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _use(self, connection: _Connection, request: bytes, deadline: float | None
                   ) -> Answer:
        waiter = connection.send(request)
        # one timer, not an asyncio.timeout context: this is every guard call's path
        timer = None if deadline is None else connection.loop.call_at(deadline, _expire, waiter)
        try:
            answer = await waiter
        except BaseException:
            connection.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
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

    async def stream(self, head: bytes, body: bytes, extra: bytes = b"") -> StreamedAnswer:
        """Send a POST and return once the response head arrived; the caller reads the
        body and must ``release`` (or ``close``) the answer."""
        request = head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
        answer = self._idle_stream()
        if answer is not None:
            try:
                await self._start(answer, request)
                return answer
            except StaleConnection:
                pass  # closed by the server while idle: once more, on a new connection
        loop = asyncio.get_running_loop()
        _, answer = await loop.create_connection(
            lambda: StreamedAnswer(self), self._host, self._port, ssl=self._ssl,
            server_hostname=self._host if self._ssl else None)
        await self._start(answer, request)
        return answer

    def _idle_stream(self) -> StreamedAnswer | None:
        while self._idle_streams:
            answer = self._idle_streams.pop()
            if not answer.closed:
                answer.reset()
                return answer
        return None

    @staticmethod
    async def _start(answer: StreamedAnswer, request: bytes) -> None:
        try:
            await answer.start(request)
        except BaseException:
            answer.close()
            raise

    def keep_stream(self, answer: StreamedAnswer) -> None:
        self._idle_streams.append(answer)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        while self._idle_streams:
            self._idle_streams.pop().close()


# -- streamed answers ---------------------------------------------------------------------

PAUSE_AT = 1 << 20  # undelivered body bytes at which reading from the socket pauses
DRAIN_S = 1.0  # how long a released answer waits for its body's end, to keep the connection
DRAIN_BYTES = 4096  # body bytes a released answer reads (and drops) while it waits


class StreamedAnswer(asyncio.Protocol):
    """A response read as it arrives, on a connection of its own: ``start`` sends the
    request and waits for the head; ``iter_any`` yields the body; ``release`` returns a
    cleanly finished keep-alive connection to its origin, or closes it."""

    def __init__(self, origin: Origin) -> None:
        self.loop = asyncio.get_running_loop()  # once (see _Connection)
        self.status = 0
        self.content_type = ""
        self.retry_after = b""
        self.read_timeout: float | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.done = False
        self._origin = origin
        self._head = bytearray()
        self._head_waiter: asyncio.Future[None] | None = None
        self._framing: Body | None = None  # None: no head yet, bytes taken as they come
        self._keep = False
        self._pieces: list[bytes] = []
        self._size = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._interrupted = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0
        self._timed_out = False
        self._draining: asyncio.TimerHandle | None = None  # released, its end still to come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    async def start(self, request: bytes) -> None:
        assert self.transport is not None
        self._head_waiter = self.loop.create_future()
        self.transport.write(request)
        await self._head_waiter

    def data_received(self, data: bytes) -> None:
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head += data
            try:
                rest = self._read_head()
            except HTTPFormatError as exc:
                self._head_waiter.set_exception(exc)
                return
            if rest is None:
                return
            self._head_waiter.set_result(None)
            data = rest
        if data:
            self._body(data)

    def _read_head(self) -> bytes | None:
        head = final_head(self._head)
        if head is None:
            return None
        self.status, self.content_type, self._keep = head.status, head.content_type, head.keep_alive
        self.retry_after = head.headers.get(b"retry-after", b"")
        self._framing = framing = Body(head)
        rest = bytes(self._head[head.size :])
        self._head.clear()
        if framing.done:  # no body
            self._finish()
        return rest

    def _body(self, data: bytes) -> None:
        framing = self._framing
        try:
            piece = framing.feed(data) if framing is not None else data
        except HTTPFormatError as exc:
            self._error = exc
            self._wake()
            return
        if framing is not None and framing.extra:
            self._keep = False  # bytes after the body's end: never reuse this connection
        if piece and self._draining is not None:
            if len(piece) > DRAIN_BYTES:  # more than a body's end: not worth waiting for
                self.close()
                return
        elif piece:
            self._pieces.append(piece)
            self._size += len(piece)
            if self._size > PAUSE_AT and self.transport is not None:
                self.transport.pause_reading()  # backpressure: the reader is behind
        if framing is not None and framing.done:
            self._finish()
        self._wake()

    def _finish(self) -> None:
        self.done = True
        if self._draining is not None:  # released before its end arrived: now it can be kept
            self._draining.cancel()
            self._draining = None
            self._keep_or_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(
                ConnectionResetError("closed in the middle of the answer's head") if self._head
                else StaleConnection("closed before the answer began"))
        if not self.done:
            if self._framing is None or self._framing.until_close:
                self.done = True  # the body was framed by the close
            else:
                self._error = StreamCut("the upstream closed the connection mid-answer")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check_idle(self) -> None:
        """The read timeout's one timer: it fires at most once per timeout period and
        re-arms itself while reads keep arriving, instead of a timer per wait."""
        self._timer = None
        if self._waiter is None or self._waiter.done() or self.read_timeout is None:
            return  # not waiting now: the next wait arms it again
        loop = self.loop
        deadline = self._waiting_since + self.read_timeout
        if loop.time() >= deadline:
            self._timed_out = True
            self._waiter.set_result(None)
        else:
            self._timer = loop.call_at(deadline, self._check_idle)

    def interrupt(self) -> None:
        """Make a pending (or the next) ``read_some`` return None: the reader has
        something else to attend to."""
        self._interrupted = True
        self._wake()

    async def read(self) -> bytes:
        """The body bytes that arrived since the last read; b"" at the end."""
        while (data := await self.read_some()) is None:
            pass
        return data

    async def read_some(self) -> bytes | None:
        """As ``read``, or None once ``interrupt`` was called and no bytes are waiting."""
        while not self._pieces and not self.done and self._error is None:
            if self._interrupted:
                self._interrupted = False
                return None
            loop = self.loop
            self._waiter = loop.create_future()
            if self.read_timeout is not None:
                self._waiting_since = loop.time()
                if self._timer is None:
                    self._timer = loop.call_at(self._waiting_since + self.read_timeout,
                                               self._check_idle)
            try:
                await self._waiter
            finally:
                self._waiter = None
            if self._timed_out:
                raise TimeoutError(f"no upstream bytes for {self.read_timeout}s")
        self._interrupted = False
        if self._pieces:
            data = b"".join(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
            self._pieces.clear()
            if self._size > PAUSE_AT and self.transport is not None:
                self.transport.resume_reading()
            self._size = 0
            return data
        if self._error is not None:
            raise self._error
        return b""

    async def iter_any(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    async def read_all(self, limit: int) -> bytes:
        parts, size = [], 0
        while data := await self.read():
            size += len(data)
            if size > limit:
                raise HTTPFormatError("response too large")
            parts.append(data)
        return b"".join(parts)

    def release(self, *, ending: bool = False) -> None:
        """Done with the answer: keep the connection for the next request if the body
        ended cleanly, else close it.  ``ending``: the reader stopped at the answer's
        last event (``[DONE]``), whose body's last few bytes are usually still in
        flight: the connection waits up to ``DRAIN_S`` for them instead of closing."""
        self._stop_timer()
        if ending and not self.done and self._keep and not self.closed and self._error is None:
            self._pieces.clear()
            self._size = 0
            self._draining = self.loop.call_later(DRAIN_S, self.close)
            return
        self._keep_or_close()

    def _keep_or_close(self) -> None:
        if self.done and self._keep and not self.closed and self._error is None:
            self._origin.keep_stream(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        if self.transport is not None:
            self.transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reset(self) -> None:
        """Ready for the next request on the same connection."""
        self.status, self.content_type, self.done = 0, "", False
        self._framing, self._keep = None, False
        self._pieces.clear()
        self._size = 0
        self._error = None
        self._interrupted = False
        self._timed_out = False
