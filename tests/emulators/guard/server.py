"""The emulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from proxy.demo.rules import (  # the rule table, shared with the demo guard
    DEFAULT_RULES,
    REFUSAL_PATTERNS,
    Rule,
    Severity,
    judged_message,
)

from ..loopback import LoopbackServer, read_json_body
from .constants import (
    CONTEXT_LEN,
    DEFAULT_TEMPERATURE,
    GARBAGE_TEXT,
    MODEL_PATH,
    TOKENIZER_MAX_LEN,
    WEIGHT_VERSION,
    Fault,
    Json,
)
from .continuation import continue_verdict, split_answer, with_severity
from .generation import Generation, Sampling, generation_from, sampling_from_dict
from .model import Verdict, severity_distribution
from .radix import RadixCache
from .requests import (
    RequestError,
    _error,
    check_length,
    openai_error,
    render_request,
    validate_chat_request,
    validation_error,
)
from .responses import _json_response, chat_response, generate_response
from .tokenizer import TOKENIZER

Api = Literal["chat", "generate"]
# Where a fresh check starts: no answer given, or only the fixed first word.
_CHECK_STARTS = ("", "Safety:")
# http_server.flush_cache's answer (the same text with 400 when it refused)
FLUSHED = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)\n"
)


@dataclass(frozen=True, kw_only=True)
class GuardCall:
    """One generation and the model's work for it.

    ``cached_tokens`` of the prompt were found in the radix cache, ``computed_tokens`` had to
    be computed; ``decoded_tokens`` were generated (the stop token included).
    """

    api: Api
    answer_prefix: str  # the start of the answer the prompt gave ("" if none)
    prompt_tokens: int
    cached_tokens: int
    computed_tokens: int
    decoded_tokens: int

    @property
    def starts_check(self) -> bool:
        """A fresh check, not the continuation of an answer already begun."""
        return self.answer_prefix in _CHECK_STARTS


@dataclass
class RecordedRequest:
    path: str
    method: str
    headers: CIMultiDict[str]  # case-insensitive
    body: Any  # parsed JSON, or None when the body was not JSON
    prompts: list[str] = field(default_factory=list)  # rendered (chat) or given (/generate) text
    # The client closed the connection while this request was still unanswered, and when.
    dropped: bool = False
    dropped_at: float | None = None  # time.monotonic()
    calls: list[GuardCall] = field(default_factory=list)  # the generations it asked for

    @property
    def prompt(self) -> str | None:
        return self.prompts[0] if self.prompts else None

    @property
    def render(self) -> str | None:
        """The template's render: ``prompt`` without the start of the answer it handed over."""
        return None if self.prompt is None else split_answer(self.prompt)[0]

    @property
    def answer_prefix(self) -> str:
        """The start of the answer the prompt handed over ("" if none)."""
        return "" if self.prompt is None else split_answer(self.prompt)[1]

    @property
    def starts_check(self) -> bool:
        """Whether it asked for a fresh check (rather than only continuing an answer)."""
        if self.prompt is None:
            return any(call.starts_check for call in self.calls)
        return self.answer_prefix in _CHECK_STARTS


_RECORD = web.RequestKey("guard_record", RecordedRequest)


