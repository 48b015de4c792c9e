"""Anthropic's Messages API, ``POST /v1/messages``, as the upstream emulator draws it.

:mod:`.upstream` resolves each :class:`~.upstream.Reply` against the request into a
:class:`~.upstream.Turn` (answer pieces, reasoning pieces, tool calls with their argument pieces,
the scripted finish reason) and sends what :class:`MessagesAPI` draws from it, with the script's
timing and faults; ``Reply.events`` are framed here as they are, ``Reply.completion`` and
``Reply.raw`` go out untouched.  Tool call ``arguments`` must be a JSON object here: a
``tool_use`` block carries them parsed, as ``input``.

Dialect ``"official"``, api.anthropic.com, as Anthropic's API reference (Messages, Streaming
Messages, Extended thinking, Errors) and the anthropic-python types (``anthropic/types/``:
``Message``, ``RawMessageStreamEvent`` and its members, ``Usage``) have it:

* requests: the key in ``x-api-key`` (``Authorization: Bearer`` is taken too), an
  ``anthropic-version`` header; ``model``, ``max_tokens`` and ``messages`` required (400
  ``"<field>: Field required"``);
* whole: ``{"id": "msg_01…", "type": "message", "role": "assistant", "model", "content",
  "stop_reason", "stop_sequence": null, "usage"}``; the content is a ``thinking`` block
  (``thinking``, ``signature``) for the reasoning, a ``text`` block, then a ``tool_use`` block
  (``id: "toolu_01…"``, ``name``, ``input``) per call; ``stop_reason`` is ``end_turn``, or
  ``tool_use`` with calls, or the scripted finish reason (chat's ``stop``, ``length``,
  ``tool_calls`` and ``content_filter`` become ``end_turn``, ``max_tokens``, ``tool_use`` and
  ``refusal``); ``usage`` has ``input_tokens``, ``output_tokens``, the cache counts and
  ``service_tier``;
* stream: ``event: <type>`` and ``data: <json>`` per event: ``message_start`` (the message with
  ``content: []``, ``stop_reason: null`` and the input usage), per block ``content_block_start``
  (``{"type": "thinking", "thinking": "", "signature": ""}``, ``{"type": "text", "text": ""}``
  or ``{"type": "tool_use", "id", "name", "input": {}}``), ``content_block_delta``\\s
  (``thinking_delta`` pieces then one ``signature_delta``; ``text_delta`` pieces; an empty
  ``input_json_delta`` then one per argument piece, as ``partial_json``) and
  ``content_block_stop``; a ``ping`` after the first block's start; ``message_delta``
  (``delta: {stop_reason, stop_sequence}``, cumulative ``usage``), ``message_stop``;
* errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the status:
  ``invalid_request_error`` (400), ``authentication_error`` (401), ``permission_error`` (403),
  ``not_found_error`` (404), ``request_too_large`` (413), ``rate_limit_error`` (429),
  ``api_error`` (500), ``overloaded_error`` (529); a ``request-id`` header on every answer.

Dialect ``"vllm"`` follows vLLM's ``vllm/entrypoints/anthropic/``: ``serving.py``
(``messages_full_converter``, ``message_stream_converter``: the chat completion translated, so
the id is the chat id ``chatcmpl-…``, tool ids are chat's ``chatcmpl-tool-…``, the signature is
a uuid's hex; the stream has no ``ping``, a thinking block starts without ``signature``, its
``signature_delta`` comes just before its stop, a tool block starts with no empty
``input_json_delta``, ``message_start``'s message has no ``type`` or ``role`` (dumped with
``exclude_unset``) and usage ``{input_tokens, output_tokens: 0}``, ``message_delta`` has only
``stop_reason`` and usage ``{input_tokens, output_tokens}``; ``stop_reason`` from
``stop_reason_map``), ``api_router.py`` (whole answers dumped with ``exclude_none``: no
``stop_sequence``; errors ``{"type": "error", "error": {"type", "message"}}``) and
``protocol.py``.  vLLM takes no ``anthropic-version``.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from multidict import CIMultiDict

if TYPE_CHECKING:
    from .upstream import Turn

Json = dict[str, Any]

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ORGANIZATION = str(uuid.uuid4())
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error",
          "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error",
          "Number of request tokens has exceeded your per-minute rate limit. Please reduce the "
          "prompt length or the maximum tokens requested, or try again later."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
# chat's finish reasons onto Anthropic's stop reasons (Anthropic's own pass through)
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
         "function_call": "tool_use", "content_filter": "refusal"}


def _id(prefix: str, length: int = 22) -> str:
    """An api.anthropic.com id: ``msg_01…``, ``toolu_01…``, ``req_011C…``."""
    return prefix + "".join(secrets.choice(_BASE58) for _ in range(length))


def _text(content: Any) -> str:
    """A message's (or the system prompt's) text: a string, or its ``text`` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


