"""OpenAI's Responses API, ``POST /v1/responses``, as the upstream emulator draws it.

:mod:`.upstream` resolves each :class:`~.upstream.Reply` against the request into a
:class:`~.upstream.Turn` (answer pieces, reasoning pieces, tool calls with their argument pieces,
the scripted finish reason) and sends what :class:`ResponsesAPI` draws from it, with the
script's timing and faults; ``Reply.events`` are framed here as they are, ``Reply.completion``
and ``Reply.raw`` go out untouched.

Dialect ``"official"``, api.openai.com, as OpenAI's API reference and the openai-python types
(``openai/types/responses/``: ``Response``, ``ResponseStreamEvent`` and its members) have it:

* whole: a ``response`` object: ``id`` ("resp_" and 50 hex digits), ``object``, ``created_at``,
  ``status`` (``completed``; ``incomplete`` with ``incomplete_details.reason``
  ``max_output_tokens`` or ``content_filter`` for the finish reasons ``length`` and
  ``content_filter``), ``completed_at``, ``error: null``, the request's settings echoed with
  their defaults (``instructions``, ``max_output_tokens``, ``max_tool_calls``,
  ``parallel_tool_calls``, ``previous_response_id``, ``prompt_cache_key``, ``reasoning``,
  ``safety_identifier``, ``service_tier``, ``store``, ``temperature``, ``text``,
  ``tool_choice``, ``tools``, ``top_logprobs``, ``top_p``, ``truncation``, ``user``,
  ``metadata``), ``output`` and ``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``
  and their details).  The output: a ``reasoning`` item (``rs_…``, ``summary:
  [{type: "summary_text", text}]``, ``encrypted_content`` when the request's ``include`` asks
  for ``reasoning.encrypted_content``), a ``message`` item (``msg_…``, ``role: "assistant"``,
  ``status``, ``content: [{type: "output_text", annotations: [], logprobs: [], text}]``), then a
  ``function_call`` item per call (``fc_…``, ``call_id``, ``name``, ``arguments``, ``status``).
* stream: ``event: <type>`` and ``data: <json>`` per event, each with ``type`` and
  ``sequence_number`` from 0, and nothing after the last (no ``[DONE]``; openai-python's
  ``Stream`` only skips one if it comes): ``response.created`` and ``response.in_progress`` (the
  response ``in_progress``, no output, ``usage: null``); per reasoning item
  ``response.output_item.added`` (``summary: []``), ``response.reasoning_summary_part.added``,
  ``response.reasoning_summary_text.delta`` per piece, ``response.reasoning_summary_text.done``,
  ``response.reasoning_summary_part.done``, ``response.output_item.done``; per message
  ``response.output_item.added`` (``content: []``), ``response.content_part.added`` (empty
  ``output_text``), ``response.output_text.delta`` per piece (``item_id``, ``output_index``,
  ``content_index``, ``delta``, ``logprobs: []``), ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``; per call
  ``response.output_item.added`` (``arguments: ""``, ``in_progress``),
  ``response.function_call_arguments.delta`` per piece, ``response.function_call_arguments.done``,
  ``response.output_item.done``; last ``response.completed`` (or ``response.incomplete``) with
  the whole response.  Delta events carry an ``obfuscation`` padding string unless the request's
  ``stream_options.include_obfuscation`` is false.
* errors: ``{"error": {"message", "type", "param", "code"}}``, as on chat completions.

Dialect ``"vllm"`` follows vLLM's ``vllm/entrypoints/openai/responses/``:

* ``api_router.py`` ``_convert_stream_to_sse_events``: ``event: <type>\\ndata: <json>\\n\\n``
  per event, nothing after the last;
* ``serving.py`` ``responses_stream_generator``: ``sequence_number`` from 0,
  ``response.created`` and ``response.in_progress``, the items, then ``response.completed``
  whose response ``responses_full_generator`` builds afresh (so its items have new ids and the
  calls new ``call_id``\\s); ``length`` makes it ``incomplete`` (``max_output_tokens``) but it is
  still sent as ``response.completed``; no ``obfuscation``;
* ``streaming_events.py``, the simple (non-harmony) path: streamed items have bare uuid ids,
  streamed calls ``call_<uuid>`` ids of their own (a scripted ``ToolCall.id`` shows only in
  whole answers, where the tool parser's id goes);
  reasoning is ``reasoning_text`` content, streamed as ``response.reasoning_part.added`` (vLLM's
  own event: openai-python has no type for it), ``response.reasoning_text.delta`` per piece,
  ``response.reasoning_text.done`` and ``response.reasoning_part.done``; a finished message
  item also carries ``summary: []``; ``response.function_call_arguments.done`` carries the
  ``name`` and comes only after some argument delta;
* ``protocol.py`` ``ResponsesResponse``: no ``error`` key; ``background``, ``max_output_tokens``
  (what the context leaves), ``service_tier: "auto"``, ``top_logprobs: null``, ``prompt``,
  ``input_messages``, ``output_messages``; usage details with per-turn lists;
* the parser's ``extract_response_outputs`` (whole answers): ``rs_``/``msg_``/``fc_`` ids, a
  reasoning item with ``summary: []``, ``content: [{type: "reasoning_text", text}]`` and
  ``status: null``, no message item when there is no text, ``output_text`` with
  ``logprobs: null``, call ids ``chatcmpl-tool-…`` unless scripted.
"""

