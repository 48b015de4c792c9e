"""``POST /v1/chat/completions`` and ``/v1/responses`` after authentication: the stages
of ``pipeline`` wired to the upstream and to the client's connection, each API's
shapes translated by its adapter (``proxy.apis``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.apis import CHAT, Api
from proxy.clients.upstream import UpstreamCall
from proxy.config import Action, Policy
from proxy.core.answer import read_completion
from proxy.core.checkplan import plan_checks
from proxy.core.ledger import release_whole
from proxy.core.policy import Outcome, tightened
from proxy.errors import (
    ApiNotEnabled,
    BodyTooLarge,
    GuardBusy,
    ModelNotAllowed,
    ShapeError,
    UpstreamError,
)
from proxy.obs.log import RequestRecord
from proxy.pipeline import Checks
from proxy.web.relay import StreamRelay
from proxy.web.state import RUNTIME, Runtime

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None:
        if request.content_length > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        return await request.read()  # framed by its length: no more can arrive
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def chat_completions(request: web.Request, runtime: Runtime, policy: Policy,
                           record: RequestRecord, api: Api = CHAT) -> web.StreamResponse:
    upstream = policy.upstream_for(api.name)
    if upstream is None:
        raise ApiNotEnabled(f"{request.path} is not enabled for this key")
    body = await read_body(request, runtime.config.server.max_body_bytes)
    chat = api.parse(body, non_text=policy.prompt.non_text, allowed=policy.prompt.allow_fields)
    record.model, record.stream = chat.model, chat.stream
    policy = tightened(policy, chat.moderation)  # a client may ask for more, never less
    record.api, record.policy = api.name, policy
    record.unchecked_parts = len(chat.conversation.unchecked)
    if policy.models is not None and chat.model not in policy.models:
        raise ModelNotAllowed(f"model {chat.model!r} is not available to this key", param="model")
    plan = plan_checks(chat, policy, await runtime.guard.input_budget())
    record.guard_calls_planned, record.guard_calls_limit = plan.planned, plan.limit
    plan.enforce()  # 413 before any guard call, the upstream not started
    shared = runtime.config.server.cache_shared_across_tenants
    checks = Checks(guard=runtime.guard, policy=policy, chat=chat, record=record, plan=plan,
                    api=api, cache=runtime.cache, cache_scope="" if shared else policy.tenant,
                    shared=runtime.shared_cache,
                    request_slots=asyncio.Semaphore(
                        runtime.config.server.guard.max_concurrency_per_request),
                    tenant_slots=runtime.guard_share(policy))
    call = UpstreamCall(runtime.upstreams[upstream], chat.body, record.request_id,
                        stream=chat.stream, api=api.name)
    try:
        return await _answer(request, checks, call)
    finally:
        await call.abandon()  # a no-op once the answer was read


async def _answer(request: web.Request, checks: Checks, call: UpstreamCall
                  ) -> web.StreamResponse:
    if checks.policy.prompt.mode == "parallel" and checks.policy.prompt.check:
        call.start()  # its answer stays unread until the prompt passed
    prompt = await checks.check_prompt()
    if prompt.error_kind == "busy":  # the tenant's guard share is taken: come back soon
        await call.abandon()
        raise GuardBusy("too many requests are being checked for this key; retry shortly")
    headers = {"x-request-id": checks.record.request_id, "x-guard-action": _action(prompt)}
    if prompt.action is Action.BLOCK:
        await call.abandon()
        return await blocked_prompt(request, checks, headers)
    if checks.chat.stream:
        return await relay_stream(request, call, checks, headers)
    return await complete(call, checks, headers)


def _action(prompt: Outcome) -> str:
    """``x-guard-action``: the prompt's action; ``unchecked`` when a fail-open tenant let
    it through because the guard could not judge it."""
    if prompt.action is Action.PASS and prompt.error_code == "guard_unavailable":
        return "unchecked"
    return prompt.action.value


async def blocked_prompt(request: web.Request, checks: Checks, headers: dict[str, str]
                         ) -> web.StreamResponse:
    block, chat = checks.policy.block, checks.chat
    (prompt,) = checks.record.input
    message = block.text_for(prompt.error_code)
    checks.record.output = [Outcome.not_checked("the upstream was not called")]
    checks.record.prompt_chars = chat.conversation.prompt_chars() + len(chat.extras)
    moderation = checks.annotation()
    error = checks.api.error
    if block.style == "error" and prompt.error_code == "guard_unavailable":
        checks.record.error_code = "guard_unavailable"  # the guard failed: not a policy block
        body = error(503, message, "server_error", "guard_unavailable", None, moderation)
        return _json(body, status=503, headers={**headers, "Retry-After": "1"})
    if block.style == "error":
        checks.record.error_code = "content_filter"
        param = "input" if checks.api.name == "responses" else "messages"
        body = error(400, message, "invalid_request_error", "content_filter", param, moderation)
        return _json(body, status=400, headers=headers)
    if not chat.stream:
        checks.record.usage = ZERO_USAGE  # nothing was generated
        return _json(orjson.dumps(checks.api.blocked(chat.model, message, moderation)),
                     headers=headers)
    state = checks.stream_state()
    ending = checks.ending()
    checks.record.usage = state.usage_for(ending.usage)  # nothing was generated: zeros
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    try:
        await response.prepare(request)
        await response.write(state.prompt_blocked(moderation, ending, message) + state.done)
        checks.record.mark_first_byte()
        await response.write_eof()
    except ConnectionResetError:
        checks.record.client_gone = 499
    return response


async def complete(call: UpstreamCall, checks: Checks, headers: dict[str, str]
                   ) -> web.Response:
    raw = await call.whole()
    checks.record.upstream_ms = round((time.perf_counter() - call.started) * 1000, 3)
    answer = read_completion(_completion(raw, checks.api), model=checks.chat.model,
                             prefill=checks.chat.conversation.prefill)
    checks.record.removed_fields = answer.removed
    outputs = await checks.check_response(answer.texts)
    released = release_whole(answer.body, outputs, checks.policy.block)
    checks.record.usage = released.get("usage")
    body = checks.api.answer(released, checks.chat, checks.annotation(outputs))
    return _json(orjson.dumps(body), headers=headers)


def _completion(raw: bytes, api: Api) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("upstream answered with invalid JSON") from exc
    if isinstance(data, dict) and api is not CHAT:
        try:
            data = api.to_chat(data)
        except ShapeError as exc:
            raise UpstreamError(str(exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamError("upstream answer is not a chat completion")
    if not all(isinstance(choice, dict) for choice in data["choices"]):
        raise UpstreamError("upstream answer has a malformed choice")
    return data


def _json(body: bytes, *, status: int = 200, headers: dict[str, str]) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json",
                        headers=headers)


async def relay_stream(request: web.Request, call: UpstreamCall, checks: Checks,
                       headers: dict[str, str]) -> web.StreamResponse:
    upstream_resp = await call.opened()
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    relay = StreamRelay(response=response, checks=checks, secrets=call.secrets)
    streams = request.app[RUNTIME].metrics
    if streams is not None:
        streams.active_streams.inc()
    try:
        await response.prepare(request)
        await relay.run(upstream_resp)
        await response.write_eof()
    except ConnectionResetError:
        checks.record.client_gone = 499  # the client hung up: nobody left to answer
    finally:
        if streams is not None:
            streams.active_streams.dec()
        upstream_resp.release(ending=relay.read_to_end)
        checks.record.upstream_ms = round((time.perf_counter() - call.started) * 1000, 3)
    return response