class MessagesAPI:
    """What one ``/v1/messages`` request gets, as one dialect's server draws it."""

    def __init__(self, *, dialect: str = "official") -> None:
        self.vllm = dialect == "vllm"
        self.request_id = _id("req_011C", 20)

    # -- requests ------------------------------------------------------------------------------

    @staticmethod
    def user_text(body: Json) -> str:
        messages = body.get("messages")
        users = [m for m in messages or () if isinstance(m, dict) and m.get("role") == "user"]
        return _text(users[-1].get("content")) if users else ""

    @staticmethod
    def prompt_text(body: Json) -> str:
        texts = [_text(body.get("system"))]
        texts += [_text(m.get("content")) for m in body.get("messages") or ()
                  if isinstance(m, dict)]
        return " ".join(t for t in texts if t)

    def auth_refusal(
        self, headers: CIMultiDict[str], api_key: str | None
    ) -> tuple[int, Json] | None:
        if api_key is None:
            return None
        key, bearer = headers.get("x-api-key"), headers.get("Authorization")
        if key is None and bearer is None:
            return 401, self.error_body(401, "x-api-key header is required")
        if key == api_key or bearer == f"Bearer {api_key}":
            return None
        return 401, self.error_body(401, "invalid x-api-key")

    def body_refusal(self, headers: CIMultiDict[str], body: Any) -> tuple[int, Json] | None:
        if not self.vllm and "anthropic-version" not in headers:
            return 400, self.error_body(400, "anthropic-version: header is required")
        if not isinstance(body, dict):
            message = "There was an error parsing the body of your request: it is not valid JSON."
            return 400, self.error_body(400, message)
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return 400, self.error_body(400, f"{name}: Field required")
        if not isinstance(body["messages"], list):
            return 400, self.error_body(400, "messages: Input should be a valid list")
        if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool):
            return 400, self.error_body(400, "max_tokens: Input should be a valid integer")
        return None

    # -- answers -------------------------------------------------------------------------------

    def error_body(self, status: int, message: str | None = None) -> Json:
        default = _ERRORS.get(status) or _ERRORS[500 if status >= 500 else 400]
        error: Json = {"type": "error", "error": {"type": default[0],
                                                  "message": message or default[1]}}
        if not self.vllm:
            error["request_id"] = self.request_id
        return error

    def headers(self) -> dict[str, str]:
        if self.vllm:
            return {}
        return {"request-id": self.request_id, "anthropic-organization-id": _ORGANIZATION}

    @staticmethod
    def frame(event: Json) -> bytes:
        data = b"data: " + orjson.dumps(event) + b"\n\n"
        if "type" not in event:
            return data
        return b"event: " + str(event["type"]).encode() + b"\n" + data

    def whole(self, turn: Turn, body: Json) -> Json:
        return _Drawing(self, turn).whole()

    def events(self, turn: Turn, body: Json) -> list[bytes]:
        return [self.frame(event) for event in _Drawing(self, turn).events()]


