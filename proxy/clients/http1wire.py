"""HTTP/1.1 responses read from bytes: the lean client's parser, with no I/O.

Everything here takes the bytes a connection received and says what they are (a
response head, body bytes, the end of the body) or raises ``HTTPFormatError``; nothing
reads or writes a socket or waits, so the same bytes give the same result however they
are split into reads.  ``proxy.clients.http1`` feeds it from its connections.

The framing is checked as strictly as a library parser checks it (RFC 9112 section 6):
a ``Content-Length`` or ``Transfer-Encoding`` sent twice with different values, both of
them together, or a transfer coding other than ``chunked`` is refused; ``1xx`` interim
heads are skipped; ``204``, ``304`` and ``1xx`` answers have no body.  Heads, chunk size
lines and trailers are bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from proxy.errors import HTTPFormatError

MAX_HEAD_BYTES = 65536  # a head, its blank line included, longer than this is refused
MAX_SIZE_LINE = 4096  # a chunk size line, its CRLF included (extensions make it long)
MAX_TRAILER_BYTES = 65536  # the trailer section after the last chunk, blank line included


class Answer(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool
    content_type: str
    retry_after: bytes = b""


class Head(NamedTuple):
    status: int
    headers: dict[bytes, bytes]  # names lowercased, values as sent
    keep_alive: bool
    content_type: str
    size: int  # bytes of the head, blank line included
    length: int | None  # the body's length; None: chunked, or framed by the close
    chunked: bool


def final_head(buffer: bytearray) -> Head | None:
    """The final response head once ``buffer`` holds all of it, else None.  Interim
    ``1xx`` heads (``100 Continue``, ``103 Early Hints``) are removed from ``buffer``
    and skipped."""
    while True:
        head = split_head(buffer)
        if head is None or not 100 <= head.status < 200 or head.status == 101:
            return head
        del buffer[: head.size]


def split_head(buffer: bytearray) -> Head | None:
    """One response head once ``buffer`` holds all of it, else None; its framing checked
    as strictly as a library parser would (RFC 9112 section 6).  A head whose blank line
    does not end within ``MAX_HEAD_BYTES`` is refused, however it arrived."""
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        if len(buffer) >= MAX_HEAD_BYTES:
            raise HTTPFormatError("response headers too long")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    headers = _fields(lines[1:])
    status = _status(lines[0])
    keep = (headers.get(b"connection", b"").lower() != b"close"
            and lines[0].startswith(b"HTTP/1.1"))
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    length, chunked = framing(status, headers)
    if length is None and not chunked:
        keep = False  # framed by the connection closing
    return Head(status, headers, keep, content_type, end + 4, length, chunked)


_SINGLE = (b"content-length", b"transfer-encoding")  # a second, differing copy is an attack


def _fields(lines: list[bytes]) -> dict[bytes, bytes]:
    """Header lines as a dict; a later line of a name replaces an earlier one."""
    headers: dict[bytes, bytes] = {}
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # RFC 9112 section 5.2: refused, never joined
            raise HTTPFormatError("obsolete line folding in the response headers")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise HTTPFormatError("malformed response header line")
        name, value = name.strip().lower(), value.strip()
        if name in headers and name in _SINGLE and headers[name] != value:
            raise HTTPFormatError(f"conflicting {name.decode()} headers")
        headers[name] = value
    return headers


def _status(line: bytes) -> int:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HTTPFormatError("not an HTTP/1.x status line")
    return int(parts[1])


def framing(status: int, headers: Mapping[bytes, bytes]) -> tuple[int | None, bool]:
    """(body length, chunked) of an answer with this status and these headers."""
    coding, length = headers.get(b"transfer-encoding"), headers.get(b"content-length")
    if status in (204, 304) or 100 <= status < 200:
        return 0, False  # no body, whatever the headers say
    if coding is not None:
        if length is not None:
            raise HTTPFormatError("Transfer-Encoding together with Content-Length")
        if coding.lower() != b"chunked":
            raise HTTPFormatError("unsupported Transfer-Encoding")
        return None, True
    if length is not None:
        if not length.isdigit():
            raise HTTPFormatError("bad Content-Length")
        return int(length), False
    return None, False


class Body:
    """One answer's body, framed by its head: ``feed`` takes the bytes after the head
    and returns the body's bytes among them.  ``done`` once the body's end arrived;
    ``extra`` once bytes came after it (the connection's framing is lost: never reuse it).
    A body framed by the close is never ``done``: its end is the connection's."""

    __slots__ = ("_chunked", "extra", "head", "left")

    def __init__(self, head: Head) -> None:
        self.head = head
        self._chunked = Chunked() if head.chunked else None
        self.left = head.length  # bytes still to come; None: chunked, or until the close
        self.extra = False

    @property
    def until_close(self) -> bool:
        return self.left is None and self._chunked is None

    @property
    def done(self) -> bool:
        return self.left == 0 or (self._chunked is not None and self._chunked.done)

    def feed(self, data: bytes) -> bytes:
        if self._chunked is not None:
            piece = self._chunked.feed(data)
            self.extra = self._chunked.trailing
            return piece
        if self.left is None:
            return data
        if len(data) > self.left:
            self.extra = True
            data = data[: self.left]
        self.left -= len(data)
        return data


class WholeReader:
    """A whole answer, read incrementally: the head once, then each read's bytes only —
    a chunked body is decoded as it arrives, never again from its start."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._body: Body | None = None
        self._pieces: list[bytes] = []
        self._size = 0
        self.started = False  # any byte of the answer arrived

    @property
    def head(self) -> Head | None:
        """The final head, once it arrived."""
        return None if self._body is None else self._body.head

    def feed(self, data: bytes) -> Answer | None:
        self.started = True
        body = self._body
        if body is None:
            self._buffer += data
            head = final_head(self._buffer)
            if head is None:
                return None
            if head.length is not None and head.length > self._limit:
                raise HTTPFormatError("response too large")
            self._body = body = Body(head)
            data = bytes(self._buffer[head.size :])
            self._buffer.clear()
        self._add(body.feed(data))
        if not body.done:
            return None
        return self._answer(body.head, extra=body.extra)

    def _add(self, piece: bytes) -> None:
        if piece:
            self._pieces.append(piece)
            self._size += len(piece)
            if self._size > self._limit:
                raise HTTPFormatError("response too large")

    def _answer(self, head: Head, *, extra: bool) -> Answer:
        # bytes after the end of the body: the connection's framing is lost, never reuse it
        return Answer(head.status, b"".join(self._pieces), head.keep_alive and not extra,
                      head.content_type, head.headers.get(b"retry-after", b""))

    def at_close(self) -> Answer | None:
        """The answer when the connection closed: whole only if framed by the close."""
        body = self._body
        if body is None or not body.until_close:
            return None
        return self._answer(body.head, extra=False)


# -- chunked transfer coding ------------------------------------------------------------------

class Chunked:
    """Incremental ``Transfer-Encoding: chunked`` decoding.

    Each ``feed`` scans the bytes it holds by index and returns the chunk data that
    completed, joined once; only an unfinished size line or chunk tail is kept.  A size
    line's bound and the trailers' count from where they begin, whatever the reads."""

    def __init__(self) -> None:
        self._rest = b""  # bytes not yet decoded: a partial size line, CRLF or trailer
        # -1: a size line is next; -2: the CRLF after a chunk's data; 0: the last chunk's
        # trailers; above 0: bytes of the current chunk still to come
        self._left = -1
        self.done = False
        self.trailing = False  # bytes came after the terminating chunk

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.trailing = self.trailing or bool(data)  # bytes after the body's end
            return b""
        buf = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, end, left = 0, len(buf), self._left
        while pos < end:
            if left > 0:
                stop = pos + left
                if stop + 2 <= end and buf[stop] == 13 and buf[stop + 1] == 10:
                    out.append(buf[pos:stop])  # the whole chunk and its CRLF: the common case
                    pos, left = stop + 2, -1
                else:
                    pos, left = _chunk_part(buf, pos, left, out)
            elif left == -1:  # a size line
                eol = buf.find(b"\r\n", pos, pos + MAX_SIZE_LINE)
                if eol < 0:
                    _unended_size_line(buf, pos)
                    break
                line = buf[pos:eol]
                if 0 < len(line) <= 8 and not line.strip(_HEX):  # chunk_size's usual case
                    left = int(line, 16)
                else:
                    left = chunk_size(line)
                pos = eol + 2
            elif left == -2:  # the CRLF after a chunk's data
                if end - pos < 2:
                    break
                _crlf(buf, pos)
                pos, left = pos + 2, -1
            else:
                pos = self._trailers(buf, pos)
                break
        self._left = left
        self._rest = buf[pos:] if pos < end and not self.done else b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _trailers(self, buf: bytes, pos: int) -> int:
        """After the last chunk: where its trailer section ends (and the body is done),
        or ``pos`` while the section's blank line is still to come."""
        if buf.startswith(b"\r\n", pos):
            close = pos + 2
        else:
            blank = buf.find(b"\r\n\r\n", pos, pos + MAX_TRAILER_BYTES)
            if blank < 0:
                if len(buf) - pos >= MAX_TRAILER_BYTES:
                    raise HTTPFormatError("chunked trailers too long")
                return pos
            close = blank + 4
        self.done = True
        self.trailing = close < len(buf)  # bytes after the body's end
        return close


def _chunk_part(buf: bytes, pos: int, left: int, out: list[bytes]) -> tuple[int, int]:
    """What ``buf`` holds of the next ``left`` bytes of chunk data, into ``out``: (position,
    state) after them.  Called when the chunk's data and CRLF are not all there, or when
    they are and the CRLF is not one."""
    stop = pos + left
    if stop + 2 <= len(buf):
        raise HTTPFormatError("chunk data not followed by CRLF")
    take = min(left, len(buf) - pos)
    out.append(buf[pos : pos + take])
    return pos + take, (left - take) or -2


def _crlf(buf: bytes, at: int) -> None:
    if not buf.startswith(b"\r\n", at):
        raise HTTPFormatError("chunk data not followed by CRLF")


def _unended_size_line(buf: bytes, pos: int) -> None:
    """A size line whose CRLF is not in ``buf``: still to come, unless it is too long."""
    if len(buf) - pos >= MAX_SIZE_LINE:
        raise HTTPFormatError("chunk size line too long")


_HEX = b"0123456789abcdefABCDEF"


def chunk_size(line: bytes) -> int:
    """A chunk size line's size (extensions ignored)."""
    if 0 < len(line) <= 8 and not line.strip(_HEX):  # the common case: bare hex digits
        return int(line, 16)
    digits = line.split(b";", 1)[0].strip()
    if not digits or digits.strip(_HEX) or len(digits) > 16:
        raise HTTPFormatError("bad chunk size")
    return int(digits, 16)
