"""Anthropic's Messages API: the upstream's stream events read into the chat chunks they amount
to, for the stream state to judge and release. No I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.apis.messages.answer import STOP, tool_use_id
from proxy.core.events import EventReader, parse
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
        event = parse(data)
        if type(event) is dict and event.get("type") == "content_block_delta":
            delta = event.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta" and self.head:
                text = delta.get("text")
                if type(text) is str:
                    return text
        kind = self.typed(event)["type"]
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