class _Drawing:
    """One message: its ids, blocks and events."""

    def __init__(self, api: MessagesAPI, turn: Turn) -> None:
        self.vllm, self.turn = api.vllm, turn
        if self.vllm:
            self.id = f"chatcmpl-{uuid.uuid4().hex}"
            self.signature = uuid.uuid4().hex
            self.tool_ids = [c.id or f"chatcmpl-tool-{uuid.uuid4().hex}" for c, _ in turn.calls]
        else:
            self.id = _id("msg_01")
            self.signature = base64.b64encode(secrets.token_bytes(240)).decode()
            self.tool_ids = [c.id or _id("toolu_01") for c, _ in turn.calls]
        self.text = "".join(turn.pieces)
        self.thought = "".join(turn.reasoning)

    def stop_reason(self) -> str:
        reason = self.turn.finish_reason or ("tool_calls" if self.turn.calls else "stop")
        return _STOP.get(reason, reason)

    def has_text(self) -> bool:
        if self.vllm:  # vLLM opens a text block only for some text
            return bool(self.text)
        return bool(self.turn.pieces) or not self.turn.calls

    def usage(self, *, stage: str) -> Json:
        """``stage``: "start" (``message_start``), "delta" (``message_delta``) or "whole"."""
        n, m = self.turn.prompt_tokens, self.turn.output_tokens
        if self.vllm:
            return {"input_tokens": n, "output_tokens": 0 if stage == "start" else m}
        usage: Json = {"input_tokens": n, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0}
        if stage == "delta":
            return {**usage, "output_tokens": m}
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
        return {**usage, "output_tokens": 1 if stage == "start" else m,
                "service_tier": "standard"}

    def blocks(self) -> list[Json]:
        blocks = []
        if self.turn.reasoning:
            blocks.append({"type": "thinking", "thinking": self.thought,
                           "signature": self.signature})
        if self.has_text():
            blocks.append({"type": "text", "text": self.text})
        for (call, _), tool_id in zip(self.turn.calls, self.tool_ids, strict=True):
            blocks.append({"type": "tool_use", "id": tool_id, "name": call.name,
                           "input": orjson.loads(call.arguments or "{}")})
        return blocks

    def message(self, content: list[Json], stop_reason: str | None, usage: Json) -> Json:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.turn.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": usage}

    def whole(self) -> Json:
        message = self.message(self.blocks(), self.stop_reason(), self.usage(stage="whole"))
        if self.vllm:  # dumped with exclude_none
            del message["stop_sequence"]
        return message

    # -- the stream ----------------------------------------------------------------------------

    def events(self) -> Iterator[Json]:
        start = self.message([], None, self.usage(stage="start"))
        if self.vllm:  # dumped with exclude_unset: the defaults type and role are left out
            del start["type"], start["role"]
        yield {"type": "message_start", "message": start}
        for index, (opening, deltas) in enumerate(self._blocks()):
            yield {"type": "content_block_start", "index": index, "content_block": opening}
            if index == 0 and not self.vllm:
                yield {"type": "ping"}
            for delta in deltas:
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            yield {"type": "content_block_stop", "index": index}
        ending: Json = {"stop_reason": self.stop_reason()}
        if not self.vllm:
            ending["stop_sequence"] = None
        yield {"type": "message_delta", "delta": ending, "usage": self.usage(stage="delta")}
        yield {"type": "message_stop"}

    def _blocks(self) -> Iterator[tuple[Json, list[Json]]]:
        """Each block's ``content_block_start`` and its deltas."""
        if self.turn.reasoning:
            opening: Json = {"type": "thinking", "thinking": ""}
            if not self.vllm:
                opening["signature"] = ""
            deltas = [{"type": "thinking_delta", "thinking": p} for p in self.turn.reasoning]
            yield opening, [*deltas, {"type": "signature_delta", "signature": self.signature}]
        if self.has_text():
            pieces = [p for p in self.turn.pieces if p or not self.vllm]
            yield ({"type": "text", "text": ""},
                   [{"type": "text_delta", "text": p} for p in pieces])
        for (call, pieces), tool_id in zip(self.turn.calls, self.tool_ids, strict=True):
            opening = {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}
            parts = [p for p in pieces if p] if self.vllm else ["", *pieces]
            yield opening, [{"type": "input_json_delta", "partial_json": p} for p in parts]
