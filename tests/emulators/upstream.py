"""An OpenAI-compatible chat LLM, emulated on loopback, scriptable reply by reply.

Three APIs answer from the same :class:`Reply` scripts: ``POST /v1/chat/completions`` (here),
``POST /v1/responses`` (:mod:`.responses_api`, OpenAI's Responses API) and ``POST /v1/messages``
(:mod:`.messages_api`, Anthropic's Messages API); this module routes to them and sends what they
draw, with the script's timing and faults.  ``UpstreamEmulator.dialect`` picks whose servers the
two newer APIs imitate: ``"official"`` (api.openai.com, api.anthropic.com) or ``"vllm"``.

Chat completions follow the OpenAI API (spec 2.3.0, ``../shared/spec/openai-chat-schemas.json``)
and what api.openai.com sends:

* non-stream: ``chat.completion`` with ``message{role, content, refusal, annotations}`` (plus
  ``tool_calls`` when there are some), ``usage`` with token details, ``service_tier``,
  ``system_fingerprint``; a scripted ``reasoning`` adds ``message.reasoning_content`` (the key
  SGLang, DeepSeek and vLLM before 0.17 use; ``shapes.vllm_reasoning`` has vLLM's newer
  ``reasoning``) and counts in ``completion_tokens_details.reasoning_tokens``;
* stream: ``data: {json}\\n\\n`` events of ``chat.completion.chunk``: first ``delta{role:
  "assistant", content: "", refusal: null}`` (a scripted ``reasoning`` follows it as
  ``delta{reasoning_content}`` pieces), then content pieces (or ``tool_calls`` fragments:
  the first of each call carries ``index``, ``id``, ``type``, ``function.name`` and empty
  ``arguments``, the next ones ``index`` and pieces of ``arguments``), then an empty delta with
  ``finish_reason``; with ``stream_options.include_usage`` every chunk has ``usage: null`` and a
  last chunk has ``choices: []`` and the usage; each chunk has an ``obfuscation`` padding string
  unless ``stream_options.include_obfuscation`` is false; then ``data: [DONE]\\n\\n``;
* errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
import secrets
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .loopback import LoopbackServer, read_json_body
from .messages_api import MessagesAPI
from .responses_api import ResponsesAPI

Json = dict[str, Any]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "o4-mini")
SYSTEM_FINGERPRINT = "fp_0e5a2c1d9b"
_ALPHABET = string.ascii_letters + string.digits
_PIECE_RE = re.compile(r"\s*\S+|\s+$")
_WORDS = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
]


@dataclass(kw_only=True)
class ToolCall:
    name: str
    arguments: str = "{}"
    id: str | None = None  # default: a fresh "call_..." id
    argument_chunks: list[str] | None = None  # streamed pieces; default: about 8 characters each


@dataclass(kw_only=True)
class Reply:
    """One scripted answer. With neither ``content`` nor ``tool_calls`` the default reply is used.

    ``chunks`` are the streamed content pieces (their concatenation is the content); by default
    the content is split before each whitespace run. ``raw_write_sizes`` cuts the SSE byte stream
    into writes of those sizes (cycled) regardless of event boundaries; ``drop_after_events``
    aborts the connection after that many events. ``status`` other than 200 answers
    ``error_body`` (default: OpenAI's error for that status) with ``headers``.
    ``head_delay_s`` waits before anything is sent, the status line included (a server slow to
    its first byte); ``gate``, when set, holds the reply until the test sets the event;
    ``cut_body`` sends a non-streamed answer's head and half its body, then
    aborts the connection; ``pause`` (bytes and an event) stops a stream before the first write
    that holds those bytes until the test sets the event (the request's ``paused`` says it
    waits there).

    ``reasoning`` is thinking that comes before the answer (streamed as ``reasoning_chunks``, by
    default split like the content): chat's ``reasoning_content``, a Responses ``reasoning``
    item, a Messages ``thinking`` block.  Errors are in each API's own shape, and the verbatim
    ``events`` are framed as each API frames them (``event:`` lines and no ``[DONE]`` for
    Responses and Messages).
    """

    content: str | None = None
    chunks: list[str] | None = None
    reasoning: str | None = None
    reasoning_chunks: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    finish_reason: str | None = None  # default "stop", or "tool_calls" (each API maps it)
    delay_s: float = 0.0  # between streamed events (non-stream: per event, summed)
    first_token_delay_s: float = 0.0
    status: int = 200
    error_body: Json | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw_write_sizes: list[int] | None = None
    drop_after_events: int | None = None
    head_delay_s: float = 0.0
    cut_body: bool = False
    gate: asyncio.Event | None = None
    pause: tuple[bytes, asyncio.Event] | None = None
    # Verbatim shapes (see ``shapes``): streamed chunks sent as they are, each as one
    # ``data:`` event, then ``[DONE]`` (Responses and Messages: ``event: <type>`` and
    # ``data:``, no ``[DONE]``); a whole answer's body as it is; or a stream's raw bytes,
    # framing and all.
    events: list[Json] | None = None
    completion: Json | None = None
    raw: bytes | None = None


@dataclass
class RecordedRequest:
    path: str
    method: str
    headers: CIMultiDict[str]  # case-insensitive
    body: Any  # parsed JSON, or None
    cancelled: bool = False  # the client went away before the reply was complete
    completed: bool = False
    cancelled_at: float | None = None  # time.monotonic() when it was seen going away
    bytes_sent: int = 0  # streamed body bytes the client's connection has taken so far
    paused: bool = False  # the stream waits at its scripted pause


_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        "Rate limit reached for requests. Please try again in 20ms.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later", "server_error", None),
}


def openai_error(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    err_type: str | None = None,
) -> Json:
    default_message, default_type, default_code = _ERRORS.get(status, _ERRORS[500])
    return {
        "error": {
            "message": message or default_message,
            "type": err_type or default_type,
            "param": param,
            "code": code or default_code,
        }
    }


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def count_tokens(text: str) -> int:
    """A rough word-piece count, enough for plausible ``usage`` numbers."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def split_content(content: str) -> list[str]:
    return _PIECE_RE.findall(content) or ([content] if content else [])


def _reasoning_pieces(reply: Reply) -> list[str]:
    if reply.reasoning_chunks is not None:
        return reply.reasoning_chunks
    return split_content(reply.reasoning or "")


def _argument_pieces(call: ToolCall) -> list[str]:
    if call.argument_chunks is not None:
        return call.argument_chunks
    return [call.arguments[i : i + 8] for i in range(0, len(call.arguments), 8)]


@dataclass(frozen=True, kw_only=True)
class _Answer:
    """A reply resolved against its request: ids, pieces, finish reason, usage."""

    chunk_id: str
    model: str
    created: int
    pieces: list[str]
    calls: list[tuple[str, ToolCall]]  # (id, call)
    finish_reason: str
    prompt_tokens: int
    reasoning: list[str] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> Json:
        completion = len(self.pieces) + sum(len(_argument_pieces(c)) + 1 for _, c in self.calls)
        completion += len(self.reasoning)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": len(self.reasoning),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def completion_body(answer: _Answer) -> Json:
    message: Json = {
        "role": "assistant",
        "content": answer.content if answer.pieces or not answer.calls else None,
        "refusal": None,
        "annotations": [],
    }
    if answer.calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for cid, c in answer.calls
        ]
    if answer.reasoning:
        message["reasoning_content"] = "".join(answer.reasoning)
    return {
        "id": answer.chunk_id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": answer.usage(),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


class _ChunkMaker:
    """Builds ``chat.completion.chunk`` events for one answer."""

    def __init__(self, answer: _Answer, *, include_usage: bool, obfuscation: bool) -> None:
        self.answer = answer
        self.include_usage = include_usage
        self.obfuscation = obfuscation

    def event(self, choices: list[Json], usage: Json | None = None) -> bytes:
        chunk: Json = {
            "id": self.answer.chunk_id,
            "object": "chat.completion.chunk",
            "created": self.answer.created,
            "model": self.answer.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        if self.obfuscation:
            chunk["obfuscation"] = "".join(random.choices(_ALPHABET, k=random.randint(1, 12)))
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def delta(self, delta: Json, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self.event([choice])

    def events(self) -> Iterator[bytes]:
        answer = self.answer
        tools_first = bool(answer.calls) and not answer.pieces and not answer.reasoning
        if not tools_first:
            yield self.delta({"role": "assistant", "content": "", "refusal": None})
        for piece in answer.reasoning:
            yield self.delta({"reasoning_content": piece})
        for piece in answer.pieces:
            yield self.delta({"content": piece})
        yield from self._tool_events(with_role=tools_first)
        yield self.delta({}, answer.finish_reason)
        if self.include_usage:
            yield self.event([], answer.usage())
        yield b"data: [DONE]\n\n"

    def _tool_events(self, *, with_role: bool) -> Iterator[bytes]:
        for index, (cid, call) in enumerate(self.answer.calls):
            head = {
                "index": index,
                "id": cid,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            delta: Json = {"tool_calls": [head]}
            if with_role and index == 0:
                delta = {"role": "assistant", "content": None, **delta, "refusal": None}
            yield self.delta(delta)
            for piece in _argument_pieces(call):
                yield self.delta(
                    {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                )


@dataclass(frozen=True, kw_only=True)
class Turn:
    """A reply resolved against a Responses or Messages request: what their modules draw."""

    model: str
    pieces: list[str]  # the answer's text, piece by piece as streamed
    reasoning: list[str]  # the thinking before it, likewise
    calls: list[tuple[ToolCall, list[str]]]  # each call, with its arguments' streamed pieces
    finish_reason: str | None  # as scripted; each API maps it onto its own stop reasons
    prompt_tokens: int

    @property
    def output_tokens(self) -> int:
        """One per streamed piece, one more per call (its name)."""
        return len(self.pieces) + len(self.reasoning) + sum(len(p) + 1 for _, p in self.calls)


class WireAPI(Protocol):
    """What :mod:`.responses_api` and :mod:`.messages_api` each provide for a request."""

    def user_text(self, body: Json) -> str: ...  # the last user turn: the default reply echoes it
    def prompt_text(self, body: Json) -> str: ...  # all of the prompt, for ``usage``
    def error_body(self, status: int) -> Json: ...
    def headers(self) -> dict[str, str]: ...
    def frame(self, event: Json) -> bytes: ...
    def whole(self, turn: Turn, body: Json) -> Json: ...
    def events(self, turn: Turn, body: Json) -> list[bytes]: ...


@dataclass(kw_only=True)
class UpstreamEmulator(LoopbackServer):
    """An OpenAI-compatible (and Anthropic-compatible) upstream: chat completions, Responses,
    Messages. Tests append :class:`Reply` objects to ``replies``; each request, whichever its
    route, takes the next one and is recorded in ``requests``."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    replies: list[Reply] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer <key>"
    default_chunks: int | None = None  # default reply: N synthetic words instead of an echo
    default_delay_s: float = 0.0  # between the default reply's events
    obfuscation: bool = True
    model_card_extra: Json = field(default_factory=dict)  # e.g. vLLM's root, permission
    dialect: Literal["official", "vllm"] = "official"  # /v1/responses and /v1/messages as whom
    url: str = ""
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        return app

    # -- requests ------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        _, body = await read_json_body(request)
        record = RecordedRequest(request.path, request.method, CIMultiDict(request.headers), body)
        self.requests.append(record)
        return record

    def _auth_error(self, request: web.Request) -> web.Response | None:
        refusal = self._bearer_refusal(request)
        return None if refusal is None else _json(refusal[1], refusal[0])

    def _bearer_refusal(self, request: web.Request) -> tuple[int, Json] | None:
        if self.api_key is None:
            return None
        header = request.headers.get("Authorization", "")
        if not header:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return 401, openai_error(401, message, code=None)
        if header != f"Bearer {self.api_key}":
            key = header.removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key[:3]}***{key[-4:]}."
            return 401, openai_error(401, message)
        return None

    @staticmethod
    def _unparsable_refusal(body: Any) -> tuple[int, Json] | None:
        if isinstance(body, dict):
            return None
        message = (
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload, but what was sent was not valid JSON."
        )
        return 400, openai_error(400, message)

    def _body_error(self, body: Any) -> web.Response | None:
        refusal = self._unparsable_refusal(body)
        if refusal is not None:
            return _json(refusal[1], refusal[0])
        if "model" not in body:
            return _json(openai_error(400, "you must provide a model parameter"), 400)
        if not isinstance(body.get("messages"), list):
            message = "Missing required parameter: 'messages'."
            return _json(
                openai_error(400, message, param="messages", code="missing_required_parameter"), 400
            )
        return None

    async def _models(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        error = self._auth_error(request)
        if error is not None:
            return error
        record.completed = True
        data = [
            {"id": m, "object": "model", "created": 1715367049, "owned_by": "system",
             **self.model_card_extra}
            for m in self.models
        ]
        return _json({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        error = self._auth_error(request) or self._body_error(record.body)
        if error is not None:
            return error
        reply = self.replies.pop(0) if self.replies else self._default_reply()
        try:
            response = await self._respond(request, record, reply)
        except _Dropped:
            raise asyncio.CancelledError from None
        except (asyncio.CancelledError, ConnectionResetError):
            record.cancelled, record.cancelled_at = True, time.monotonic()
            raise
        record.completed = True
        return response

    def _default_reply(self) -> Reply:
        if self.default_chunks is not None:
            words = itertools.islice(itertools.cycle(_WORDS), self.default_chunks)
            return Reply(chunks=[f" {w}" for w in words], delay_s=self.default_delay_s)
        return Reply(delay_s=self.default_delay_s)

    def _answer(self, body: Json, reply: Reply) -> _Answer:
        if reply.chunks is not None:
            pieces = reply.chunks
        elif reply.content is not None or reply.tool_calls:
            pieces = split_content(reply.content or "")
        else:
            users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
            pieces = split_content(f"You said: {message_text(users[-1]) if users else ''}")
        calls = [(c.id or _random_id("call_", 24), c) for c in reply.tool_calls or ()]
        return _Answer(
            chunk_id=_random_id("chatcmpl-", 29),
            model=str(body["model"]),
            created=int(time.time()),
            pieces=pieces,
            calls=calls,
            finish_reason=reply.finish_reason or ("tool_calls" if calls else "stop"),
            prompt_tokens=sum(count_tokens(message_text(m)) + 4 for m in body["messages"]),
            reasoning=_reasoning_pieces(reply),
        )

    # -- the Responses and Messages APIs ---------------------------------------------------------

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        api = ResponsesAPI(dialect=self.dialect, obfuscation=self.obfuscation, error=openai_error)
        refusal = (
            self._bearer_refusal(request)
            or self._unparsable_refusal(record.body)
            or api.body_refusal(record.body)
        )
        return await self._serve(request, record, api, refusal)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        api = MessagesAPI(dialect=self.dialect)
        refusal = api.auth_refusal(record.headers, self.api_key) or api.body_refusal(
            record.headers, record.body
        )
        return await self._serve(request, record, api, refusal)

    async def _serve(
        self,
        request: web.Request,
        record: RecordedRequest,
        api: WireAPI,
        refusal: tuple[int, Json] | None,
    ) -> web.StreamResponse:
        if refusal is not None:
            return _json(refusal[1], refusal[0], api.headers())
        reply = self.replies.pop(0) if self.replies else self._default_reply()
        try:
            response = await self._respond_with(api, request, record, reply)
        except _Dropped:
            raise asyncio.CancelledError from None
        except (asyncio.CancelledError, ConnectionResetError):
            record.cancelled, record.cancelled_at = True, time.monotonic()
            raise
        record.completed = True
        return response

    async def _respond_with(
        self,
        api: WireAPI,
        request: web.Request,
        record: RecordedRequest,
        reply: Reply,
    ) -> web.StreamResponse:
        body: Json = record.body
        stream = bool(body.get("stream"))
        headers = {**api.headers(), **reply.headers}
        if reply.gate is not None:
            await reply.gate.wait()
        await asyncio.sleep(reply.head_delay_s)
        if reply.status != 200:
            await asyncio.sleep(reply.first_token_delay_s)
            return _json(reply.error_body or api.error_body(reply.status), reply.status, headers)
        if reply.events is not None or reply.completion is not None or reply.raw is not None:
            if not stream:
                assert reply.completion is not None, "this reply has no whole-answer shape"
                return _json(reply.completion, headers=headers)
            if reply.raw is not None:
                return await _stream(request, reply, [reply.raw], record, headers)
            assert reply.events is not None, "this reply has no streamed shape"
            return await _stream(request, reply, [api.frame(e) for e in reply.events], record,
                                 headers)
        if reply.chunks is not None:
            pieces = reply.chunks
        elif reply.content is not None or reply.tool_calls:
            pieces = split_content(reply.content or "")
        else:
            pieces = split_content(f"You said: {api.user_text(body)}")
        turn = Turn(
            model=str(body["model"]),
            pieces=pieces,
            reasoning=_reasoning_pieces(reply),
            calls=[(c, _argument_pieces(c)) for c in reply.tool_calls or ()],
            finish_reason=reply.finish_reason,
            prompt_tokens=count_tokens(api.prompt_text(body)) + 4,
        )
        if not stream:
            await asyncio.sleep(reply.first_token_delay_s + reply.delay_s * turn.output_tokens)
            if reply.cut_body:
                await _cut(request, orjson.dumps(api.whole(turn, body)))
            return _json(api.whole(turn, body), headers=headers)
        return await _stream(request, reply, api.events(turn, body), record, headers)

    async def _respond(
        self, request: web.Request, record: RecordedRequest, reply: Reply
    ) -> web.StreamResponse:
        body: Json = record.body
        if reply.gate is not None:
            await reply.gate.wait()
        await asyncio.sleep(reply.head_delay_s)
        if reply.status != 200:
            await asyncio.sleep(reply.first_token_delay_s)
            error = reply.error_body or openai_error(reply.status)
            return _json(error, reply.status, reply.headers)
        if reply.events is not None or reply.completion is not None or reply.raw is not None:
            return await _verbatim(request, reply, record, stream=bool(body.get("stream")))
        answer = self._answer(body, reply)
        if not body.get("stream"):
            events = len(answer.pieces) + sum(len(_argument_pieces(c)) + 1 for _, c in answer.calls)
            await asyncio.sleep(reply.first_token_delay_s + reply.delay_s * events)
            if reply.cut_body:
                await _cut(request, orjson.dumps(completion_body(answer)))
            return _json(completion_body(answer), headers=_headers(reply))
        options = body.get("stream_options") or {}
        maker = _ChunkMaker(
            answer,
            include_usage=bool(options.get("include_usage")),
            obfuscation=self.obfuscation and options.get("include_obfuscation", True),
        )
        return await _stream(request, reply, list(maker.events()), record)


async def _verbatim(request: web.Request, reply: Reply, record: RecordedRequest, *,
                    stream: bool) -> web.StreamResponse:
    """A scripted shape, sent exactly as given."""
    if not stream:
        assert reply.completion is not None, "this reply has no whole-answer shape"
        return _json(reply.completion, headers=_headers(reply))
    if reply.raw is not None:
        events = [reply.raw]
    else:
        assert reply.events is not None, "this reply has no streamed shape"
        events = [b"data: " + orjson.dumps(e) + b"\n\n" for e in reply.events]
        events.append(b"data: [DONE]\n\n")
    return await _stream(request, reply, events, record)


class _Dropped(Exception):
    """The scripted reply drops the connection (``Reply.drop_after_events``)."""


def _headers(reply: Reply) -> dict[str, str]:
    return {
        "x-request-id": _random_id("req_", 32),
        "openai-processing-ms": "1",
        "openai-version": "2020-10-01",
        **reply.headers,
    }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _writes(reply: Reply, events: list[bytes]) -> list[bytes]:
    if reply.raw_write_sizes is None:
        return events
    data, writes, sizes = b"".join(events), [], itertools.cycle(reply.raw_write_sizes)
    offset = 0
    while offset < len(data):
        size = max(1, next(sizes))
        writes.append(data[offset : offset + size])
        offset += size
    return writes


async def _cut(request: web.Request, payload: bytes) -> None:
    """The head and half of ``payload``, then the connection is aborted."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.abort()
    raise _Dropped


async def _stream(
    request: web.Request,
    reply: Reply,
    events: list[bytes],
    record: RecordedRequest,
    headers: dict[str, str] | None = None,  # default: OpenAI's and the reply's
) -> web.StreamResponse:
    head = _headers(reply) if headers is None else headers
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           **head})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await asyncio.sleep(reply.first_token_delay_s)
    for count, data in enumerate(_writes(reply, events)):
        if count and reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.pause is not None and reply.pause[0] in data:
            record.paused = True
            await reply.pause[1].wait()
            record.paused = False
        if reply.drop_after_events is not None and count >= reply.drop_after_events:
            if request.transport is not None:
                request.transport.abort()
            raise _Dropped
        await response.write(data)  # waits while the client's connection is full
        record.bytes_sent += len(data)
    await response.write_eof()
    return response


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--chunks", type=int, default=None, help="words in the default reply")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    emulator = UpstreamEmulator(
        default_chunks=args.chunks, default_delay_s=args.token_delay_ms / 1000
    )
    emulator.run(args.host, args.port)


if __name__ == "__main__":
    main()
