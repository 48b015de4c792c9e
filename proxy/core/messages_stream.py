"""The Messages API's streams: the upstream's events read into the chat chunks they amount
to (``MessagesEvents``), and the chunks the stream state releases written back as Messages
events (``MessagesEncoder``): a content block per run of thinking, text or a tool call, then
``message_delta`` with the stop reason (``refusal`` for a block), the usage and
``moderation``.  No I/O.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.core.events import ChoicesEncoder, EventReader
from proxy.core.messages import STOP, STOP_BACK, message_object, tool_use_id, usage_of
from proxy.core.protocol import StreamHead
from proxy.errors import StreamFault

Json = dict[str, Any]

@dataclass
class MessagesEvents(EventReader):
    """Reads the upstream's Messages events into the chat chunks they amount to."""

    calls: dict[int, int] = field(default_factory=dict)  # block index -> tool-call index
    prompt_tokens: int = 0
    ids: dict[str, str] = field(default_factory=dict)  # upstream tool_use id -> the proxy's
    inputs: dict[int, list[str]] = field(default_factory=dict)  # tool-call index -> its JSON
    stopped: bool = False  # message_delta arrived: the answer's end is known

    def read(self, data: bytes) -> Json | str | None:
        """The chat chunk ``data`` amounts to; answer text as a plain string."""
        event = self.load(data)
        kind = event["type"]
        if kind == "content_block_delta":
            delta = event.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta" and self.head:
                text = delta.get("text")
                if type(text) is str:
                    return text
        if kind == "error":
            raise self.failed(event.get("error"))
        if kind == "message_start":
            return self._start(event.get("message"))
        if kind == "content_block_start":
            return self._block(event)
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_delta":
            return self._ended(event)
        if kind == "message_stop":  # the last event, once message_delta said how it ends
            self.ended = self.stopped
        return None  # ping, content_block_stop, message_stop: the proxy writes its own

    def _start(self, message: Any) -> Json:
        message = message if isinstance(message, dict) else {}
        usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
        tokens = usage.get("input_tokens")
        self.prompt_tokens = tokens if type(tokens) is int else 0
        self.head = {"id": message.get("id"), "created": int(time.time()),
                     "model": message.get("model")}
        return {**self.head, "choices": []}

    def _block(self, event: Json) -> Json | None:
        """A block's start; text already in it (servers send none) is read like a delta."""
        block = _object(event, "content_block")
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return self.chunk({"content": block["text"]})
        if kind == "thinking" and block.get("thinking"):
            return self.chunk({"reasoning_content": block["thinking"]})
        if kind != "tool_use":
            return None
        index = self.calls[_index(event)] = len(self.calls)
        self.inputs[index] = []
        return self.chunk({"tool_calls": [{"index": index,
                                            **tool_use_id(block.get("id"), self.ids),
                                            "type": "function",
                                            "function": {"name": block.get("name"),
                                                         "arguments": ""}}]})

    def _delta(self, event: Json) -> Json | None:
        delta = _object(event, "delta")
        kind = delta.get("type")
        if kind == "text_delta":
            return self.chunk({"content": delta.get("text")})
        if kind == "thinking_delta":
            return self.chunk({"reasoning_content": delta.get("thinking")})
        if kind == "input_json_delta":
            index = self.calls.get(_index(event))
            if index is None:
                raise StreamFault("upstream sent input for a tool call it never started")
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                self.inputs[index].append(piece)
            return self.chunk({"tool_calls": [{"index": index, "function": {
                "arguments": piece}}]})
        return None  # signatures (the proxy gives its own), citations (not relayed)

    def _ended(self, event: Json) -> Json:
        for pieces in self.inputs.values():  # each call's input, complete: an object?
            given = "".join(pieces)
            if given.strip() and not _json_object(given):
                raise StreamFault("upstream tool call input is not a JSON object")
        delta, usage = _object(event, "delta"), _object(event, "usage")
        tokens = usage.get("output_tokens")
        self.stopped = True
        return self.chunk({}, STOP.get(delta.get("stop_reason") or "", "stop"),
                           usage={"prompt_tokens": self.prompt_tokens,
                                  "completion_tokens": tokens if type(tokens) is int else 0})


