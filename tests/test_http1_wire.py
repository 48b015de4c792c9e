"""The HTTP/1.1 parser byte by byte: the same bytes read the same however they arrive.

``proxy.clients.http1wire`` is fed here directly, with no socket and no event loop, the
way each of the client's connections feeds it:

- a whole answer (``WholeReader``), as the guard calls and non-streamed upstream calls
  read it: fed until the answer is whole; bytes after that are bytes nobody asked for,
  and the connection is not reused (``_Connection`` closes on them);
- a streamed answer (``final_head``, then ``Body``), as ``StreamedAnswer`` reads it:
  every read fed to the body, including reads after its end.

Each exchange below ends with the connection closing.  It is read as one feed, split in
two at every point, one byte at a time, and (with hypothesis) cut anywhere, any number of
times: the status, headers, framing, body, whether the connection may be kept, or the
error, are the same every time, and the same for both readers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clients import http1wire
from proxy.clients.http1wire import Body, Chunked, WholeReader, final_head
from proxy.errors import HTTPFormatError

ROOT = Path(__file__).resolve().parents[1]
OK = b"HTTP/1.1 200 OK\r\n"
TE = OK + b"Transfer-Encoding: chunked\r\n\r\n"
LIMIT = 256  # the readers' bound on a body
CUT = "cut"  # the connection closed before the answer's end


class Outcome(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    framing: tuple[int | None, bool]  # (Content-Length, chunked)
    body: bytes
    keep_alive: bool  # the connection may carry the next request


Read = Outcome | str  # a string: the error (or CUT)


def read_whole(pieces: Iterable[bytes]) -> Read:
    reader, answer, after = WholeReader(LIMIT), None, False
    try:
        for piece in pieces:
            if answer is None:
                answer = reader.feed(piece)
            else:
                after = after or bool(piece)
    except HTTPFormatError as exc:
        return str(exc)
    answer = answer or reader.at_close()
    head = reader.head
    if answer is None or head is None:
        return CUT
    assert (answer.status, answer.content_type) == (head.status, head.content_type)
    assert answer.retry_after == head.headers.get(b"retry-after", b"")
    return Outcome(head.status, head.headers, (head.length, head.chunked), answer.body,
                   answer.keep_alive and not after)


def read_streamed(pieces: Iterable[bytes]) -> Read:
    buffer, body, out = bytearray(), None, []
    try:
        for piece in pieces:
            if body is None:
                buffer += piece
                head = final_head(buffer)
                if head is None:
                    continue
                body, piece = Body(head), bytes(buffer[head.size :])
            out.append(body.feed(piece))
    except HTTPFormatError as exc:
        return str(exc)
    if body is None or not (body.done or body.until_close):
        return CUT
    data, head = b"".join(out), body.head
    if len(data) > LIMIT:
        return "response too large"  # as StreamedAnswer.read_all bounds it
    return Outcome(head.status, head.headers, (head.length, head.chunked), data,
                   head.keep_alive and not body.extra)


Reader = Callable[[Iterable[bytes]], Read]
READERS: list[Reader] = [read_whole, read_streamed]


@contextmanager
def small_bounds() -> Iterator[None]:
    """The parser's bounds scaled down, so that every split of an oversize head, size
    line or trailer section is cheap to try."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(http1wire, "MAX_HEAD_BYTES", 128)
        patch.setattr(http1wire, "MAX_SIZE_LINE", 24)
        patch.setattr(http1wire, "MAX_TRAILER_BYTES", 64)
        yield


def _ok(status: int, headers: dict[bytes, bytes], framing: tuple[int | None, bool],
        body: bytes = b"", keep: bool = True) -> Outcome:
    return Outcome(status, headers, framing, body, keep)


CL2 = {b"content-length": b"2"}
CHUNKED = {b"transfer-encoding": b"chunked"}

