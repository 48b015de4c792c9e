"""OpenAI's Responses API: the chat chunks the stream state releases written back as the
API's stream events (``ResponsesEncoder``).  No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.apis.responses.answer import new_id, response_id, response_object
from proxy.core.events import ChoicesEncoder
from proxy.core.protocol import StreamHead

Json = dict[str, Any]


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
                                   output=[_public(item) if "_index" in item else item
                                           for item in self.items],
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
        if kind == "message":
            out.append(self._event("response.output_text.delta", item_id=item["id"],
                                   output_index=item["_index"], content_index=0, delta=text,
                                   logprobs=[]))
        else:
            out.append(self._event(_DELTAS[kind], item_id=item["id"],
                                   output_index=item["_index"], content_index=0, delta=text))
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
        name, key = _DONE[kind]
        extra: Json = {"logprobs": []} if kind == "message" else {}
        out = [self._event(name, item_id=item["id"], output_index=index, content_index=0,
                           **{key: text}, **extra),
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


#: Each kind of output's delta event, and its done event with the key of its text.
_DELTAS = {"reasoning": "response.reasoning_text.delta", "message": "response.output_text.delta",
           "refusal": "response.refusal.delta"}
_DONE = {"reasoning": ("response.reasoning_text.done", "text"),
         "message": ("response.output_text.done", "text"),
         "refusal": ("response.refusal.done", "refusal")}


def _part_of(kind: str, text: str) -> Json:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": []}


def _public(item: Json) -> Json:
    return {key: value for key, value in item.items() if not key.startswith("_")}