from __future__ import annotations

import base64
import itertools
import random
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .upstream import Turn

Json = dict[str, Any]

MAX_MODEL_LEN = 32768  # vLLM's default max_output_tokens: what the context leaves
_ALPHABET = string.ascii_letters + string.digits
_TOO_LONG = ("length", "max_tokens", "max_output_tokens")


def _hex_id(prefix: str) -> str:
    """An api.openai.com id: a prefix and 50 hex digits."""
    return prefix + secrets.token_hex(25)


def _uuid() -> str:
    """vLLM's ``random_uuid()``."""
    return uuid.uuid4().hex


def _given(value: Any, default: Any) -> Any:
    """vLLM's sampling defaults: the request's value unless it is missing or null."""
    return default if value is None else value


def _text(content: Any) -> str:
    """The text of an input item's content: a string, or ``input_text`` (or ``output_text``)
    parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class ResponsesAPI:
    """What one ``/v1/responses`` request gets, as one dialect's server draws it."""

    def __init__(
        self, *, dialect: str = "official", obfuscation: bool = True,
        error: Callable[..., Json],
    ) -> None:
        self.vllm = dialect == "vllm"
        self.obfuscation = obfuscation
        self._error = error  # upstream.openai_error: (status, message, *, param, code) -> body

    # -- requests ------------------------------------------------------------------------------

    @staticmethod
    def user_text(body: Json) -> str:
        items = body.get("input")
        if isinstance(items, str):
            return items
        users = [i for i in items or () if isinstance(i, dict) and i.get("role") == "user"]
        return _text(users[-1].get("content")) if users else ""

    @staticmethod
    def prompt_text(body: Json) -> str:
        texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
        items = body.get("input")
        if isinstance(items, str):
            texts.append(items)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                texts.append(_text(item.get("content")) or str(item.get("output") or ""))
        return " ".join(texts)

    def body_refusal(self, body: Json) -> tuple[int, Json] | None:
        if "model" not in body:
            message = "Missing required parameter: 'model'."
            return 400, self._error(400, message, param="model", code="missing_required_parameter")
        if "input" in body and not isinstance(body["input"], str | list | None):
            message = (
                "Invalid type for 'input': expected one of a string or array of input items, "
                f"but got {type(body['input']).__name__} instead."
            )
            return 400, self._error(400, message, param="input", code="invalid_type")
        return None

    # -- answers -------------------------------------------------------------------------------

    def error_body(self, status: int) -> Json:
        return self._error(status)

    def headers(self) -> dict[str, str]:
        if self.vllm:
            return {}
        return {
            "x-request-id": "req_" + secrets.token_hex(16),
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
        }

    @staticmethod
    def frame(event: Json) -> bytes:
        data = b"data: " + orjson.dumps(event) + b"\n\n"
        if "type" not in event:
            return data
        return b"event: " + str(event["type"]).encode() + b"\n" + data

    def whole(self, turn: Turn, body: Json) -> Json:
        return _Drawing(self, turn, body, streamed=False).whole()

    def events(self, turn: Turn, body: Json) -> list[bytes]:
        options = body.get("stream_options") or {}
        obfuscate = self.obfuscation and not self.vllm and options.get("include_obfuscation", True)
        drawing = _Drawing(self, turn, body, streamed=True, obfuscate=bool(obfuscate))
        return [self.frame(event) for event in drawing.events()]


