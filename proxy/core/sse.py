"""Server-sent events: an incremental, bounded decoder and the encoder. No I/O.

The decoder follows the WHATWG event-stream grammar
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end in CR, LF or CRLF (a CRLF may be split across two reads), ``:`` starts a
comment, a blank line dispatches the event.  Unlike a client library it bounds the
size of one event, so a hostile upstream cannot make the proxy buffer without end.
Event data stay ``bytes``: they are parsed with orjson and relayed as they came,
never decoded to ``str`` and re-encoded.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from proxy.errors import SSEError

BOM = b"\xef\xbb\xbf"  # a stream may start with one; it is not part of the first line
DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
DEFAULT_MAX_EVENT_BYTES = 1 << 20


class SSEEvent(NamedTuple):
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._partial = b""  # an unterminated line
        self._data: list[bytes] = []
        self._size = 0  # bytes held for the event being assembled
        self._event: str | None = None
        self._skip_lf = False  # the last read ended in CR: a leading LF belongs to it
        self._head: bytes | None = b""  # the stream's first bytes, until a BOM is ruled out

    def _unmarked(self, chunk: bytes) -> bytes:
        """``chunk`` without the stream's leading byte order mark, once it is known."""
        if self._head is None:
            return chunk
        head = self._head + chunk
        if len(head) < len(BOM) and BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(BOM):] if head.startswith(BOM) else head

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._head is not None:
            chunk = self._unmarked(chunk)
        data = self._whole_data_blocks(chunk)
        if data is None:
            return self._feed(chunk)
        return [SSEEvent(one) for one in data]

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """Like ``feed``, but only the events' data: what the relay needs (chat chunks
        have no event names; a Responses or Messages event names its own ``type``)."""
        if self._head is not None:
            chunk = self._unmarked(chunk)
        data = self._whole_data_blocks(chunk, named=True)
        if data is None:
            return [event.data for event in self._feed(chunk)]
        return data

    def _whole_data_blocks(self, chunk: bytes, *, named: bool = False) -> list[bytes] | None:
        """The common case, cheaply: the data of whole ``data: ...`` events, one line each,
        LF line ends, nothing pending from before.  None when the chunk needs the general
        path.

        Each such event holds exactly two LFs and starts with ``data: ``: counting both
        in C checks every event, and one split takes their data, without a Python loop.
        With ``named``, events named by an ``event:`` line first (``/v1/responses``,
        ``/v1/messages``) are read too (``_named_data``; their names are dropped)."""
        if self._partial or self._data or self._skip_lf or not chunk.endswith(b"\n\n"):
            return None
        if self._event is not None:  # an event's name came in the last read, its data next
            return None
        if b"\r" in chunk:
            return None
        if not chunk.startswith(b"data: "):
            named = named and chunk.startswith(b"event: ")
            return _named_data(chunk, self._max) if named else None
        # ``data: X`` + LF LF, n times: n - 1 separators LF LF ``data: `` and the last LF LF
        # hold every LF of the chunk, so no X holds one
        count = chunk.count(b"\n\ndata: ") + 1
        if chunk.count(b"\n") != 2 * count:
            return None
        data = chunk[6:-2].split(b"\n\ndata: ")
        if len(chunk) > self._max and max(map(len, data)) >= self._max:
            return None  # the general path names the event too large
        return data

    def _feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        events: list[SSEEvent] = []
        buf = self._partial + chunk if self._partial else chunk
        self._partial = b""
        for line in buf.splitlines(keepends=True):
            last = line[-1:]
            if last != b"\n" and last != b"\r":
                self._partial = line
                self._skip_lf = False  # bytes followed the CR: an LF next ends this line
                break
            self._skip_lf = last == b"\r"
            event = self._line(line.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        self._check_size()
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line is still delivered."""
        if self._head:
            self._partial, self._head = self._head, None
        events = self.feed(b"\n") if self._partial else []
        if self._data:
            events.append(self._dispatch())
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            if self._data:
                return self._dispatch()
            self._reset()
            return None
        if line[:1] == b":":
            return None
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:  # a whole event that arrived in one read, too
                raise SSEError(f"an event exceeded the {self._max}-byte bound")
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> SSEEvent:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = SSEEvent(data=data, event=self._event)
        self._reset()
        return event

    def _reset(self) -> None:
        self._data = []
        self._size = 0
        self._event = None

    def _check_size(self) -> None:
        if self._size + len(self._partial) > self._max:
            raise SSEError(f"an event exceeded the {self._max}-byte bound")


def _named_data(chunk: bytes, bound: int) -> list[bytes] | None:
    """The data of whole events of exactly two lines each, ``event: <name>`` then
    ``data: ...`` (``chunk``: starting ``event: ``, LF line ends only, ending in a blank
    line), else None.

    ``_NAMED`` finds ``n`` such events, each holding three LFs; when the chunk holds
    ``3n`` LFs and ``n - 1`` LF LF ``event: ``, they follow one another from its first
    byte to its last, with nothing between them."""
    data: list[bytes] = _NAMED.findall(chunk)
    count = len(data)
    if chunk.count(b"\n") != 3 * count or chunk.count(b"\n\nevent: ") != count - 1:
        return None
    if len(chunk) > bound and max(map(len, data)) >= bound:
        return None  # the general path names the event too large
    return data


_NAMED = re.compile(rb"event: [^\n]*\ndata: ([^\n]*)\n\n")


def encode(data: bytes) -> bytes:
    """One ``data:`` event.  ``data`` must not contain line breaks (JSON never does)."""
    return b"data: " + data + b"\n\n"
