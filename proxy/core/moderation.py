"""Stream moderation state: what the upstream sent, what the client got.  No I/O.

``StreamState`` reads each upstream chunk once (orjson) into what the guard judges
(``answer.ChoiceText``) and what may reach the client (``answer.Delta``).  What the
client gets is built from those, never relayed: released events are merged into one
chunk per choice, the way the SDKs' own stream accumulation would merge them, so a
window of text goes out as one small chunk instead of one per token.  An upstream
field the proxy does not understand therefore never reaches the client; each one
with a value is counted in ``removed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import BlockPolicy
from proxy.core.answer import Removed, head_fields, usage_numbers
from proxy.core.chunks import PlainShape, plain_text
from proxy.core.deltas import (
    CHUNK_TOP,
    ChoiceText,
    Delta,
    Outgoing,
    carries_judged,
    choice_index,
    only_finish,
    outgoing,
    plain_of,
    read_delta,
)
from proxy.core.events import Encoder, Reader
from proxy.core.ledger import Ledger, ReleaseError, Ticket, block_message
from proxy.core.policy import Outcome
from proxy.core.protocol import StreamHead, delta_choice, upstream_stream_fault
from proxy.core.sse import DONE, DONE_EVENT, encode
from proxy.errors import ShapeError, StreamFault

#: One event as kept until released: the common case, text for the first choice
#: only, as a plain string; anything else as its choices' deltas.
Event = str | list[Delta]


@dataclass(slots=True)
class StreamState:
    """The upstream's events, read, and what of them went to the client.

    What may go out, and when, is the ``ledger``'s to say (``proxy.core.ledger``): each
    event is an entry there, judged input or not, held or not (a tool call, a function
    call, a citation, a finish reason, or any choice but the first wait for the end).
    ``drain`` writes what the ledger allows now, ``ending`` what ends the stream.
    """

    model: str
    choices_allowed: int = 1  # the request's n: a higher choice index is malformed
    prefill: str = ""  # a trailing assistant message the answer continues
    secrets: tuple[str, ...] = ()  # never shown, even inside an upstream's error text
    head: StreamHead | None = None
    choices: dict[int, ChoiceText] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # bytes of each event as it came
    ledger: Ledger = field(default_factory=Ledger)
    usage: Any = None  # the upstream's usage numbers, when it sent them
    generated: int = 0  # upstream chunks that carried generated output: tokens, about
    started: set[int] = field(default_factory=set)  # choices whose first delta went out
    released_any: bool = False
    held: int = 0  # bytes of the events not released yet
    removed: Removed = field(default_factory=Removed)
    shape: PlainShape | None = None  # learned from the stream's first plain text chunk
    _learning: int = 4  # plain chunks that may still teach one (a server may not fit)
    # another API's wire format: what the released chunks become (None: chat chunks)
    encoder: Encoder | None = None

    @property
    def done(self) -> bytes:
        """What follows the last event: chat's ``[DONE]``; nothing for other APIs."""
        return DONE_EVENT if self.encoder is None else b""

    def failure(self, error: dict[str, Any], ending: Ending, moderation: dict[str, Any],
                usage: Any) -> bytes:
        """An in-band error ending a started stream, the verdict inside it, then (chat,
        when asked for) the trailing chunk.  Nothing held back goes out any more."""
        self.ledger.abandon()
        if self.encoder is not None:
            return self.encoder.failure(self.stream_head(), error, moderation)
        body = b"data: " + orjson.dumps({"error": {**error, "moderation": moderation}}) + b"\n\n"
        return body + (self.closing_chunk(moderation, usage) if ending.trailing else b"")

    def feed_events(self, events: list[bytes], reader: Reader | None = None) -> bool:
        """Take one read's decoded ``data:`` payloads (another API's events when ``reader``
        reads them into chat chunks); True once ``[DONE]`` (or the other API's last event)
        arrived: what follows it is not read.  A run of plain text events (the usual
        event: one token) becomes one entry: checks start only between reads, so what a
        check covers is the same, at a fraction of the bookkeeping."""
        run: list[str] = []
        size = 0
        shape, loads = self.shape, orjson.loads
        for data in events:
            text: Any = None
            # the usual event, a token: ``PlainShape.text``, inlined
            if shape is not None and data.startswith(shape.before) \
                    and data.endswith(shape.after):
                middle = data[len(shape.before) : len(data) - len(shape.after)]
                if len(middle) > 1 and middle[0] == 0x22:
                    try:  # not contextlib.suppress: a context per token costs
                        text = loads(middle)
                    except orjson.JSONDecodeError:  # read whole below, which names it
                        text = None
            elif data == DONE:
                self._add_run(run, size)
                return True
            elif reader is not None:
                text = reader.read(data)
            if type(text) is str:
                if self.head is None:
                    raise StreamFault("upstream stream sent text before it began")
                run.append(text)
                size += len(data)
                continue
            self._add_run(run, size)
            run, size = [], 0
            if reader is None:
                self._take_chunk(self._load(data), data)
                shape = self.shape  # the first plain chunks teach it
                continue
            if text is not None:
                self.feed_chunk(text, len(data))
            if reader.ended:  # the API's last event: its [DONE]
                return True
        self._add_run(run, size)
        return False

    def _plain_event(self, data: bytes) -> str | None:
        """The text of a chunk shaped as the stream's plain text chunks (read without
        parsing the chunk), else None."""
        return self.shape.text(data) if self.shape is not None else None

    def _add_run(self, run: list[str], size: int) -> None:
        if run:
            self._add_text(run[0] if len(run) == 1 else "".join(run), size, len(run))

    def feed_chunk(self, chunk: dict[str, Any], size: int) -> None:
        """Take one chat chunk another API's event was read into (``size``: its bytes)."""
        if self.head is None:
            self.head = StreamHead.of(head_fields(chunk, self.removed), self.model)
        self._feed(chunk, chunk.get("choices"), size)

    def feed(self, data: bytes) -> None:
        """Take one upstream ``data:`` payload (not ``[DONE]``)."""
        text = self._plain_event(data)
        if text is not None:
            self._add_text(text, len(data))
        else:
            self._take_chunk(self._load(data), data)

    def _take_chunk(self, chunk: dict[str, Any], data: bytes) -> None:
        choices = chunk.get("choices")
        # The common case first: a chunk of known keys only, one plain text delta.
        if (self.head is not None and type(choices) is list and len(choices) == 1
                and chunk.keys() <= CHUNK_TOP and chunk.get("usage") is None):
            text = plain_text(choices[0])
            if text is not None:
                self._add_text(text, len(data))
                if self._learning:  # no shape yet, or one this chunk did not have
                    self._learning -= 1
                    self.shape = PlainShape.learn(data, text) or self.shape
                return
        self._feed(chunk, choices, len(data), data)

    def _add_text(self, text: str, size: int, tokens: int = 1) -> None:
        first = self.choices.get(0) or self._choice(0)
        first.parts.content.append(text)
        first.length += len(text)
        self.generated += tokens
        self.events.append(text)
        self.sizes.append(size)
        ledger = self.ledger  # ``Ledger.add``, inlined: the usual event
        if ledger.closed:
            raise ReleaseError("an event after the answer's end")
        ledger.judged += 1
        ledger.marks.append(ledger.judged)
        ledger.ends.append(first.length)
        self.held += size

    def _feed(self, chunk: dict[str, Any], choices: Any, size: int, data: bytes = b"") -> None:
        if self.head is None:  # the first chunk: its head, then as any other
            self.head = StreamHead.of(head_fields(chunk, self.removed), self.model)
            self._take_chunk(chunk, data)
            return
        if type(choices) is not list:
            raise StreamFault("upstream chunk has no 'choices' array")
        if not chunk.keys() <= CHUNK_TOP:
            self.removed.extra(chunk, CHUNK_TOP)
        if chunk.get("usage") is not None:
            self.usage = usage_numbers(chunk["usage"], self.removed)
        if not choices:
            return  # a usage chunk: its numbers join the closing chunk
        try:
            event, held = self._event(choices)
        except ShapeError as exc:
            raise StreamFault(str(exc)) from exc
        self._keep(event, size, held=held)

    def _keep(self, deltas: list[Delta], size: int, *, held: bool) -> None:
        text = plain_of(deltas)  # a text delta of a chunk the fast path did not take
        judged = bool(text) if text is not None else carries_judged(deltas)
        self.ledger.add(judged=judged, held=held, chars=self.length())
        self.events.append(deltas if text is None else text)
        self.sizes.append(size)
        self.held += size

    def _event(self, choices: list[Any]) -> tuple[list[Delta], bool]:
        deltas, held = [], False
        for choice in choices:
            index = choice_index(choice, self.choices_allowed)
            delta = read_delta(choice, index, self.removed)
            (self.choices.get(index) or self._choice(index)).add(delta, self.removed)
            deltas.append(delta)
            held |= delta.held or index != 0
        if any(d.texts or d.calls or d.function_call is not None or d.transcript
               for d in deltas):
            self.generated += 1
        return deltas, held

    def _choice(self, index: int) -> ChoiceText:
        state = self.choices[index] = ChoiceText()
        return state

    def _load(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StreamFault("upstream sent an unreadable stream chunk") from exc
        if type(chunk) is not dict:
            raise StreamFault("upstream stream chunk is not an object")
        if "error" in chunk:
            raise upstream_stream_fault(chunk["error"], self.secrets)
        return chunk

    def length(self) -> int:
        """Characters of the first choice's streamed text so far: what the windows count."""
        first = self.choices.get(0)
        return first.length if first is not None else 0

    def text(self) -> str:
        first = self.choices.get(0)
        return first.parts.text(self.prefill) if first is not None else self.prefill

    def texts(self) -> list[str]:
        return [self.choices[i].parts.text(self.prefill) if i in self.choices else self.prefill
                for i in self.indices()]

    def indices(self) -> list[int]:
        return sorted(self.choices) or [0]

    def finished(self) -> bool:
        return any(choice.finish_reason for choice in self.choices.values())

    # -- checks and releases: the ledger decides, this side writes ---------------------

    def check_due(self) -> bool:
        """Whether a window check should start now."""
        return self.ledger.due(self.length())

    def start_check(self) -> tuple[Ticket, list[str]]:
        """A window check: its ticket and the texts it judges (every choice's, whole)."""
        return self.ledger.start(self.length()), self.texts()

    def final_check(self) -> tuple[Ticket, list[str]] | None:
        """The final check once the upstream's answer is all here, or None when a passing
        check already covered all of it."""
        self.ledger.close()
        ticket = self.ledger.final()
        return None if ticket is None else (ticket, self.texts())

    def verdict(self) -> list[Outcome]:
        """The outcomes that decide the answer: the blocking check's, else the last
        passing check's (one per choice when it was the final check)."""
        ledger = self.ledger
        return ledger.blocked or ledger.passed or []

    def drain(self) -> bytes:
        """What the ledger lets go out now (a window's text ends at a word boundary)."""
        ledger = self.ledger
        stop = ledger.releasable()
        if stop <= ledger.sent:
            return b""
        stop, at = ledger.word_cut(stop, self._plain_text_of)
        if at is not None:
            self._split(stop, at)
            stop += 1
        return self._take(stop)

    def _plain_text_of(self, index: int) -> str | None:
        event = self.events[index]
        return event if type(event) is str else None

    def _split(self, index: int, at: int) -> None:
        text = self.events[index]
        assert type(text) is str
        self.events[index : index + 1] = [text[:at], text[at:]]
        self.sizes[index : index + 1] = [0, self.sizes[index]]
        self.ledger.split(index, at)

    def _take(self, stop: int, last: dict[str, Any] | None = None, *,
              ending: bool = False) -> bytes:
        start = self.ledger.sent
        if stop <= start:
            return self._verdict_chunk(last)
        self.ledger.release(stop, ending=ending)  # refuses what it does not allow
        batch = self.events[start:stop]
        self.held -= sum(self.sizes[start:stop])
        texts = [event for event in batch if type(event) is str]
        if len(texts) == len(batch):  # text of the first choice only: one plain chunk
            return self._text_chunk("".join(texts), None, last)
        final = batch[-1]
        if len(texts) == len(batch) - 1 and isinstance(final, list) and only_finish(final):
            return self._text_chunk("".join(texts), final[0].finish_reason, last)
        merged: dict[int, Outgoing] = {}
        run: list[str] = []  # consecutive plain text events, added at once
        for event in batch:
            if isinstance(event, str):
                run.append(event)
                continue
            if run:
                outgoing(merged, 0).add_content("".join(run))
                run = []
            for delta in event:
                outgoing(merged, delta.index).add(delta)
        if run:
            outgoing(merged, 0).add_content("".join(run))
        choices = [c for c in (self._choice_of(merged[i]) for i in sorted(merged)) if c]
        if not choices:
            return self._verdict_chunk(last)
        return self._chunks([[choice] for choice in choices], last)

    def _text_chunk(self, text: str, finish_reason: str | None = None,
                    last: dict[str, Any] | None = None) -> bytes:
        delta = {"content": text} if 0 in self.started else {"role": "assistant",
                                                             "content": text}
        self.started.add(0)
        self.released_any = True
        choice = delta_choice(0, delta, finish_reason)
        if self.encoder is not None:
            return self.encoder.chunk(self.stream_head(), [choice])
        if last:
            return encode(self.stream_head().chunk([choice], **last))
        return encode(self.stream_head().chunk([choice]))

    def _choice_of(self, out: Outgoing) -> dict[str, Any] | None:
        choice = out.choice(first=out.index not in self.started)
        if choice is not None:
            self.started.add(out.index)
            self.released_any = True
        return choice

    def _chunks(self, choices: list[list[dict[str, Any]]], last: dict[str, Any] | None
                ) -> bytes:
        """One chunk per list of choices, ``last``'s fields on the last one."""
        head = self.stream_head()
        if self.encoder is not None:
            return b"".join(self.encoder.chunk(head, one) for one in choices)
        out = [encode(head.chunk(one)) for one in choices[:-1]]
        return b"".join(out) + encode(head.chunk(choices[-1], **(last or {})))

    def _verdict_chunk(self, last: dict[str, Any] | None) -> bytes:
        """Nothing left to send, but the verdict must ride on a chunk with choices: an
        empty delta of the first choice."""
        if not last or self.encoder is not None:
            return b""
        delta = {} if 0 in self.started else {"role": "assistant", "content": ""}
        self.started.add(0)
        return self._chunks([[delta_choice(0, delta)]], last)

    def stream_head(self) -> StreamHead:
        if self.head is None:
            self.head = StreamHead.new(self.model)
        return self.head

    def closing_chunk(self, moderation: dict[str, Any], usage: Any = None) -> bytes:
        """The trailing chunk: ``choices: []``, the usage when there is one, moderation."""
        extra = {"moderation": moderation}
        if usage is not None:
            extra = {"usage": usage, **extra}
        return encode(self.stream_head().chunk([], **extra))

    def usage_for(self, asked: bool) -> Any:
        """The usage to report: the upstream's own numbers when it sent them; else, when
        the client asked, what is known — the chunks of output received, one token each
        on the usual servers, and no prompt count (the proxy does not tokenize)."""
        if self.usage is not None or not asked:
            return self.usage
        return {"prompt_tokens": 0, "completion_tokens": self.generated,
                "total_tokens": self.generated}

    def ending(self, moderation: dict[str, Any], ending: Ending, block: BlockPolicy) -> bytes:
        """What closes the stream, before ``[DONE]``: the rest of the answer once a
        passing check covered all of it — or, when a check blocked it, the blocked
        ending — with the verdict on its last chunk, which has choices; then, when the
        client asked for it, the trailing ``choices: []`` chunk with the verdict again
        and the usage (a client library that drops empty chunks still finds the verdict)."""
        last = {"moderation": moderation}
        blocked = self.ledger.blocked
        if blocked is not None:
            body = self.blocked_tail(block_message(blocked, block), last)
        elif self.ledger.whole:
            body = self._take(len(self.events), last, ending=True)
        else:
            raise ReleaseError("the end of an answer no passing check covered")
        return self._closed(body, moderation, ending)

    def prompt_blocked(self, moderation: dict[str, Any], ending: Ending, message: str) -> bytes:
        """The whole stream of a request whose prompt was blocked: the block message."""
        self.ledger.abandon()  # no answer: nothing of an upstream's can go out
        return self._closed(self.blocked_tail(message, {"moderation": moderation}),
                            moderation, ending)

    def _closed(self, body: bytes, moderation: dict[str, Any], ending: Ending) -> bytes:
        if self.encoder is not None:  # the API's own last event carries the verdict
            return body + self.encoder.close(self.stream_head(), moderation,
                                             self.usage_for(True))
        if ending.trailing:
            body += self.closing_chunk(moderation, self.usage_for(ending.usage))
        return body

    def blocked_tail(self, message: str, last: dict[str, Any] | None = None) -> bytes:
        """What ends a blocked stream: the block message if nothing was released,
        then each choice finishing with ``content_filter``."""
        chunks: list[list[dict[str, Any]]] = []
        for index in self.indices():
            if not self.released_any:
                chunks.append([delta_choice(index, {"role": "assistant", "content": message})])
            chunks.append([delta_choice(index, {}, "content_filter")])
        return self._chunks(chunks, last)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a stream closes.  The verdict always rides on the last chunk with choices,
    so a loop reading ``chunk.choices[0]`` never meets an empty list.  ``trailing``: a
    ``choices: []`` chunk follows, with the verdict again (the client set
    ``stream_options.include_usage`` or sent ``moderation``, or the tenant always sends
    it).  ``usage``: the client asked for usage, which the trailing chunk then carries."""

    trailing: bool = False
    usage: bool = False