def _object(event: Json, key: str) -> Json:
    value = event.get(key)
    return value if isinstance(value, dict) else {}


def _json_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def _index(event: Json) -> int:
    index = event.get("index")
    if type(index) is not int:
        raise StreamFault("upstream stream event has no valid block index")
    return index


@dataclass
class MessagesEncoder(ChoicesEncoder):
    """Writes released chat chunks as Messages events: ``message_start``, a content block
    per run of thinking, text or a tool call, then ``message_delta`` (the stop reason —
    ``refusal`` for a block —, the usage and ``moderation``) and ``message_stop``."""

    blocks: int = 0  # blocks started
    open: str | None = None  # the kind of the open block: thinking, text, tool
    calls: dict[int, int] = field(default_factory=dict)  # tool-call index -> block index
    finish: str | None = None
    started: bool = False
    kinds = (("reasoning_content", "thinking"), ("reasoning", "thinking"), ("content", "text"),
             ("refusal", "text"))

    def close(self, head: StreamHead, moderation: Json, usage: Any) -> bytes:
        out = [] if self.started else self._start(head)
        out.extend(self._stop())
        counts = usage_of(usage)
        out.append(_event("message_delta", delta={
            "stop_reason": STOP_BACK.get(self.finish or "", "end_turn"), "stop_sequence": None},
            usage={"output_tokens": counts["output_tokens"],
                   "input_tokens": counts["input_tokens"]}, moderation=moderation))
        out.append(_event("message_stop"))
        return b"".join(out)

    def failure(self, head: StreamHead, error: Json, moderation: Json) -> bytes:
        out = [] if self.started else self._start(head)
        out.append(_event("error", error={"type": "api_error", "message": error["message"],
                                          "moderation": moderation}))
        return b"".join(out)

    def _start(self, head: StreamHead) -> list[bytes]:
        self.started = True
        message = message_object(head.id, head.model, [], None, None, None)
        message["stop_reason"] = None
        return [_event("message_start", message=message)]

    def _text(self, kind: str, text: str) -> list[bytes]:
        out = []
        if self.open != kind:
            out.extend(self._stop())
            block = ({"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                     else {"type": "text", "text": ""})
            out.append(self._begin(kind, block))
        delta = ({"type": "thinking_delta", "thinking": text} if kind == "thinking"
                 else {"type": "text_delta", "text": text})
        out.append(_event("content_block_delta", index=self.blocks - 1, delta=delta))
        return out

    def _begin(self, kind: str, block: Json) -> bytes:
        self.open = kind
        self.blocks += 1
        return _event("content_block_start", index=self.blocks - 1, content_block=block)

    def _stop(self) -> list[bytes]:
        if self.open is None:
            return []
        out = []
        if self.open == "thinking":
            out.append(_event("content_block_delta", index=self.blocks - 1, delta={
                "type": "signature_delta", "signature": os.urandom(16).hex()}))
        out.append(_event("content_block_stop", index=self.blocks - 1))
        self.open = None
        return out

    def _call(self, call: Json) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.calls:
            out.extend(self._stop())
            out.append(self._begin("tool", {
                "type": "tool_use", "id": call.get("id") or f"toolu_{os.urandom(12).hex()}",
                "name": function.get("name") or "", "input": {}}))
            self.calls[index] = self.blocks - 1
        arguments = function.get("arguments") or ""
        if arguments:
            out.append(_event("content_block_delta", index=self.calls[index], delta={
                "type": "input_json_delta", "partial_json": arguments}))
        return out


def _event(kind: str, **fields: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **fields}))
