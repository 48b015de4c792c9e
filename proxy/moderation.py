"""Stream moderation state: what the upstream sent, what the client got.  No I/O.

``StreamState`` reads each upstream chunk once (orjson) for the text the guard
needs, and keeps the chunk's bytes as they came for relaying: a chunk is never
re-serialised, except the closing usage chunk that the ``moderation`` object joins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .conversation import tool_call_texts
from .protocol import StreamHead, delta_choice
from .sse import encode


class StreamFault(Exception):
    """The upstream stream cannot be relayed: an error event or an unreadable chunk."""

    def __init__(self, message: str, *, error: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error  # the upstream's own error object, when it sent one


@dataclass(slots=True)
class ToolCallState:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def as_message(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": "".join(self.arguments)}
        return {"id": self.id, "type": "function", "function": function}


@dataclass(slots=True)
class ChoiceState:
    parts: list[str] = field(default_factory=list)
    length: int = 0  # characters of content and refusal so far
    tool_calls: dict[int, ToolCallState] = field(default_factory=dict)
    finish_reason: str | None = None

    def text(self) -> str:
        """The judged text: content and refusal, then the tool calls."""
        calls = [self.tool_calls[i].as_message() for i in sorted(self.tool_calls)]
        return "\n\n".join(t for t in ["".join(self.parts), *tool_call_texts(calls)] if t)

    def add(self, choice: dict[str, Any]) -> bool:
        """Take one chunk's choice; True when it must wait for the final check."""
        delta = choice.get("delta")
        held = False
        if type(delta) is dict:
            content = delta.get("content")
            if type(content) is str:
                self.parts.append(content)
                self.length += len(content)
            refusal = delta.get("refusal")
            if type(refusal) is str:
                self.parts.append(refusal)
                self.length += len(refusal)
            calls = delta.get("tool_calls")
            if type(calls) is list:
                self._add_tool_calls(calls)
                held = True
        reason = choice.get("finish_reason")
        if reason is not None:
            self.finish_reason = reason
            held = True
        return held

    def _add_tool_calls(self, calls: list[Any]) -> None:
        for call in calls:
            if not isinstance(call, dict):
                continue
            state = self.tool_calls.setdefault(call.get("index", 0), ToolCallState())
            state.id = call.get("id") or state.id
            function = call.get("function")
            if isinstance(function, dict):
                state.name += function.get("name") or ""
                state.arguments.append(function.get("arguments") or "")


