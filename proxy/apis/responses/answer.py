"""OpenAI's Responses API: a whole upstream answer read into a chat completion, the rebuilt
completion written back in the API's shape, and its block answer. No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from proxy.core.fields import is_token
from proxy.core.ids import random_hex
from proxy.core.request import ChatRequest
from proxy.errors import (
    ShapeError,
)

Json = dict[str, Any]

# -- whole answers -------------------------------------------------------------------------


def chat_of_response(data: Json) -> Json:
    """The chat completion a Responses answer amounts to (its judged and structural
    fields; ``read_completion`` then rebuilds and types it)."""
    if not isinstance(data.get("output"), list):
        raise ShapeError("upstream answer is not a response")
    message: Json = {"role": "assistant"}
    reasoning, content, refusal, calls = [], [], [], []
    for item in data["output"]:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "reasoning":
            reasoning.extend(_texts(item.get("summary")) + _texts(item.get("content")))
        elif kind == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    content.append(part.get("text"))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusal.append(part.get("refusal"))
        elif kind == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"),
                                       "arguments": item.get("arguments")}})
    if reasoning:
        message["reasoning_content"] = "".join(t for t in reasoning if isinstance(t, str))
    message["content"] = "".join(t for t in content if isinstance(t, str)) if content else None
    if refusal:
        message["refusal"] = "".join(t for t in refusal if isinstance(t, str))
    if calls:
        message["tool_calls"] = calls
    return {"id": data.get("id"), "object": "chat.completion", "created": data.get("created_at"),
            "model": data.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_of(data, calls)}],
            "usage": chat_usage(data.get("usage"))}


def _texts(parts: Any) -> list[str]:
    return [part["text"] for part in parts or []
            if isinstance(part, dict) and isinstance(part.get("text"), str)]


def finish_of(data: Json, calls: Collection[Any]) -> str:
    details = data.get("incomplete_details")
    if data.get("status") == "incomplete" and isinstance(details, dict) \
            and details.get("reason") == "max_output_tokens":
        return "length"
    return "tool_calls" if calls else "stop"


def chat_usage(usage: Any) -> Json | None:
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens")}


def response_of_chat(chat: Json, request: ChatRequest, moderation: Json) -> Json:
    """The client's response, built from the rebuilt (judged) chat completion."""
    (choice,) = chat["choices"][:1] or [{"message": {}, "finish_reason": "stop"}]
    builder = _Output()
    message = choice["message"]
    if message.get("reasoning_content"):
        builder.reasoning(message["reasoning_content"])
    if message.get("content") or message.get("refusal"):
        builder.message(message.get("content") or "", message.get("refusal"))
    for call in message.get("tool_calls") or []:
        builder.call(call["id"], call["function"]["name"], call["function"]["arguments"])
    return response_object(head=(chat["id"], chat["created"], chat["model"]), output=builder.items,
                           finish=choice["finish_reason"], usage=chat.get("usage"),
                           moderation=moderation)


def blocked_response(model: str, message: str, moderation: Json) -> Json:
    """A whole response standing in for a blocked prompt."""
    builder = _Output()
    builder.message(message, None)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return response_object(head=(new_id("resp"), int(time.time()), model), output=builder.items,
                           finish="content_filter", usage=zero, moderation=moderation)


def response_object(*, head: tuple[str, int, str], output: list[Json], finish: str | None,
                    usage: Any, moderation: Json | None, status: str | None = None) -> Json:
    reason = {"content_filter": "content_filter", "length": "max_output_tokens"}.get(finish or "")
    body: Json = {
        "id": response_id(head[0]), "object": "response", "created_at": head[1], "model": head[2],
        "status": status or ("incomplete" if reason else "completed"),
        "incomplete_details": {"reason": reason} if reason else None,
        "error": None, "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "usage": _responses_usage(usage),
    }
    if moderation is not None:
        body["moderation"] = moderation
    return body


def _responses_usage(usage: Any) -> Json | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def response_id(given: str) -> str:
    """The upstream's response id, or the proxy's own when it is not one (a chat id, or
    not a token)."""
    return given if given.startswith("resp_") and is_token(given) else new_id("resp")


def _count(usage: Json, key: str) -> int:
    value = usage.get(key)
    return value if type(value) is int else 0


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_hex(16)}"


@dataclass
class _Output:
    """A response's ``output`` items, built from judged text."""

    items: list[Json] = field(default_factory=list)

    def reasoning(self, text: str) -> None:
        self.items.append({"type": "reasoning", "id": new_id("rs"), "summary": [],
                           "content": [{"type": "reasoning_text", "text": text}]})

    def message(self, text: str, refusal: str | None) -> None:
        content: list[Json] = []
        if text:
            content.append({"type": "output_text", "text": text, "annotations": []})
        if refusal:
            content.append({"type": "refusal", "refusal": refusal})
        self.items.append({"type": "message", "id": new_id("msg"), "status": "completed",
                           "role": "assistant", "content": content})

    def call(self, call_id: str | None, name: str, arguments: str) -> None:
        self.items.append({"type": "function_call", "id": new_id("fc"),
                           "call_id": call_id or new_id("call"), "name": name,
                           "arguments": arguments, "status": "completed"})
