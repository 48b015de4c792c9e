"""Anthropic's Messages API: a whole upstream answer read into a chat completion, the rebuilt
completion written back in the API's shape, and its block answer and Anthropic's error
shape. No I/O.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.apis.messages.request import ID
from proxy.core.fields import is_token
from proxy.core.ids import random_hex
from proxy.core.request import ChatRequest
from proxy.errors import (
    ShapeError,
)

Json = dict[str, Any]

#: Anthropic's stop reasons as chat's finish reasons, and back.
STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
         "tool_use": "tool_calls", "refusal": "content_filter"}
STOP_BACK = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
              "content_filter": "refusal", "function_call": "tool_use"}

# -- whole answers ---------------------------------------------------------------------------


def chat_of_message(data: Json) -> Json:
    """The chat completion an Anthropic message amounts to."""
    if not isinstance(data.get("content"), list):
        raise ShapeError("upstream answer is not a message")
    message: Json = {"role": "assistant"}
    thinking, text, calls = [], [], []
    ids: dict[str, str] = {}
    for block in data["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "tool_use":
            if not isinstance(block.get("input"), dict):
                raise ShapeError("upstream tool call input is not an object")
            calls.append({**tool_use_id(block.get("id"), ids), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": orjson.dumps(block["input"]).decode()}})
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    message["content"] = "".join(text) if text else None
    if calls:
        message["tool_calls"] = calls
    usage: Json = data["usage"] if isinstance(data.get("usage"), dict) else {}
    return {"id": data.get("id"), "object": "chat.completion", "created": int(time.time()),
            "model": data.get("model"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": STOP.get(data.get("stop_reason") or "", "stop")}],
            "usage": {"prompt_tokens": usage.get("input_tokens"),
                      "completion_tokens": usage.get("output_tokens")}}


def tool_use_id(given: Any, ids: dict[str, str]) -> Json:
    """A ``tool_use`` id as the client gets it (``{"id": ...}``): the upstream's if it is
    an id Anthropic's API takes back (letters, digits, ``_`` and ``-``); else, for a
    string, the proxy's own, the same for the same id within one answer (``ids``).  A
    replaced id rides along as ``upstream_id``, a key the chat reader removes and counts."""
    if given is None or (isinstance(given, str) and ID.fullmatch(given)):
        return {"id": given}
    replaced = None
    if isinstance(given, str):
        replaced = ids.setdefault(given, f"toolu_{random_hex(12)}")
    return {"id": replaced, "upstream_id": given}


def message_of_chat(chat: Json, request: ChatRequest, moderation: Json) -> Json:
    """The client's message, built from the rebuilt (judged) chat completion."""
    choice = chat["choices"][0]
    message = choice["message"]
    content: list[Json] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"],
                        "signature": random_hex(16)})
    if message.get("content") or message.get("refusal"):
        content.append({"type": "text", "text": message.get("content") or message["refusal"]})
    for call in message.get("tool_calls") or []:
        content.append(_tool_use_block(call["id"], call["function"]["name"],
                                       call["function"]["arguments"]))
    return message_object(chat["id"], chat["model"], content, choice["finish_reason"],
                          chat.get("usage"), moderation)


def _tool_use_block(call_id: Any, name: str, arguments: str) -> Json:
    try:
        given = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError as exc:
        raise ShapeError("upstream tool call input is not JSON") from exc
    if not isinstance(given, dict):
        raise ShapeError("upstream tool call input is not an object")
    return {"type": "tool_use", "id": call_id or f"toolu_{random_hex(12)}",
            "name": name, "input": given}


def blocked_message(model: str, text: str, moderation: Json) -> Json:
    return message_object(f"msg_{random_hex(12)}", model,
                          [{"type": "text", "text": text}], "content_filter",
                          {"prompt_tokens": 0, "completion_tokens": 0}, moderation)


def message_object(message_id: str, model: str, content: list[Json], finish: str | None,
                   usage: Any, moderation: Json | None) -> Json:
    if not (message_id.startswith("msg_") and is_token(message_id)):  # a chat id: its own
        message_id = f"msg_{random_hex(12)}"
    body: Json = {"id": message_id, "type": "message", "role": "assistant", "model": model,
                  "content": content, "stop_reason": STOP_BACK.get(finish or "", "end_turn"),
                  "stop_sequence": None, "usage": usage_of(usage)}
    if moderation is not None:
        body["moderation"] = moderation
    return body


def usage_of(usage: Any) -> Json:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return {"input_tokens": prompt if type(prompt) is int else 0,
            "output_tokens": completion if type(completion) is int else 0}


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                502: "api_error", 503: "overloaded_error", 504: "timeout_error"}


def anthropic_error(status: int, message: str, moderation: Json | None = None) -> bytes:
    """Anthropic's error body for ``status``; a verdict goes inside ``error``."""
    error: Json = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    if moderation is not None:
        error["moderation"] = moderation
    return orjson.dumps({"type": "error", "error": error})