EXCHANGES: list[tuple[str, bytes, Read]] = [
    # -- framed by Content-Length
    ("content-length",
     OK + b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
     _ok(200, {b"content-type": b"application/json", b"content-length": b"7"}, (7, False),
         b'{"a":1}')),
    ("error-status", b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"
     b"Content-Length: 4\r\n\r\nbusy",
     _ok(503, {b"retry-after": b"2", b"content-length": b"4"}, (4, False), b"busy")),
    ("no-reason-phrase", b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
     _ok(200, {b"content-length": b"1"}, (1, False), b"x")),
    ("http-1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
     _ok(200, CL2, (2, False), b"hi", keep=False)),
    ("connection-close", OK + b"Connection: close\r\nContent-Length: 0\r\n\r\n",
     _ok(200, {b"connection": b"close", b"content-length": b"0"}, (0, False), keep=False)),
    # -- chunked
    ("chunked-extensions-trailers",
     TE + b"5;name=value\r\nhello\r\n6 ; ext\r\n world\r\nA\r\n0123456789\r\n"
     b"0;last\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\n",
     _ok(200, CHUNKED, (None, True), b"hello world0123456789")),
    ("chunked-no-trailers",
     OK + b"Transfer-Encoding: Chunked\r\n\r\nC\r\nhello, world\r\n000\r\n\r\n",
     _ok(200, {b"transfer-encoding": b"Chunked"}, (None, True), b"hello, world")),
    ("chunked-empty", TE + b"0\r\n\r\n", _ok(200, CHUNKED, (None, True))),
    # -- framed by the close
    ("close-delimited", OK + b"Content-Type: text/plain\r\n\r\nuntil the end",
     _ok(200, {b"content-type": b"text/plain"}, (None, False), b"until the end", keep=False)),
    ("close-delimited-empty", OK + b"\r\n", _ok(200, {}, (None, False), keep=False)),
    # -- no body, whatever the headers say
    ("204", b"HTTP/1.1 204 No Content\r\n\r\n", _ok(204, {}, (0, False))),
    ("304-with-length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
     _ok(304, {b"content-length": b"9"}, (0, False))),
    ("204-chunked", b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
     _ok(204, CHUNKED, (0, False))),
    ("101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
     _ok(101, {b"upgrade": b"websocket"}, (0, False))),
    # -- interim answers are skipped
    ("interim", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
     + OK + b"Content-Length: 2\r\n\r\nhi", _ok(200, CL2, (2, False), b"hi")),
    # -- header lines: names lowercased, values stripped, a later line replaces an earlier one
    ("repeated-headers", OK + b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 2\r\n"
     b"CONTENT-LENGTH: 2\r\nX-Spaced:   v  \r\n\r\nhi",
     _ok(200, {b"set-cookie": b"b=2", b"content-length": b"2", b"x-spaced": b"v"},
         (2, False), b"hi")),
    # obs-fold (RFC 9112 section 5.2): refused, so a folded " Content-Length: 5" can never
    # be read as a field of its own; a line without a colon, or a name with space before
    # its colon, too
    ("obs-fold", OK + b"X-Folded: one\r\n two\r\nContent-Length: 2\r\n\r\nhi",
     "obsolete line folding in the response headers"),
    ("folded-length", OK + b"X-Folded: one\r\n\tContent-Length: 5\r\n\r\nhello",
     "obsolete line folding in the response headers"),
    ("no-colon", OK + b"Content-Length 2\r\n\r\nhi", "malformed response header line"),
    ("space-before-colon", OK + b"Content-Length : 2\r\n\r\nhi",
     "malformed response header line"),
    # -- bytes after the body's end: the answer stands, the connection is not reused
    ("after-length", OK + b"Content-Length: 2\r\n\r\nhiEXTRA",
     _ok(200, CL2, (2, False), b"hi", keep=False)),
    ("after-chunked", TE + b"2\r\nhi\r\n0\r\n\r\nEXTRA",
     _ok(200, CHUNKED, (None, True), b"hi", keep=False)),
    ("after-204", b"HTTP/1.1 204 No Content\r\n\r\n" + OK,
     _ok(204, {}, (0, False), keep=False)),
    # -- framing a library parser refuses (RFC 9112 section 6)
    ("length-and-chunked",
     OK + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
     "Transfer-Encoding together with Content-Length"),
    ("conflicting-length", OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
     "conflicting content-length headers"),
    ("conflicting-coding",
     OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
     "conflicting transfer-encoding headers"),
    ("gzip-chunked", OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
     "unsupported Transfer-Encoding"),
    ("xchunked", OK + b"Transfer-Encoding: xchunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
     "unsupported Transfer-Encoding"),
    ("negative-length", OK + b"Content-Length: -1\r\n\r\n", "bad Content-Length"),
    ("hex-length", OK + b"Content-Length: 0x2\r\n\r\nhi", "bad Content-Length"),
    # -- chunk size lines
    ("size-not-hex", TE + b"zz\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("size-0x", TE + b"0x5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("size-negative", TE + b"-5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("size-empty", TE + b"\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    ("size-17-digits", TE + b"1" * 17 + b"\r\nx\r\n0\r\n\r\n", "bad chunk size"),
    ("data-without-crlf", TE + b"5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
    ("size-line-too-long", TE + b"1;" + b"e" * 30 + b"\r\nx\r\n0\r\n\r\n",
     "chunk size line too long"),
    ("trailers-too-long", TE + b"1\r\nx\r\n0\r\nX-Long: " + b"t" * 80 + b"\r\n\r\n",
     "chunked trailers too long"),
    # -- heads
    ("head-too-long", OK + b"X-Pad: " + b"p" * 150 + b"\r\nContent-Length: 0\r\n\r\n",
     "response headers too long"),
    ("head-never-ends", b"HTTP/1.1 200 " + b"x" * 200, "response headers too long"),
    ("not-http", b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP/1.x status line"),
    ("status-not-digits", b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.x status line"),
    ("http-2", b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"),
    ("no-status", b"HTTP/1.1\r\n\r\n", "not an HTTP/1.x status line"),
    # -- bodies over the readers' bound
    ("length-too-large", OK + b"Content-Length: 300\r\n\r\n" + b"x" * 300, "response too large"),
    ("chunked-too-large", TE + (b"80\r\n" + b"x" * 128 + b"\r\n") * 3 + b"0\r\n\r\n",
     "response too large"),
    ("close-too-large", OK + b"\r\n" + b"x" * 300, "response too large"),
    # -- the connection closed before the end
    ("nothing", b"", CUT),
    ("cut-head", OK + b"Content-Len", CUT),
    ("cut-length", OK + b"Content-Length: 10\r\n\r\nshort", CUT),
    ("cut-chunk", TE + b"5\r\nhel", CUT),
    ("cut-before-last-chunk", TE + b"2\r\nhi\r\n", CUT),
    ("cut-trailers", TE + b"0\r\nX-T: 1\r\n", CUT),
    ("cut-last-crlf", TE + b"0\r\n\r", CUT),
]
PARAMS = [pytest.param(data, read, id=name) for name, data, read in EXCHANGES]


def two_pieces(data: bytes) -> Iterator[list[bytes]]:
    for at in range(len(data) + 1):
        yield [data[:at], data[at:]]


def bytewise(data: bytes) -> list[bytes]:
    return [data[at : at + 1] for at in range(len(data))]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("data", "expected"), PARAMS)
def test_one_feed(reader: Reader, data: bytes, expected: Read) -> None:
    with small_bounds():
        assert reader([data]) == expected


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("data", "expected"), PARAMS)
def test_every_split_in_two(reader: Reader, data: bytes, expected: Read) -> None:
    with small_bounds():
        for pieces in two_pieces(data):
            assert reader(pieces) == expected, f"split at {len(pieces[0])}"


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("data", "expected"), PARAMS)
def test_one_byte_at_a_time(reader: Reader, data: bytes, expected: Read) -> None:
    with small_bounds():
        assert reader(bytewise(data)) == expected


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(EXCHANGES), st.lists(st.integers(0, 1 << 16), max_size=12))
def test_any_cuts(exchange: tuple[str, bytes, Read], cuts: list[int]) -> None:
    _, data, expected = exchange
    marks = sorted(cut % (len(data) + 1) for cut in cuts)
    pieces = [data[start:stop] for start, stop in zip([0, *marks], [*marks, len(data)],
                                                      strict=True)]
    with small_bounds():
        assert read_whole(pieces) == expected
        assert read_streamed(pieces) == expected


def test_the_table_covers_every_error_the_parser_raises() -> None:
    source = Path(http1wire.__file__).read_text(encoding="utf-8")
    raised = {node.args[0].value for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "HTTPFormatError"
              and node.args and isinstance(node.args[0], ast.Constant)}
    raised |= {"conflicting content-length headers", "conflicting transfer-encoding headers"}
    assert raised <= {read for _, _, read in EXCHANGES if isinstance(read, str)}


# -- the chunked decoder on its own ----------------------------------------------------------

def test_the_last_chunk_ends_at_its_blank_line_however_the_trailers_arrive() -> None:
    decoder = Chunked()
    for piece in [b"2\r\nhi\r\n0\r\n", b"X", b"-T: 1\r\n", b"\r"]:
        decoder.feed(piece)
        assert not decoder.done
    assert decoder.feed(b"\n") == b"" and decoder.done and not decoder.trailing


def test_bytes_after_the_last_chunk_are_seen_in_a_later_feed_too() -> None:
    decoder = Chunked()
    assert decoder.feed(b"2\r\nhi\r\n0\r\n\r\n") == b"hi" and decoder.done
    assert decoder.feed(b"") == b"" and not decoder.trailing
    assert decoder.feed(b"HTTP/1.1 200 OK\r\n") == b"" and decoder.trailing


# -- the bounds, at their real size -----------------------------------------------------------

def _splits(data: bytes, near: int) -> list[list[bytes]]:
    """One feed, and splits around ``near`` (where a bound falls) and at either end."""
    points = {1, near - 2, near - 1, near, near + 1, len(data) - 1}
    return [[data]] + [[data[:at], data[at:]] for at in sorted(points) if 0 < at < len(data)]


@pytest.mark.parametrize("reader", READERS)
def test_a_head_may_fill_its_bound_and_no_more(reader: Reader) -> None:
    start = OK + b"Content-Length: 0\r\nX-Pad: "
    bound = http1wire.MAX_HEAD_BYTES

    def head(size: int) -> bytes:
        return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"

    padded = {b"content-length": b"0", b"x-pad": b"p" * (bound - len(start) - 4)}
    for pieces in _splits(head(bound), bound):
        assert reader(pieces) == _ok(200, padded, (0, False))
    for pieces in _splits(head(bound + 1), bound):
        assert reader(pieces) == "response headers too long"


@pytest.mark.parametrize("reader", READERS)
def test_a_size_line_may_fill_its_bound_and_no_more(reader: Reader) -> None:
    bound = http1wire.MAX_SIZE_LINE

    def line(size: int) -> bytes:
        return b"1;" + b"e" * (size - 4) + b"\r\n"

    for size, expected in [(bound, _ok(200, CHUNKED, (None, True), b"x")),
                           (bound + 1, "chunk size line too long")]:
        data = TE + line(size) + b"x\r\n0\r\n\r\n"
        for pieces in _splits(data, len(TE) + bound):
            assert reader(pieces) == expected


@pytest.mark.parametrize("reader", READERS)
def test_trailers_may_fill_their_bound_and_no_more(reader: Reader) -> None:
    bound = http1wire.MAX_TRAILER_BYTES
    start = TE + b"0\r\n"

    def trailers(size: int) -> bytes:
        return b"X-T: " + b"t" * (size - 9) + b"\r\n\r\n"

    for size, expected in [(bound, _ok(200, CHUNKED, (None, True))),
                           (bound + 1, "chunked trailers too long")]:
        data = start + trailers(size)
        for pieces in _splits(data, len(start) + bound):
            assert reader(pieces) == expected


# -- no I/O ------------------------------------------------------------------------------------

IO = ("asyncio", "aiohttp", "socket", "ssl", "selectors", "uvloop")


def _io_loaded(module: str) -> list[str]:
    """The I/O modules importing ``module`` in a fresh interpreter loads."""
    code = f"import sys, {module}; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=True)
    loaded: list[str] = ast.literal_eval(done.stdout)
    return [name for name in loaded if name.split(".")[0] in IO]


def test_the_parser_loads_no_io_even_transitively() -> None:
    assert _io_loaded("proxy.clients.http1wire") == []


def test_the_check_sees_the_connections_io() -> None:
    assert "asyncio" in _io_loaded("proxy.clients.http1")