class _Drawing:
    """One response: its ids, items and events."""

    def __init__(
        self, api: ResponsesAPI, turn: Turn, body: Json, *, streamed: bool,
        obfuscate: bool = False, response_id: str | None = None, created: int | None = None,
    ) -> None:
        self.api, self.turn, self.body = api, turn, body
        self.vllm, self.streamed, self.obfuscate = api.vllm, streamed, obfuscate
        self.created = created or int(time.time())
        if self.vllm:
            self.id = response_id or f"resp_{_uuid()}"
            bare = streamed  # vLLM's stream path: bare uuids; its whole answers: prefixed ones
            self.reasoning_id = _uuid() if bare else f"rs_{_uuid()}"
            self.message_id = _uuid() if bare else f"msg_{_uuid()}"
            # the stream path makes its own call ids; whole answers keep the parser's
            self.call_ids = [
                (_uuid(), f"call_{_uuid()}") if bare
                else (f"fc_{_uuid()}", call.id or f"chatcmpl-tool-{_uuid()}")
                for call, _ in turn.calls
            ]
        else:
            self.id = response_id or _hex_id("resp_")
            self.reasoning_id, self.message_id = _hex_id("rs_"), _hex_id("msg_")
            self.call_ids = [
                (_hex_id("fc_"), call.id or "call_" + "".join(random.choices(_ALPHABET, k=24)))
                for call, _ in turn.calls
            ]
        self.text = "".join(turn.pieces)
        self.thought = "".join(turn.reasoning)
        self.sequence = itertools.count()

    # -- state ---------------------------------------------------------------------------------

    def incomplete(self) -> str | None:
        """Why the response is incomplete, if it is."""
        reason = self.turn.finish_reason
        if reason in _TOO_LONG:
            return "max_output_tokens"
        if reason == "content_filter" and not self.vllm:
            return "content_filter"
        return None

    def has_message(self) -> bool:
        if self.vllm:
            return bool(self.text)
        return bool(self.turn.pieces) or not self.turn.calls

    # -- items ---------------------------------------------------------------------------------

    def reasoning_item(self, *, done: bool) -> Json:
        if self.vllm:
            status = ("completed" if done else "in_progress") if self.streamed else None
            content = [{"text": self.thought, "type": "reasoning_text"}] if done else None
            return {"id": self.reasoning_id, "summary": [], "type": "reasoning",
                    "content": content, "encrypted_content": None, "status": status}
        summary = [{"type": "summary_text", "text": self.thought}] if done else []
        item: Json = {"id": self.reasoning_id, "type": "reasoning", "summary": summary}
        if done and "reasoning.encrypted_content" in (self.body.get("include") or ()):
            item["encrypted_content"] = "gAAAAA" + base64.urlsafe_b64encode(
                secrets.token_bytes(120)).decode()
        return item

    def part(self, text: str, *, opening: bool = False) -> Json:
        if self.vllm:
            return {"annotations": [], "text": text, "type": "output_text",
                    "logprobs": [] if opening else None}
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message_item(self, status: str) -> Json:
        content = [] if status == "in_progress" else [self.part(self.text)]
        item: Json = {"id": self.message_id, "type": "message", "status": status,
                      "content": content, "role": "assistant"}
        if self.vllm and self.streamed and status != "in_progress":
            item["summary"] = []
        return item

    def call_item(self, index: int, status: str) -> Json:
        call, _ = self.turn.calls[index]
        item_id, call_id = self.call_ids[index]
        arguments = "" if status == "in_progress" else call.arguments
        return {"id": item_id, "type": "function_call", "status": status,
                "arguments": arguments, "call_id": call_id, "name": call.name}

    def output(self) -> list[Json]:
        """The finished items, in order: reasoning, the message, the calls."""
        items = [self.reasoning_item(done=True)] if self.turn.reasoning else []
        if self.has_message():
            final = "incomplete" if self.incomplete() and not self.vllm else "completed"
            items.append(self.message_item(final))
        items += [self.call_item(i, "completed") for i in range(len(self.turn.calls))]
        return items

    # -- the response --------------------------------------------------------------------------

    def usage(self) -> Json:
        n, m, r = self.turn.prompt_tokens, self.turn.output_tokens, len(self.turn.reasoning)
        if self.vllm:
            return {
                "input_tokens": n,
                "input_tokens_details": {"cached_tokens": 0, "input_tokens_per_turn": [n],
                                         "cached_tokens_per_turn": [0]},
                "output_tokens": m,
                "output_tokens_details": {"reasoning_tokens": r, "tool_output_tokens": 0,
                                          "output_tokens_per_turn": [m],
                                          "tool_output_tokens_per_turn": [0]},
                "total_tokens": n + m,
            }
        return {
            "input_tokens": n,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": m,
            "output_tokens_details": {"reasoning_tokens": r},
            "total_tokens": n + m,
        }

    def response(self, status: str, output: list[Json], usage: Json | None) -> Json:
        body, reason = self.body, self.incomplete()
        details = {"reason": reason} if status == "incomplete" else None
        if self.vllm:
            asked = body.get("max_output_tokens")
            room = MAX_MODEL_LEN - self.turn.prompt_tokens
            return {
                "id": self.id, "created_at": self.created, "incomplete_details": details,
                "instructions": body.get("instructions"), "metadata": body.get("metadata"),
                "model": self.turn.model, "object": "response", "output": output,
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "temperature": _given(body.get("temperature"), 1.0),
                "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
                "top_p": _given(body.get("top_p"), 1.0), "background": bool(body.get("background")),
                "max_output_tokens": min(asked, room) if isinstance(asked, int) else room,
                "max_tool_calls": body.get("max_tool_calls"),
                "previous_response_id": body.get("previous_response_id"), "prompt": None,
                "reasoning": body.get("reasoning"),
                "service_tier": body.get("service_tier", "auto"), "status": status,
                "text": body.get("text"), "top_logprobs": None,
                "truncation": body.get("truncation", "disabled"), "usage": usage,
                "user": body.get("user"), "input_messages": None, "output_messages": None,
            }
        finished = status in ("completed", "incomplete")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": bool(body.get("background")),
            "completed_at": int(time.time()) if finished else None,
            "error": None,
            "incomplete_details": details,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": self.turn.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": None, "summary": None, **(body.get("reasoning") or {})},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium", **(body.get("text") or {})},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_logprobs": body.get("top_logprobs", 0),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": usage,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def whole(self) -> Json:
        status = "incomplete" if self.incomplete() else "completed"
        return self.response(status, self.output(), self.usage())

    # -- the stream ----------------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> Json:
        return {"type": kind, "sequence_number": next(self.sequence), **fields}

    def delta(self, kind: str, **fields: Any) -> Json:
        event = self.event(kind, **fields)
        if self.obfuscate:
            event["obfuscation"] = "".join(random.choices(_ALPHABET, k=random.randint(1, 16)))
        return event

    def events(self) -> Iterator[Json]:
        opening = self.response("in_progress", [], None)
        yield self.event("response.created", response=opening)
        yield self.event("response.in_progress", response=opening)
        index = 0
        if self.turn.reasoning:
            yield from self._reasoning_events(index)
            index += 1
        if self.has_message():
            yield from self._message_events(index)
            index += 1
        for call in range(len(self.turn.calls)):
            yield from self._call_events(index, call)
            index += 1
        if self.vllm:  # the final response is drawn afresh, as a whole answer is
            fresh = _Drawing(self.api, self.turn, self.body, streamed=False,
                             response_id=self.id, created=self.created)
            yield self.event("response.completed", response=fresh.whole())
            return
        if self.incomplete():
            output = self.output()
            yield self.event("response.incomplete",
                             response=self.response("incomplete", output, self.usage()))
            return
        yield self.event("response.completed",
                         response=self.response("completed", self.output(), self.usage()))

    def _reasoning_events(self, index: int) -> Iterator[Json]:
        rid, where = self.reasoning_id, {"output_index": index}
        yield self.event("response.output_item.added", **where,
                         item=self.reasoning_item(done=False))
        if self.vllm:
            at = {"item_id": rid, **where, "content_index": 0}
            yield self.event("response.reasoning_part.added", **at,
                             part={"text": "", "type": "reasoning_text"})
            for piece in self.turn.reasoning:
                yield self.event("response.reasoning_text.delta", **at, delta=piece)
            yield self.event("response.reasoning_text.done", **at, text=self.thought)
            yield self.event("response.reasoning_part.done", **at,
                             part={"text": self.thought, "type": "reasoning_text"})
        else:
            at = {"item_id": rid, **where, "summary_index": 0}
            yield self.event("response.reasoning_summary_part.added", **at,
                             part={"type": "summary_text", "text": ""})
            for piece in self.turn.reasoning:
                yield self.delta("response.reasoning_summary_text.delta", **at, delta=piece)
            yield self.event("response.reasoning_summary_text.done", **at, text=self.thought)
            yield self.event("response.reasoning_summary_part.done", **at,
                             part={"type": "summary_text", "text": self.thought})
        yield self.event("response.output_item.done", **where,
                         item=self.reasoning_item(done=True))

    def _message_events(self, index: int) -> Iterator[Json]:
        where = {"output_index": index}
        at = {"item_id": self.message_id, **where, "content_index": 0}
        yield self.event("response.output_item.added", **where,
                         item=self.message_item("in_progress"))
        yield self.event("response.content_part.added", **at,
                         part=self.part("", opening=True))
        for piece in self.turn.pieces:
            if piece or not self.vllm:  # vLLM opens no event for an empty delta
                yield self.delta("response.output_text.delta", **at, delta=piece, logprobs=[])
        yield self.event("response.output_text.done", **at, text=self.text, logprobs=[])
        yield self.event("response.content_part.done", **at, part=self.part(self.text))
        final = "incomplete" if self.incomplete() and not self.vllm else "completed"
        yield self.event("response.output_item.done", **where, item=self.message_item(final))

    def _call_events(self, index: int, call: int) -> Iterator[Json]:
        where = {"output_index": index}
        at = {"item_id": self.call_ids[call][0], **where}
        tool, pieces = self.turn.calls[call]
        yield self.event("response.output_item.added", **where,
                         item=self.call_item(call, "in_progress"))
        for piece in pieces:
            yield self.delta("response.function_call_arguments.delta", **at, delta=piece)
        if not self.vllm:
            yield self.event("response.function_call_arguments.done", **at,
                             arguments=tool.arguments)
        elif pieces:
            yield self.event("response.function_call_arguments.done", **at,
                             arguments=tool.arguments, name=tool.name)
        yield self.event("response.output_item.done", **where,
                         item=self.call_item(call, "completed"))
