"""The Responses API's streams: the upstream's events read into the chat chunks they amount
to (``ResponsesEvents``), and the chunks the stream state releases written back as Responses
events (``ResponsesEncoder``), items opened and closed around the released text.  No I/O.

Only deltas carry text into the stream state; the ``*.done`` events and the final response
repeat it and are not read: the client's are rebuilt from what was released, so they carry
exactly the released text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.core.events import ChoicesEncoder, EventReader
from proxy.core.protocol import StreamHead
from proxy.core.responses import chat_usage, finish_of, new_id, response_id, response_object
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
        event = self.load(data)
        kind = event["type"]
        if kind == "response.output_text.delta":
            text = event.get("delta")
            if type(text) is str and self.head:
                return text
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


@dataclass
class ResponsesEncoder(ChoicesEncoder):
    """Writes released chat chunks as Responses events: ``response.created`` first, each
    output item opened when its text begins and closed (``*.done`` with exactly the text
    sent) when another begins or the stream ends, then ``response.completed`` — or
    ``response.incomplete`` for a block — with the verdict in ``moderation``."""

    sequence: int = 0
    items: list[Json] = field(default_factory=list)  # closed and open, in order
    open: Json | None = None  # the item text is flowing into
    texts: list[str] = field(default_factory=list)  # the open item's text so far
    calls: dict[int, Json] = field(default_factory=dict)  # tool-call index -> item
    finish: str | None = None
    started: bool = False
    id: str = ""  # the response's, fixed by the first event
    kinds = (("reasoning_content", "reasoning"), ("reasoning", "reasoning"),
             ("content", "message"), ("refusal", "refusal"))

    def close(self, head: StreamHead, moderation: Json, usage: Any) -> bytes:
        out = [] if self.started else self._start(head)
        out.extend(self._close_open())
        for item in self.calls.values():
            item["status"] = "completed"
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=item["_index"], arguments=item["arguments"]))
            out.append(self._event("response.output_item.done", output_index=item["_index"],
                                   item=_public(item)))
        response = response_object(head=(self.id, head.created, head.model),
                                   output=[_public(item) for item in self.items],
                                   finish=self.finish, usage=usage, moderation=moderation)
        kind = ("response.incomplete" if response["status"] == "incomplete"
                else "response.completed")
        out.append(self._event(kind, response=response))
        return b"".join(out)

    def failure(self, head: StreamHead, error: Json, moderation: Json) -> bytes:
        """``response.failed``: the upstream broke the stream; nothing unreleased is sent."""
        out = [] if self.started else self._start(head)
        response = response_object(head=(self.id, head.created, head.model),
                                   output=[_public(item) for item in self.items], finish=None,
                                   usage=None, moderation=moderation, status="failed")
        response["error"] = {"code": "server_error", "message": error["message"]}
        out.append(self._event("response.failed", response=response))
        return b"".join(out)

    def _start(self, head: StreamHead) -> list[bytes]:
        self.started = True
        self.id = response_id(head.id)  # every event of the stream names the same one
        response = response_object(head=(self.id, head.created, head.model), output=[],
                                   finish=None, usage=None, moderation=None,
                                   status="in_progress")
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(event))

    def _text(self, kind: str, text: str) -> list[bytes]:
        out = []
        if self.open is None or self.open["_kind"] != kind:
            out.extend(self._close_open())
            out.extend(self._open(kind))
        self.texts.append(text)
        item = self.open
        assert item is not None
        name = {"reasoning": "response.reasoning_text.delta", "message":
                "response.output_text.delta", "refusal": "response.refusal.delta"}[kind]
        extra: Json = {"logprobs": []} if kind == "message" else {}
        out.append(self._event(name, item_id=item["id"], output_index=item["_index"],
                               content_index=0, delta=text, **extra))
        return out

    def _open(self, kind: str) -> list[bytes]:
        index = len(self.items)
        if kind == "reasoning":
            item: Json = {"type": "reasoning", "id": new_id("rs"), "summary": []}
        else:
            item = {"type": "message", "id": new_id("msg"), "status": "in_progress",
                    "role": "assistant", "content": []}
        self.items.append(item)
        self.open = {**item, "_kind": kind, "_index": index}
        self.texts = []
        out = [self._event("response.output_item.added", output_index=index, item=item)]
        out.append(self._event("response.content_part.added", item_id=item["id"],
                               output_index=index, content_index=0, part=_part_of(kind, "")))
        return out

    def _close_open(self) -> list[bytes]:
        if self.open is None:
            return []
        item, text, kind = self.open, "".join(self.texts), self.open["_kind"]
        self.open = None
        index, part = item["_index"], _part_of(kind, text)
        done = {"reasoning": ("response.reasoning_text.done", "text"),
                "message": ("response.output_text.done", "text"),
                "refusal": ("response.refusal.done", "refusal")}[kind]
        extra: Json = {"logprobs": []} if kind == "message" else {}
        out = [self._event(done[0], item_id=item["id"], output_index=index, content_index=0,
                           **{done[1]: text}, **extra),
               self._event("response.content_part.done", item_id=item["id"],
                           output_index=index, content_index=0, part=part)]
        final = self.items[index]
        if kind == "reasoning":
            final["content"] = [part]
        else:
            final["content"], final["status"] = [part], "completed"
        out.append(self._event("response.output_item.done", output_index=index, item=final))
        return out

    def _call(self, call: Json) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            out.extend(self._close_open())
            item = self.calls[index] = {
                "type": "function_call", "id": new_id("fc"),
                "call_id": call.get("id") or new_id("call"), "name": function.get("name") or "",
                "arguments": "", "status": "in_progress", "_index": len(self.items)}
            self.items.append(item)
            out.append(self._event("response.output_item.added", output_index=item["_index"],
                                   item=_public(item)))
        arguments = function.get("arguments") or ""
        if arguments:
            item["arguments"] += arguments
            out.append(self._event("response.function_call_arguments.delta",
                                   item_id=item["id"], output_index=item["_index"],
                                   delta=arguments))
        return out


def _part_of(kind: str, text: str) -> Json:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": []}


def _public(item: Json) -> Json:
    return {key: value for key, value in item.items() if not key.startswith("_")}
