"""Thin handlers: each reads what the request carries and calls one function."""

from __future__ import annotations

from aiohttp import web

from proxy.apis import BY_PATH
from proxy.apis.models import model_list
from proxy.obs.metrics import CONTENT_TYPE
from proxy.web.completions import chat_completions
from proxy.web.state import POLICY, RECORD, RUNTIME, SERVED, Runtime


async def post_chat_completions(request: web.Request) -> web.StreamResponse:
    return await chat_completions(request, request.app[RUNTIME], request[POLICY], request[RECORD])


async def post_api(request: web.Request) -> web.StreamResponse:
    """``/v1/responses`` and ``/v1/messages``: the same stages, the route's adapter."""
    return await chat_completions(request, request.app[RUNTIME], request[POLICY], request[RECORD],
                                  BY_PATH[request.path])


async def get_models(request: web.Request) -> web.Response:
    policy = request[POLICY]
    listing = await request.app[RUNTIME].upstreams[policy.upstream].models()
    return web.json_response(model_list(listing, policy.models))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The client listener's: ready or not, nothing more (no tenant count, name or policy
    detail, nothing about the guard); the admin listener's ``/readyz`` says why."""
    reason = await _unready(request.app[RUNTIME])
    if reason is not None:
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def admin_readyz(request: web.Request) -> web.Response:
    runtime = request.app[SERVED][RUNTIME]
    reason = await _unready(runtime)
    if reason is not None:
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)
    return web.json_response({"status": "ready", "tenants": len(runtime.policies),
                              "guard": runtime.guard.model})


async def _unready(runtime: Runtime) -> str | None:
    if not runtime.policies:
        return "no policies loaded"
    return await runtime.guard.health()


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[SERVED][RUNTIME]
    assert runtime.metrics is not None
    return web.Response(body=runtime.metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", post_chat_completions)
    app.router.add_post("/v1/responses", post_api)
    app.router.add_post("/v1/messages", post_api)
    app.router.add_get("/v1/models", get_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def add_admin_routes(app: web.Application) -> None:
    """The admin listener's: what only the operator may see (it reveals tenants)."""
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", admin_readyz)
