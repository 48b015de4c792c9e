"""Cross-cutting request work only: the request id and the log line, the OpenAI
error envelope, and tenant authentication."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.apis import BY_PATH, CHAT, Api
from proxy.core.ids import random_hex
from proxy.core.protocol import error_body
from proxy.errors import ProxyError, Unauthorized
from proxy.obs import log
from proxy.obs.log import RequestRecord, logger
from proxy.web.state import POLICY, RECORD, RUNTIME

#: The routes whose decisions the audit trail records.
_AUDITED = frozenset(BY_PATH)

# A client's id is kept only if it is short and plain: it lands in headers and logs.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


@web.middleware
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gives every request an id, every /v1 request one ``request`` log line, and
    turns every error into OpenAI's error shape."""
    request_id = _request_id(request)
    runtime = request.app[RUNTIME]
    record = request[RECORD] = RequestRecord(request_id=request_id, path=request.path,
                                             keep_texts=runtime.audit is not None)
    status = 499  # unless an answer is made: the client went away first
    log.start_request(request_id=request_id)
    try:
        response = await _answer(request, handler)
        status = record.client_gone or response.status
    finally:
        if request.path.startswith("/v1/"):
            logger.info("request", **record.fields(status))
            if runtime.metrics is not None:
                runtime.metrics.observe(record, status, runtime.config.server.guard.api)
            if runtime.audit is not None and request.path in _AUDITED:
                runtime.audit.record(record, status)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    record = request[RECORD]
    try:
        return await handler(request)
    except ProxyError as exc:
        record.failed(exc.code, exc)
        return _error_response(exc, _api(request))
    except web.HTTPException as exc:
        record.error_code = _HTTP_CODES.get(exc.status, "http_error")
        return _http_error(exc, _api(request))
    except Exception:
        logger.exception("unhandled_error", path=request.path)
        record.error_code = "internal_error"
        body = error_body("internal error", type="server_error", code="internal_error")
        return web.Response(status=500, content_type="application/json", body=body)


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    return given if given and _CLIENT_ID.fullmatch(given) else new_request_id()


def new_request_id() -> str:
    """32 random hex digits."""
    return random_hex(16)


def _api(request: web.Request) -> Api:
    """The API whose error shape this request gets: the route's, else OpenAI's."""
    return BY_PATH.get(request.path, CHAT)


def _error_response(exc: ProxyError, api: Api) -> web.Response:
    body = api.error(exc.status, exc.message, exc.type, exc.code, exc.param, None)
    response = web.Response(status=exc.status, body=body, content_type="application/json")
    if exc.retry_after is not None:
        response.headers["Retry-After"] = exc.retry_after
    return response


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _http_error(exc: web.HTTPException, api: Api) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "http_error")
    body = api.error(exc.status, exc.reason, "invalid_request_error", code, None, None)
    return web.Response(status=exc.status, body=body, content_type="application/json")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Finds the caller's tenant from ``Authorization: Bearer`` or ``api-key``."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    key = _client_key(request)
    policy = request.app[RUNTIME].tenant_for(key) if key else None
    if policy is None:
        raise Unauthorized("missing API key" if not key else "invalid API key")
    request[POLICY] = policy
    record = request[RECORD]
    record.tenant, record.log_content = policy.tenant, policy.log_content
    log.add_to_request(tenant=policy.tenant)
    return await handler(request)


def _client_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (request.headers.get("x-api-key") or request.headers.get("api-key") or "").strip()
