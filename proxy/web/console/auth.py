"""Who may use the admin listener.

``/metrics``, ``/readyz`` and ``/api/*`` take ``admin.token`` as a bearer token, when one
is configured.  The console (``/console``) takes it once, in a sign-in form, and then
sends a session cookie: HttpOnly, SameSite=Strict, made of an expiry and an HMAC keyed
by the token (so every worker accepts it, and changing the token signs everyone out).
A console POST must also come from the console's own origin.  With no token configured,
the console is served only when the admin listener is bound to loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.config import Secret
from proxy.web.console.markup import HEADERS, page, tag
from proxy.web.state import RUNTIME, SERVED

COOKIE = "guardproxy_console"
SESSION_S = 12 * 3600


def _token(request: web.Request) -> Secret | None:
    return request.app[SERVED][RUNTIME].config.server.admin_token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _signature(token: Secret, expires: int) -> str:
    return hmac.new(token.get().encode(), f"console-session|{expires}".encode(),
                    hashlib.sha256).hexdigest()


def session_value(token: Secret, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_S)
    return f"{expires}.{_signature(token, expires)}"


def _valid_session(token: Secret, value: str) -> bool:
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, int(expires)).encode())


def _bearer_ok(token: Secret, request: web.Request) -> bool:
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               f"Bearer {token.get()}".encode())


def same_origin(request: web.Request) -> bool:
    """A console POST comes from a page of this listener (browsers send ``Origin``)."""
    origin = request.headers.get("Origin")
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc == request.host


@web.middleware
async def admin_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = _token(request)
    if not request.path.startswith("/console"):
        if token is not None and not _bearer_ok(token, request):
            return web.Response(status=401, text="admin token required\n")
        return await handler(request)
    return await _console_access(request, handler, token)


async def _console_access(request: web.Request, handler: Handler, token: Secret | None
                          ) -> web.StreamResponse:
    if token is None and not _loopback(request.app[SERVED][RUNTIME].config.server.admin_host):
        return refused(403, "The console needs admin.token_env when the admin listener is "
                       "not bound to loopback.")
    if request.method == "POST" and not same_origin(request):
        return refused(403, "This form must be sent from the console's own pages.")
    open_paths = ("/console/login", "/console/console.css")
    if token is None or request.path in open_paths:
        return await handler(request)
    cookie = request.cookies.get(COOKIE, "")
    if _valid_session(token, cookie) or _bearer_ok(token, request):
        return await handler(request)
    raise web.HTTPSeeOther("/console/login", headers=HEADERS)


def refused(status: int, why: str) -> web.Response:
    body = page("Not allowed", tag("p", why), signed_in=False)
    return web.Response(status=status, text=body, content_type="text/html", headers=HEADERS)


def html_response(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/html", headers=HEADERS)


async def login_form(request: web.Request, failed: bool = False) -> web.Response:
    if _token(request) is None:
        raise web.HTTPSeeOther("/console", headers=HEADERS)
    form = tag("form", tag("label", "Admin token", tag("input", type="password", name="token",
                                                        autocomplete="current-password",
                                                        required=True, autofocus=True)),
               tag("button", "Sign in", type="submit"), method="post", action="/console/login",
               class_="login")
    note = tag("p", "That token is not the admin token.", class_="error") if failed else None
    return html_response(page("Sign in", note, form, signed_in=False),
                         status=401 if failed else 200)


async def login(request: web.Request) -> web.Response:
    token = _token(request)
    if token is None:
        raise web.HTTPSeeOther("/console", headers=HEADERS)
    given = str((await request.post()).get("token", ""))
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.get().encode()):
        return await login_form(request, failed=True)
    response = web.HTTPSeeOther("/console", headers=HEADERS)
    response.set_cookie(COOKIE, session_value(token), max_age=SESSION_S, path="/",
                        httponly=True, samesite="Strict", secure=request.secure)
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/console/login", headers=HEADERS)
    response.del_cookie(COOKIE, path="/")
    raise response
