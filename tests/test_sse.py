"""The SSE decoder: line endings split anywhere, comments, multi-line data, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.sse import DONE_EVENT, SSEDecoder, SSEEvent, encode
from proxy.errors import SSEError

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": "h\xc3\xa9llo"}\n\n'
    b"event: ping\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data: x\rdata: y\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent(data=b'{"a": "h\xc3\xa9llo"}'),
    SSEEvent(data=b"line one\nline two", event="ping"),
    SSEEvent(data=b"x\ny"),
    SSEEvent(data=b"[DONE]"),
]


def _decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.close()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, len(STREAM)])
def test_any_fixed_chunking_decodes_the_same(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert _decode(pieces) == EXPECTED


@pytest.mark.parametrize(
    ("pieces", "events"),
    [
        # CRLF split across two reads is one line ending, not two
        ([b"data: a\r", b"\n\r\n"], [SSEEvent(data=b"a")]),
        # a multi-byte UTF-8 character split across reads stays whole
        ([b"data: \xe2\x82", b"\xac\n\n"], [SSEEvent(data="€".encode())]),
        # "data:" without a space, and an empty data field
        ([b"data:x\n\ndata:\n\n"], [SSEEvent(data=b"x"), SSEEvent(data=b"")]),
        # unknown fields and comments are ignored; a blank line alone dispatches nothing
        ([b"id: 7\nretry: 10\n: hi\n\n\n"], []),
        # a last event with no blank line is delivered at close
        ([b"data: tail"], [SSEEvent(data=b"tail")]),
    ],
)
def test_edge_cases(pieces: list[bytes], events: list[SSEEvent]) -> None:
    assert _decode(pieces) == events


def test_event_size_is_bounded_even_without_a_line_end() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 100)


def test_event_size_is_bounded_across_data_lines() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError):
        for _ in range(10):
            decoder.feed(b"data: " + b"x" * 20 + b"\n")


def test_encode_round_trips() -> None:
    assert _decode([encode(b'{"k": 1}') + DONE_EVENT]) == [
        SSEEvent(data=b'{"k": 1}'), SSEEvent(data=b"[DONE]")]


OPENAI = b"".join(b'data: {"choices":[{"delta":{"content":"t%d \xc3\xa9"}}]}\n\n' % n
                  for n in range(20)) + b"data: [DONE]\n\n"


def test_whole_events_take_the_fast_path_with_the_same_result() -> None:
    whole = SSEDecoder().feed(OPENAI)
    one_by_one = _decode([OPENAI[i : i + 1] for i in range(len(OPENAI))])
    assert whole == one_by_one and len(whole) == 21 and whole[-1].data == b"[DONE]"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([OPENAI, STREAM]), st.lists(st.integers(1, 64), max_size=40))
def test_any_chunking_decodes_to_the_same_events(stream: bytes, sizes: list[int]) -> None:
    pieces, at = [], 0
    for size in sizes:
        pieces.append(stream[at : at + size])
        at += size
    pieces.append(stream[at:])
    assert _decode(pieces) == _decode([stream])


_lines = st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                  min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(_lines, max_size=6), st.sampled_from([b"\n", b"\r", b"\r\n"]),
       st.lists(st.integers(1, 16), max_size=60))
def test_random_events_survive_any_line_ending_and_chunking(
        events: list[list[bytes]], eol: bytes, sizes: list[int]) -> None:
    stream = b"".join(b"".join(b"data: " + line + eol for line in lines) + eol
                      for lines in events)
    pieces, at = [], 0
    for size in sizes:
        pieces.append(stream[at : at + size])
        at += size
    pieces.append(stream[at:])
    assert _decode(pieces) == [SSEEvent(data=b"\n".join(lines)) for lines in events]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 100])
def test_a_leading_byte_order_mark_is_skipped_however_it_is_split(size: int) -> None:
    raw = b"\xef\xbb\xbfdata: first\n\ndata: second\n\n"
    for feed in ("feed", "feed_data"):
        decoder = SSEDecoder()
        got: list[object] = []
        for start in range(0, len(raw), size):
            got += getattr(decoder, feed)(raw[start : start + size])
        data = [e if isinstance(e, bytes) else e.data for e in got]  # type: ignore[attr-defined]
        assert data == [b"first", b"second"]


def test_a_byte_order_mark_later_in_the_stream_is_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_data(b"data: a\n\n") == [b"a"]
    assert decoder.feed_data(b"\xef\xbb\xbfdata: b\n\n") == []  # not a field named "data"
