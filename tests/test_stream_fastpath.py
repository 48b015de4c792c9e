"""The relay's fast paths agree with the general decoders on every input.

``SSEDecoder.feed_data`` takes whole ``data:`` events in C-level passes; the chunked
decoder takes whole chunks in one step.  Both must give exactly what the general,
line-by-line paths give, for any stream and any split of it."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clients.http1wire import Chunked
from proxy.core.chunks import PlainShape
from proxy.core.sse import SSEDecoder
from proxy.errors import HTTPFormatError, SSEError

# one event's lines: mostly the fast path's shape, sometimes what only the general path reads
_LINE = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
    .map(lambda b: b"data: " + b),
    st.sampled_from([b"data:x", b"data", b": comment", b"event: ping", b"data: [DONE]",
                     b"id: 7", b"data: a\rdata: b"]),
)
_EVENT = st.tuples(st.lists(_LINE, min_size=1, max_size=3),
                   st.sampled_from([b"\n", b"\r\n", b"\r"]))


def _stream(events: list[tuple[list[bytes], bytes]]) -> bytes:
    return b"".join(end.join(lines) + end + end for lines, end in events)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _general(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    # one byte at a time never takes the fast path
    events = [e.data for piece in pieces for b in range(len(piece))
              for e in decoder.feed(piece[b : b + 1])]
    return events + [e.data for e in decoder.close()]


def _fast(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    events = [data for piece in pieces for data in decoder.feed_data(piece)]
    return events + [e.data for e in decoder.close()]


@settings(max_examples=400, deadline=None)
@given(st.lists(_EVENT, max_size=8), st.lists(st.integers(0, 400), max_size=4))
def test_feed_data_equals_the_general_decoder(events: list[tuple[list[bytes], bytes]],
                                              cuts: list[int]) -> None:
    data = _stream(events)
    pieces = _split(data, cuts)
    assert _fast(pieces) == _general(pieces)


# events named by an ``event:`` line (Responses, Messages): mostly the named fast path's
# shape (an event line, a data line), sometimes one it must decline
_PAYLOAD = st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b)
_NAMED = st.one_of(
    st.tuples(_PAYLOAD, _PAYLOAD).map(lambda p: [b"event: " + p[0], b"data: " + p[1]]),
    st.tuples(_PAYLOAD, _PAYLOAD).map(lambda p: [b"event: " + p[0], b"data: " + p[1],
                                                 b"data: " + p[0]]),
    st.lists(st.sampled_from([b"event: x", b"data: y", b"data:z", b": c", b"id: 1",
                              b"event: a\ndata: b", b"data: event: q", b"", b"event:",
                              b"data:event: a", b"xevent: b", b"event: event: c",
                              b"event: d\ndata: e\ndata: f"]),
             min_size=1, max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_NAMED, max_size=8), st.lists(st.integers(0, 400), max_size=4))
def test_named_events_read_as_the_general_decoder_reads_them(events: list[list[bytes]],
                                                             cuts: list[int]) -> None:
    data = b"".join(b"\n".join(lines) + b"\n\n" for lines in events)
    for pieces in ([data], _split(data, cuts)):
        assert _fast(pieces) == _general(pieces)
        decoder = SSEDecoder()  # ``feed`` keeps the names: never the data-only path
        named = [e for piece in pieces for e in decoder.feed(piece)] + decoder.close()
        general = SSEDecoder()
        assert named == [e for piece in pieces for b in range(len(piece))
                         for e in general.feed(piece[b : b + 1])] + general.close()


@pytest.mark.parametrize("chunk", [
    b"event: a\n\nevent: b\ndata: 1\ndata: 2\n\n",  # the line counts fit, the blocks do not
    b"event: a\ndata: 1\n\ndata: 2\n\n",
    b"event: a\ndata: 1\n\nevent: b\nid: 2\n\n",
    b"event: a\ndata: 1\n\n\nevent: b\ndata: 2\n\n",
    b"event: a\ndata: 1\n\ndata:event: b\ndata: 2\n\n",  # a line before the name's
    b"event: a\ndata: 1\n\nxevent: b\ndata: 2\n\n",
])
def test_named_shapes_the_fast_path_declines_still_decode(chunk: bytes) -> None:
    assert _fast([chunk]) == _general([chunk])


def test_named_events_keep_the_event_bound() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError):
        decoder.feed_data(b"event: a\ndata: small\n\nevent: b\ndata: " + b"x" * 100 + b"\n\n")


def test_the_fast_path_keeps_the_event_bound() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError):
        decoder.feed_data(b"data: small\n\ndata: " + b"x" * 100 + b"\n\n")


@pytest.mark.parametrize("chunk", [
    b"data: a\n\n\n\n",  # an empty line between events: not one of the fast path's shapes
    b"data: a\n\nevent: x\ndata: b\n\n",
    b"data: a\n\n: c\n\n",
])
def test_shapes_the_fast_path_declines_still_decode(chunk: bytes) -> None:
    assert _fast([chunk]) == _general([chunk])


def _chunked(payloads: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=12),
       st.lists(st.integers(0, 4000), max_size=6))
def test_chunked_decoding_of_whole_and_split_chunks(payloads: list[bytes],
                                                    cuts: list[int]) -> None:
    data = _chunked(payloads)
    decoder, out = Chunked(), b""
    for piece in _split(data, cuts):
        out += decoder.feed(piece)
    assert out == b"".join(payloads) and decoder.done


@pytest.mark.parametrize("body", [
    b"0x5\r\nhello\r\n0\r\n\r\n",  # a prefix int() would take
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",  # chunk data not followed by CRLF
    b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    b"\r\nhello\r\n",
])
def test_malformed_chunking_is_an_error(body: bytes) -> None:
    with pytest.raises(HTTPFormatError):
        Chunked().feed(body)


def test_chunk_extensions_and_trailers_are_read() -> None:
    decoder = Chunked()
    assert decoder.feed(b"5;name=v\r\nhello\r\n0\r\nX-T: 1\r\n") == b"hello"
    assert not decoder.done
    assert decoder.feed(b"\r\n") == b"" and decoder.done


def test_a_cr_ended_line_then_a_partial_line_keeps_the_next_lf() -> None:
    """The LF after ``data: b`` ends that line: it is not the second half of the CRLF
    the earlier CR-ended line might have begun."""
    pieces = [b"data: a\rdata: b", b"\ndata: c\n\n"]
    assert _fast(pieces) == _general(pieces) == [b"a\nb\nc"]


# -- PlainShape: a text chunk read without a full parse ---------------------------------------

_TEXT = st.text(st.sampled_from(['a', ' ', '"', '\\', '/', 'é', '日', '\n', '\u2028', '\x00',
                                 '}', ',', ':', '{']), max_size=12)
# what may stand where the text's literal stands in a later chunk: literals, and not
_MIDDLE = st.one_of(
    _TEXT.map(orjson.dumps),
    st.sampled_from([b'"a","x":"b"', b'"a"},"x":{"y":"', b'"\\u0022"', b'null', b'5',
                     b'"a" ', b'""', b'"', b'"\\"', b'["a"]', b'"a"\n', b'"\\ud800"']),
)
_LAYOUT = st.sampled_from([
    ('{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
     '[{"index":0,"delta":{"content":', '},"logprobs":null,"finish_reason":null}]}'),
    ('{"id": "c", "choices": [{"index": 0, "delta": {"content": ',
     '}, "finish_reason": null, "token_ids": null}]}'),
])


@settings(max_examples=400, deadline=None)
@given(_LAYOUT, _TEXT, _MIDDLE)
def test_a_shaped_chunk_reads_as_its_full_parse(layout: tuple[str, str], learned: str,
                                                middle: bytes) -> None:
    before, after = (part.encode() for part in layout)
    shape = PlainShape.learn(before + orjson.dumps(learned) + after, learned)
    assert shape is not None
    data = before + middle + after
    text = shape.text(data)
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        assert text is None  # never a text from a chunk that does not parse
        return
    content = parsed["choices"][0]["delta"]["content"]
    if text is not None:
        assert text == content  # the same text a full parse finds
    else:
        assert not isinstance(content, str) or middle != orjson.dumps(content)


def test_a_shape_is_not_learned_from_text_written_another_way() -> None:
    # json.dumps's default ASCII escapes: the literal differs from orjson's, so no shape
    data = b'{"choices":[{"delta":{"content":"caf\\u00e9"}}]}'
    assert PlainShape.learn(data, "café") is None