@web.middleware
async def _note_drops(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks a request ``dropped`` when its handler is cancelled because the client went away
    (aiohttp cancels it; a fault that drops the connection itself is not the client's doing)."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        record = request.get(_RECORD)
        if record is not None and task is not None and task.cancelling():
            record.dropped, record.dropped_at = True, time.monotonic()
        raise


@dataclass(kw_only=True)
class GuardEmulator(LoopbackServer):
    """SGLang + Qwen3Guard-Gen on loopback. Tests change the fields between requests.

    ``fault`` applies to ``/v1/chat/completions`` and ``/generate``: ``"http_500"`` (SGLang's 500
    shapes), ``"garbage"`` (200 with unreadable output), ``"hang"`` (never answers), ``"reset"``
    (headers and half the body, then the connection is dropped). ``latency_s`` delays those routes;
    ``decode_step_s`` and ``prefill_token_s`` add a GPU's time at batch 1 to each answer:
    that much per decoded token and per computed (not cached) prompt token of its generations.

    ``requests`` records the model's work (verdicts, tokenizing, health probes);
    ``model_queries`` the model-card look-ups (``/v1/models``), which a client makes once at
    start-up to learn ``max_model_len``, kept apart so that tests count the guard's work.
    ``calls`` has one :class:`GuardCall` per generation (each text of a ``/generate`` batch).

    A prompt may end with the start of the answer (see ``continuation``); the model continues
    it.  ``radix`` is SGLang's prefix cache over the prompts' token ids, holding at most
    ``radix_capacity`` tokens (None: unbounded; SGLang's ``--max-total-tokens``), emptied by
    :meth:`flush_cache`; ``enable_cache_report`` is SGLang's ``--enable-cache-report``.

    A test may hold answers open: ``hold`` maps the number of a response check (0: the first
    check of an answer this emulator judged, 1: the next, ...) to an event that check's answer
    waits for; ``holding`` lists the numbers of the checks waiting now.
    """

    model: str = MODEL_PATH
    rules: list[Rule] = field(default_factory=lambda: list(DEFAULT_RULES))
    refusal_patterns: list[str] = field(default_factory=lambda: list(REFUSAL_PATTERNS))
    safe_probability: float = 0.98
    max_model_len: int = CONTEXT_LEN
    default_temperature: float = DEFAULT_TEMPERATURE
    # SGLang >= PR #16567 renders a trailing assistant message as a user one (see module docstring).
    convert_last_assistant: bool = True
    # Not SGLang: skip its content normalisation, so content None or a part list fails the render.
    strict_content: bool = False
    latency_s: float = 0.0
    decode_step_s: float = 0.0
    prefill_token_s: float = 0.0
    fault: Fault | None = None
    # SGLang's --reasoning-parser (e.g. "deepseek-r1"): chat answers move into reasoning_content
    reasoning_parser: str | None = None
    healthy: bool = True
    requests: list[RecordedRequest] = field(default_factory=list)
    model_queries: list[RecordedRequest] = field(default_factory=list)
    calls: list[GuardCall] = field(default_factory=list)
    radix_capacity: int | None = None
    enable_cache_report: bool = False
    hold: dict[int, asyncio.Event] = field(default_factory=dict)
    holding: list[int] = field(default_factory=list)
    response_checks: int = 0  # response checks started so far
    url: str = ""
    seed: int = 0
    radix: RadixCache = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _in_flight: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.radix = RadixCache(self.radix_capacity)

    @property
    def checks(self) -> list[GuardCall]:
        """The calls that started a check (the rest continued an answer)."""
        return [call for call in self.calls if call.starts_check]

    def flush_cache(self) -> bool:
        """Empty the radix cache; refused (False) while verdict requests are in flight."""
        if self._in_flight:
            return False
        self.radix.reset()
        return True

    # -- verdicts ------------------------------------------------------------------------------

    def judge(self, prompt: str) -> Verdict:
        """The greedy verdict for a rendered prompt."""
        mode, text = judged_message(prompt)
        rule = next((r for r in self.rules if r.matches(text, mode)), None)
        refusal = None
        if mode == "response":
            refusal = any(re.search(p, text, re.IGNORECASE) for p in self.refusal_patterns)
        severity: Severity = rule.severity if rule else "Safe"
        probability = rule.probability if rule else self.safe_probability
        return Verdict(
            mode=mode,
            severity=severity,
            category=rule.category if rule else "None",
            refusal=refusal,
            distribution=severity_distribution(severity, probability),
            judged=text,
        )

    def _sample(self, verdict: Verdict, sampling: Sampling) -> Verdict:
        if sampling.temperature <= 0:
            return verdict
        rng = random.Random(sampling.seed) if sampling.seed is not None else self._rng
        severities = [s for s, _ in verdict.distribution]
        weights = [p ** (1.0 / sampling.temperature) for _, p in verdict.distribution]
        return with_severity(verdict, rng.choices(severities, weights)[0])

    def generate(self, prompt: str, sampling: Sampling) -> Generation:
        """What the model generates after ``prompt`` (continuing the answer it may begin)."""
        render, prefix = split_answer(prompt)
        lead = TOKENIZER.tokenize(prefix)[-2:]
        if self.fault == "garbage":
            return generation_from(GARBAGE_TEXT, None, sampling, lead)
        greedy = self.judge(render)
        verdict, output = continue_verdict(
            greedy, self._sample(greedy, sampling), prefix, sampling.regex
        )
        return generation_from(output, verdict, sampling, lead)

    def _work(
        self,
        prompt: str,
        prompt_ids: list[int],
        sampling: Sampling,
        api: Api,
        *,
        reuse: int,
        extra_key: str | None,
    ) -> tuple[Generation, GuardCall]:
        """Generate as SGLang's scheduler does: reuse at most ``reuse`` cached prompt tokens
        (in the ``extra_key`` namespace), compute the rest, and cache the prompt and the output
        but its last token."""
        self.radix.capacity = self.radix_capacity
        cached = self.radix.match(prompt_ids[: max(reuse, 0)], extra_key)
        gen = self.generate(prompt, sampling)
        self.radix.insert((prompt_ids + gen.output_ids)[:-1], extra_key)
        call = GuardCall(
            api=api,
            answer_prefix=split_answer(prompt)[1],
            prompt_tokens=len(prompt_ids),
            cached_tokens=cached,
            computed_tokens=len(prompt_ids) - cached,
            decoded_tokens=len(gen.output_ids),
        )
        self.calls.append(call)
        return gen, call

    # -- HTTP ----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[_note_drops])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/generate", self._generate)
        for path in ("/tokenize", "/v1/tokenize"):
            app.router.add_post(path, self._tokenize)
        for path in ("/detokenize", "/v1/detokenize"):
            app.router.add_post(path, self._detokenize)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/get_model_info", self._model_info)
        for method in ("GET", "POST"):
            app.router.add_route(method, "/flush_cache", self._flush_cache)
        return app

    async def _record(
        self, request: web.Request, into: list[RecordedRequest] | None = None
    ) -> RecordedRequest:
        _, body = await read_json_body(request)
        record = RecordedRequest(request.path, request.method, CIMultiDict(request.headers), body)
        (self.requests if into is None else into).append(record)
        request[_RECORD] = record
        return record

    async def _before_answer(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.fault == "hang":
            await asyncio.Future()  # until the client goes away

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        with self._running():
            return await self._chat_answer(request)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Counts the generation requests in flight (``flush_cache`` refuses while any are)."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def _chat_answer(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        await self._before_answer()
        if self.fault == "http_500":
            return openai_error(
                "Internal server error: CUDA error: an illegal memory access was encountered",
                "InternalServerError",
                500,
            ).response()
        try:
            body = self._chat_body(request, record)
        except RequestError as exc:
            return exc.response()
        return await self._answer(request, body)

    def _chat_body(self, request: web.Request, record: RecordedRequest) -> bytes:
        _require_json(request)
        body = validate_chat_request(_parsed(record))
        if body.get("stream"):
            # SGLang's own error type for a streamed guard request (the proxy never sends one)
            raise openai_error(
                "OpenAIServingChat does not support streaming requests", "NotImplementedError", 501
            )
        try:
            prompt = render_request(
                body,
                flatten=not self.strict_content,
                convert_last_assistant=self.convert_last_assistant,
            )
            record.prompts.append(prompt)
            sampling = self._chat_sampling(body)
            prompt_ids = TOKENIZER.encode(prompt)
            check_length(len(prompt_ids), sampling.max_new_tokens, self.max_model_len)
        except ValueError as exc:
            raise openai_error(str(exc), "BadRequest") from exc
        gen, call = self._work(
            prompt,
            prompt_ids,
            sampling,
            "chat",
            reuse=len(prompt_ids) - 1,
            extra_key=_extra_key(body, ("cache_salt", "extra_key")),
        )
        record.calls.append(call)
        reported = call.cached_tokens if self.enable_cache_report else None
        reasoning = self.reasoning_parser is not None and body.get("separate_reasoning", True)
        answer = chat_response(body, uuid.uuid4().hex, gen, len(prompt_ids), reported,
                               reasoning=bool(reasoning))
        return orjson.dumps(answer)

    def _chat_sampling(self, body: Json) -> Sampling:
        temperature = body.get("temperature")
        stop = body.get("stop") or ()
        return Sampling(
            max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
            temperature=self.default_temperature if temperature is None else float(temperature),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            regex=body.get("regex"),
            seed=body.get("seed"),
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        with self._running():
            return await self._generate_answer(request)

    async def _generate_answer(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        await self._before_answer()
        if self.fault == "http_500":
            return web.Response(status=500, text="Internal Server Error")
        try:
            payload = self._generate_body(_parsed(record), record)
        except RequestError as exc:
            return exc.response()
        return await self._answer(request, payload)

    def _generate_body(self, req: Any, record: RecordedRequest) -> bytes:
        if not isinstance(req, dict):
            raise validation_error(
                [_error("dataclass_type", (), "Input should be a dictionary", req)]
            )
        texts = _generate_texts(req)
        try:
            sampling = sampling_from_dict(req.get("sampling_params") or {})
        except TypeError:
            raise RequestError(500, "Internal Server Error") from None
        except ValueError as exc:
            raise RequestError(400, {"error": {"message": str(exc)}}) from exc
        outputs = [self._generate_one(text, sampling, req, record) for text in texts]
        return orjson.dumps(outputs if _is_batch(req) else outputs[0])

    def _generate_one(
        self, text: str, sampling: Sampling, req: Json, record: RecordedRequest
    ) -> Json:
        started = time.monotonic()
        record.prompts.append(text)
        prompt_ids = TOKENIZER.encode(text)
        try:
            check_length(len(prompt_ids), sampling.max_new_tokens, self.max_model_len)
        except ValueError as exc:
            raise RequestError(400, {"error": {"message": str(exc)}}) from exc
        gen, call = self._work(
            text,
            prompt_ids,
            sampling,
            "generate",
            reuse=_reuse_limit(req, prompt_ids),
            extra_key=_extra_key(req, ("extra_key",)),
        )
        record.calls.append(call)
        return generate_response(
            uuid.uuid4().hex, prompt_ids, gen, req, started, cached_tokens=call.cached_tokens
        )

    async def _answer(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        record = request.get(_RECORD)
        if record is not None:
            await self._held(record)
        if record is not None and (self.decode_step_s or self.prefill_token_s):
            await asyncio.sleep(sum(self.decode_step_s * call.decoded_tokens
                                    + self.prefill_token_s * call.computed_tokens
                                    for call in record.calls))
        if self.fault == "reset":
            return await _reset(request, payload)
        return web.Response(body=payload, content_type="application/json")

    async def _held(self, record: RecordedRequest) -> None:
        """Wait while a test holds this response check open (see ``hold``)."""
        render = record.render
        if not (render and record.starts_check and judged_message(render)[0] == "response"):
            return
        number, self.response_checks = self.response_checks, self.response_checks + 1
        event = self.hold.get(number)
        if event is None:
            return
        self.holding.append(number)
        try:
            await event.wait()
        finally:
            self.holding.remove(number)

    async def _tokenize(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        try:
            _require_json(request)
            return _json_response(self._tokenize_body(_parsed(record)))
        except RequestError as exc:
            return exc.response()

    def _tokenize_body(self, req: Any) -> Json:
        if not isinstance(req, dict) or (req.get("prompt") is None) == (
            req.get("messages") is None
        ):
            msg = "Value error, Exactly one of 'prompt' or 'messages' must be provided."
            raise validation_error([_error("value_error", (), msg, req)])
        prompt = req.get("prompt")
        if prompt is None:
            body = validate_chat_request({**req, "messages": req["messages"]})
            try:
                prompt = render_request(
                    body, flatten=True, convert_last_assistant=self.convert_last_assistant
                )
            except ValueError as exc:
                raise openai_error(str(exc), "BadRequest") from exc
        if isinstance(prompt, list):
            batch = [TOKENIZER.encode(p) for p in prompt]
            return {
                "tokens": batch,
                "count": [len(ids) for ids in batch],
                "max_model_len": TOKENIZER_MAX_LEN,
            }
        ids = TOKENIZER.encode(prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": TOKENIZER_MAX_LEN}

    async def _detokenize(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        req = record.body if isinstance(record.body, dict) else {}
        tokens, skip = req.get("tokens"), req.get("skip_special_tokens", True)
        if isinstance(tokens, list) and tokens and isinstance(tokens[0], list):
            text: str | list[str] = [TOKENIZER.decode(t, skip_special_tokens=skip) for t in tokens]
        elif isinstance(tokens, list):
            text = TOKENIZER.decode(tokens, skip_special_tokens=skip)
        else:
            return validation_error(
                [_error("list_type", ("tokens",), "Input should be a valid list", tokens)]
            ).response()
        return _json_response({"text": text})

    async def _flush_cache(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=200 if self.flush_cache() else 400, text=FLUSHED)

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=200 if self.healthy else 503)

    def _card(self) -> Json:
        return {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
        }

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request, self.model_queries)
        return _json_response({"object": "list", "data": [self._card()]})

    async def _model(self, request: web.Request) -> web.Response:
        await self._record(request, self.model_queries)
        name = request.match_info["model"]
        if name != self.model:
            error = {
                "message": f"The model '{name}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            return _json_response({"error": error}, 404)
        return _json_response(self._card())

    async def _model_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _json_response(
            {
                "model_path": self.model,
                "tokenizer_path": self.model,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": WEIGHT_VERSION,
            }
        )


def _require_json(request: web.Request) -> None:
    """http_server.validate_json_request."""
    if request.content_type != "application/json":
        msg = "Unsupported Media Type: Only 'application/json' is allowed"
        raise validation_error(
            [{"loc": ["header", "content-type"], "msg": msg, "type": "value_error"}]
        )


def _parsed(record: RecordedRequest) -> Any:
    if record.body is None:
        raise validation_error([_error("json_invalid", (0,), "JSON decode error", {})])
    return record.body


def _reuse_limit(req: Json, prompt_ids: list[int]) -> int:
    """``Req.adjust_max_prefix_ids``: all prompt tokens but the last at most, and with
    ``return_logprob`` none from ``logprob_start_len`` on (the scheduler reads -1 as the last)."""
    limit = len(prompt_ids) - 1
    start = req.get("logprob_start_len")
    if req.get("return_logprob") and isinstance(start, int) and start >= 0:
        limit = min(limit, start)
    return limit


def _extra_key(body: Json, keys: tuple[str, ...]) -> str | None:
    """``OpenAIServingBase._compute_extra_key``: the cache namespace a request asks for."""
    parts = [value for key in keys if isinstance(value := body.get(key), str) and value]
    return "".join(parts) or None


def _is_batch(req: Json) -> bool:
    text, input_ids = req.get("text"), req.get("input_ids")
    return isinstance(text, list) or bool(input_ids and isinstance(input_ids[0], list))


def _generate_texts(req: Json) -> list[str]:
    text: Any = req.get("text")
    input_ids: Any = req.get("input_ids")
    if not text and not input_ids:
        raise RequestError(
            400,
            {"error": {"message": "Either text, input_ids or input_embeds should be provided."}},
        )
    if text is not None:
        return text if isinstance(text, list) else [text]
    batches: list[list[int]] = input_ids if isinstance(input_ids[0], list) else [input_ids]
    return [TOKENIZER.decode(ids, skip_special_tokens=False) for ids in batches]


async def _reset(request: web.Request, payload: bytes) -> web.StreamResponse:
    """Send the headers and half the body, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-model-len", type=int, default=CONTEXT_LEN)
    parser.add_argument("--max-total-tokens", type=int, default=None, help="radix cache size")
    parser.add_argument("--enable-cache-report", action="store_true")
    args = parser.parse_args(argv)
    emulator = GuardEmulator(
        latency_s=args.latency_ms / 1000,
        max_model_len=args.max_model_len,
        radix_capacity=args.max_total_tokens,
        enable_cache_report=args.enable_cache_report,
    )
    emulator.run(args.host, args.port)


if __name__ == "__main__":
    main()
