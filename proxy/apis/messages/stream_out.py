"""Anthropic's Messages API: the chat chunks the stream state releases written back as the
API's stream events (``MessagesEncoder``).  No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.apis.messages.answer import STOP_BACK, message_object, usage_of
from proxy.core.events import ChoicesEncoder
from proxy.core.ids import random_hex
from proxy.core.protocol import StreamHead

Json = dict[str, Any]


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
                "type": "signature_delta", "signature": random_hex(16)}))
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
                "type": "tool_use", "id": call.get("id") or f"toolu_{random_hex(12)}",
                "name": function.get("name") or "", "input": {}}))
            self.calls[index] = self.blocks - 1
        arguments = function.get("arguments") or ""
        if arguments:
            out.append(_event("content_block_delta", index=self.calls[index], delta={
                "type": "input_json_delta", "partial_json": arguments}))
        return out


def _event(kind: str, **fields: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **fields}))