@dataclass(slots=True)
class StreamState:
    """The upstream's chunks, kept as received, and how many went to the client.

    Text is released in event order up to a *barrier*: the first event that must
    wait for the final check (a tool-call delta, a finish reason, or any choice but
    the first, whose text the windows do not judge).
    """

    model: str
    head: StreamHead | None = None
    choices: dict[int, ChoiceState] = field(default_factory=dict)
    events: list[bytes] = field(default_factory=list)  # data payloads, in arrival order
    ends: list[int] = field(default_factory=list)  # first choice's length after each event
    sent: int = 0  # events released so far
    barrier: int | None = None
    closing: dict[str, Any] | None = None  # the upstream's usage chunk, if any
    released_any: bool = False
    held: int = 0  # bytes of the events not released yet

    def feed(self, data: bytes) -> None:
        """Take one upstream ``data:`` payload (not ``[DONE]``)."""
        chunk = _load_chunk(data)
        if self.head is None:
            self.head = _head(chunk, self.model)
        choices = chunk.get("choices")
        if type(choices) is not list:
            raise StreamFault("upstream chunk has no 'choices' array")
        first: ChoiceState | None
        if len(choices) == 1 and type(choices[0]) is dict and choices[0].get("index", 0) == 0:
            first = self.choices.get(0) or self.choices.setdefault(0, ChoiceState())
            held = first.add(choices[0])  # the common case: one choice, the first
        elif not choices and chunk.get("usage") is not None:
            self.closing = chunk  # the moderation object joins it at the end
            return
        else:
            held = self._add(choices)
            first = self.choices.get(0)
        if held and self.barrier is None:
            self.barrier = len(self.events)
        self.events.append(data)
        self.ends.append(first.length if first is not None else 0)
        self.held += len(data)

    def _add(self, choices: list[Any]) -> bool:
        held = False
        for choice in choices:
            if type(choice) is dict:
                index = choice.get("index", 0)
                state = self.choices.get(index)
                if state is None:  # not setdefault: that would build a state per chunk
                    state = self.choices[index] = ChoiceState()
                held |= state.add(choice) or index != 0
        return held

    def length(self) -> int:
        """Characters of the first choice's text so far: what the windows count."""
        first = self.choices.get(0)
        return first.length if first is not None else 0

    def text(self) -> str:
        first = self.choices.get(0)
        return first.text() if first is not None else ""

    def texts(self) -> list[str]:
        return [self.choices[i].text() for i in self.indices()]

    def indices(self) -> list[int]:
        return sorted(self.choices) or [0]

    def finished(self) -> bool:
        return any(choice.finish_reason for choice in self.choices.values())

    def release(self, upto: int) -> bytes:
        """The events before ``upto`` not yet sent, stopping at the barrier."""
        stop = upto if self.barrier is None else min(upto, self.barrier)
        return self._take(stop)

    def release_all(self) -> bytes:
        return self._take(len(self.events))

    def released_chars(self) -> int:
        return self.ends[self.sent - 1] if self.sent else 0

    def _take(self, stop: int) -> bytes:
        if stop <= self.sent:
            return b""
        count = stop - self.sent
        out = b"data: " + b"\n\ndata: ".join(self.events[self.sent : stop]) + b"\n\n"
        self.held -= len(out) - 8 * count
        self.sent = stop
        self.released_any = True
        return out

    def usage(self) -> Any:
        return self.closing.get("usage") if self.closing else None

    def stream_head(self) -> StreamHead:
        if self.head is None:
            self.head = StreamHead.new(self.model)
        return self.head

    def closing_chunk(self, moderation: dict[str, Any]) -> bytes:
        """The last chunk: ``choices: []``, the usage if the upstream sent it, moderation."""
        if self.closing is not None:
            return encode(orjson.dumps({**self.closing, "moderation": moderation}))
        return encode(self.stream_head().chunk([], moderation=moderation))

    def blocked_tail(self, message: str) -> bytes:
        """What ends a blocked stream: the block message if nothing was released,
        then each choice finishing with ``content_filter``."""
        head = self.stream_head()
        events = []
        for index in self.indices():
            if not self.released_any:
                delta = {"role": "assistant", "content": message}
                events.append(encode(head.chunk([delta_choice(index, delta)])))
            events.append(encode(head.chunk([delta_choice(index, {}, "content_filter")])))
        return b"".join(events)


@dataclass(slots=True)
class WindowSchedule:
    """When the next check of a streamed response is due.

    The first window is ``first`` characters; each later one doubles, up to
    ``cap``.  A check covers all the text received when it starts, so with a slow
    guard the windows widen by themselves; the next one is due ``size`` characters
    after the end of the last.  ``never()`` is the buffer mode: one final check.
    """

    first: int
    cap: int
    size: int = 0
    due_at: float = 0

    def __post_init__(self) -> None:
        self.size = self.first
        self.due_at = self.first

    @classmethod
    def never(cls) -> WindowSchedule:
        schedule = cls(first=1, cap=1)
        schedule.due_at = float("inf")
        return schedule

    def due(self, length: int) -> bool:
        return length >= self.due_at

    def checked(self, length: int) -> None:
        self.size = min(self.size * 2, self.cap)
        self.due_at = length + self.size


def _load_chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StreamFault("upstream sent an unreadable stream chunk") from exc
    if type(chunk) is not dict:
        raise StreamFault("upstream stream chunk is not an object")
    if "error" in chunk:
        raise StreamFault("upstream reported an error mid-stream", error=chunk["error"])
    return chunk


def _head(chunk: dict[str, Any], model: str) -> StreamHead:
    fresh = StreamHead.new(model)
    id_, created, name = chunk.get("id"), chunk.get("created"), chunk.get("model")
    return StreamHead(
        id=id_ if isinstance(id_, str) else fresh.id,
        created=created if isinstance(created, int) else fresh.created,
        model=name if isinstance(name, str) else fresh.model,
    )
