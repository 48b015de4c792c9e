"""OpenAI's Responses API: the upstream's stream events read into the chat chunks they amount
to, for the stream state to judge and release. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.apis.responses.answer import chat_usage, finish_of
from proxy.core.events import EventReader, parse
from proxy.errors import StreamFault

Json = dict[str, Any]

@dataclass
class ResponsesEvents(EventReader):
    """Reads the upstream's Responses events into the chat chunks they amount to.  Only
    deltas carry text into the stream state; the ``*.done`` events and the final
    response repeat it and are not read (the client's are rebuilt from the deltas)."""

    calls: dict[int, int] = field(default_factory=dict)  # output_index -> tool-call index

    def read(self, data: bytes) -> Json | str | None:
        """The chat chunk ``data`` amounts to; answer text as a plain string."""
        event = parse(data)
        if type(event) is dict and event.get("type") == "response.output_text.delta":
            text = event.get("delta")
            if type(text) is str and self.head:
                return text
        kind = self.typed(event)["type"]
        if kind in ("error", "response.failed"):
            raise self.failed(event.get("error") or (event.get("response") or {}).get("error")
                              or event)
        reader = _EVENTS.get(kind)
        return reader(self, event) if reader is not None else None

    def _started(self, event: Json) -> Json | None:
        response = event.get("response")
        if not isinstance(response, dict) or self.head:
            return None
        self.head = {"id": response.get("id"), "created": response.get("created_at"),
                     "model": response.get("model")}
        return {**self.head, "choices": []}

    def _item_added(self, event: Json) -> Json | None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return None
        index = self.calls[_int(event.get("output_index"))] = len(self.calls)
        return self.chunk({"tool_calls": [{
            "index": index, "id": item.get("call_id"), "type": "function",
            "function": {"name": item.get("name"), "arguments": ""}}]})

    def _arguments(self, event: Json) -> Json:
        index = self.calls.get(_int(event.get("output_index")))
        if index is None:
            raise StreamFault("upstream sent arguments for a call it never started")
        return self.chunk({"tool_calls": [{"index": index,
                                            "function": {"arguments": event.get("delta")}}]})

    def _ended(self, event: Json) -> Json:
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        finish = finish_of(response, self.calls)
        self.ended = True  # the last event: as chat's [DONE], nothing after it is read
        return self.chunk({}, finish, usage=chat_usage(response.get("usage")))


def _int(value: Any) -> int:
    if type(value) is not int:
        raise StreamFault("upstream stream event has no valid output_index")
    return value


def _text_event(key: str) -> Callable[[ResponsesEvents, Json], Json]:
    def read(events: ResponsesEvents, event: Json) -> Json:
        return events.chunk({key: event.get("delta")})
    return read


_EVENTS: dict[str, Callable[[ResponsesEvents, Json], Json | None]] = {
    "response.created": ResponsesEvents._started,
    "response.in_progress": ResponsesEvents._started,
    "response.output_item.added": ResponsesEvents._item_added,
    "response.output_text.delta": _text_event("content"),
    "response.refusal.delta": _text_event("refusal"),
    "response.reasoning_text.delta": _text_event("reasoning_content"),
    "response.reasoning_summary_text.delta": _text_event("reasoning_content"),
    "response.function_call_arguments.delta": ResponsesEvents._arguments,
    "response.completed": ResponsesEvents._ended,
    "response.incomplete": ResponsesEvents._ended,
}
