"""OpenAI-shaped errors for requests aiohttp refuses before any of the proxy's code runs.

A request with broken HTTP framing (CR or LF inside a header value, obsolete line
folding, ``Content-Length`` with ``Transfer-Encoding``, a header line over 8 KiB) is
answered by aiohttp's ``RequestHandler.handle_error`` with a plain-text body.  This
wraps that method, once per process, so those answers carry the same
``{"error": {...}}`` JSON as every other error; the status, the logging and the closing
of the connection stay aiohttp's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web, web_protocol

from proxy.core.protocol import error_body
from proxy.obs.redaction import redact

_MARK = "_guardproxy_json_errors"


def install() -> None:
    """Wrap ``RequestHandler.handle_error``; a second call changes nothing."""
    original = web_protocol.RequestHandler.handle_error
    if getattr(original, _MARK, False):
        return

    def handle_error(self: web_protocol.RequestHandler, request: Any, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        original(self, request, status, exc, message)  # for its logging and its checks
        answer = web.Response(status=status, body=_body(status, message),
                              content_type="application/json")
        answer.force_close()
        return answer

    setattr(handle_error, _MARK, True)
    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


def _body(status: int, message: str | None) -> bytes:
    if status >= 500:
        return error_body("internal error", type="server_error", code="internal_error")
    text = f"malformed HTTP request: {redact(message)}" if message else "malformed HTTP request"
    return error_body(text, type="invalid_request_error", code="bad_http_request")
