"""``create_app(config)``: routes, middlewares, and one client session for the guard
and one per upstream (and, with ``cache.redis_url``, the Redis client of the verdict cache
the replicas share), opened and closed with the app, with its metrics and its live
policy reload.  At start-up the guard is asked for its context window
(``/v1/models``), unless the config names it.

``create_admin_app(app)``: the operator's listener beside it (``admin.host``,
``admin.port``): ``/metrics`` and the detailed ``/readyz``, which name tenants and so
never answer on the client listener, behind ``admin.token_env``'s bearer token when one
is set.  ``proxy.serving`` binds both (``guardproxy serve``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from proxy.audit.setup import make_writer
from proxy.audit.setup import start as start_audit
from proxy.audit.writer import AuditCounters
from proxy.clients.guard import ChatGuard, GenerateGuard, Guard
from proxy.clients.sharedcache import REJECTIONS, CacheCounters, SharedVerdicts
from proxy.clients.upstream import Upstream
from proxy.config import Config, GuardConfig, ServerConfig
from proxy.config.reload import PolicyReloader
from proxy.core.cache import VerdictCache
from proxy.obs.log import install_redaction, logger
from proxy.obs.metrics import Metrics
from proxy.web import httperrors
from proxy.web.console import add_console_routes
from proxy.web.console.auth import admin_access
from proxy.web.middlewares import authenticate, envelope
from proxy.web.routes import add_admin_routes, add_routes
from proxy.web.state import RUNTIME, SERVED, Runtime


def create_app(config: Config) -> web.Application:
    httperrors.install()  # aiohttp's own 4xx answers in OpenAI's shape too
    install_redaction()  # and its log records of them without the credentials they show
    # The body limit is enforced while reading, to answer 413 in OpenAI's shape.
    app = web.Application(middlewares=[envelope, authenticate], client_max_size=2**62)
    add_routes(app)
    app.cleanup_ctx.append(_clients(config))
    return app


def create_admin_app(served: web.Application) -> web.Application:
    admin = web.Application(middlewares=[admin_access])
    admin[SERVED] = served
    add_admin_routes(admin)
    add_console_routes(admin)
    return admin


def _session() -> aiohttp.ClientSession:
    # No pool cap: concurrency is bounded by the clients, not by a queue in here.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    # No cookies between the proxy and its servers: skipping the jar saves work per call.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def make_cache(config: GuardConfig, *, shared: bool = False) -> VerdictCache | None:
    """This process's verdict cache; None when it is off and no Redis is shared (with one,
    a cache of size 0 keeps nothing but still makes the keys)."""
    if config.cache_size <= 0 and not shared:
        return None
    return VerdictCache(size=config.cache_size, ttl_s=config.cache_ttl_s,
                        namespace=f"{config.api}\0{config.model}\0")


def make_shared_cache(server: ServerConfig, metrics: Metrics | None = None
                      ) -> SharedVerdicts | None:
    """The replicas' verdict cache in Redis (``cache.redis_url``), not yet connected."""
    if server.cache_redis_url is None:
        return None
    password, secret = server.cache_redis_password, server.cache_redis_secret
    if secret is None:  # the loader refuses such a config
        raise ValueError("cache.redis_url needs cache.redis_secret_env")
    return SharedVerdicts(url=server.cache_redis_url,
                          password=password.get() if password is not None else None,
                          secret=secret.get().encode(),
                          timeout_s=server.cache_redis_timeout_s,
                          ttl_s=server.guard.cache_ttl_s,
                          counters=None if metrics is None else cache_counters(metrics))


def cache_counters(metrics: Metrics) -> CacheCounters:
    """The shared cache's counts in the metrics; each rejection reason at 0 from the start,
    so that a rate can be alerted on."""
    for reason in REJECTIONS:
        metrics.redis_rejected.labels(reason)
    return CacheCounters(
        hit=metrics.redis_hits.inc,
        rejected=lambda reason: metrics.redis_rejected.labels(reason).inc(),
        failed=lambda op, kind: metrics.redis_errors.labels(op, kind).inc())


def audit_counters(metrics: Metrics) -> AuditCounters:
    """The audit trail's counts in the metrics, each reason at 0 from the start."""
    for reason in ("queue_full", "write_failed"):
        metrics.audit_dropped.labels(reason)
    return AuditCounters(written=metrics.audit_written.inc,
                         dropped=lambda reason, n: metrics.audit_dropped.labels(reason).inc(n),
                         purged=metrics.audit_purged.inc)


def make_reloader(server: ServerConfig, runtime: Runtime) -> PolicyReloader:
    """Live policy reload into ``runtime``, logged as ``policy_reload`` and counted in its
    metrics."""
    def counted(outcome: str) -> None:
        if runtime.metrics is not None:
            runtime.metrics.reloads.labels(outcome).inc()

    interval = server.watch_interval_s if server.watch_policies else 0.0
    return PolicyReloader(server, runtime.set_policies, log=logger, on_outcome=counted,
                          interval_s=interval)


def make_guard(config: GuardConfig, session: aiohttp.ClientSession,
               metrics: Metrics | None = None) -> Guard:
    """The configured guard client; with ``metrics``, its requests are counted by step."""
    kind = GenerateGuard if config.api == "generate" else ChatGuard
    counted = None if metrics is None else metrics.guard_requests_by(config.api)
    return kind(config=config, session=session, on_request=counted)


def _clients(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        guard_session = _session()
        upstream_sessions = {name: _session() for name in config.server.upstreams}
        sessions = [guard_session, *upstream_sessions.values()]
        metrics = Metrics()
        metrics.count_in_batches(asyncio.get_running_loop())
        guard = make_guard(config.server.guard, guard_session, metrics)
        upstreams = {
            name: Upstream(config=upstream, session=upstream_sessions[name])
            for name, upstream in config.server.upstreams.items()
        }
        shared = make_shared_cache(config.server, metrics)
        audit = make_writer(config.server, audit_counters(metrics))
        runtime = app[RUNTIME] = Runtime(config=config, guard=guard, upstreams=upstreams,
                                         cache=make_cache(config.server.guard,
                                                          shared=shared is not None),
                                         shared_cache=shared, metrics=metrics, audit=audit)
        if shared is not None:
            shared.start()
        if audit is not None:
            try:
                await start_audit(audit)  # a store that cannot be opened stops the start
            except BaseException:
                await _close(sessions, shared)
                raise
        reloader = make_reloader(config.server, runtime)
        reloader.start()
        # Asked beside start-up, not before it: the socket opens at once, and a check that
        # arrives first waits for the answer.  A guard that is down is asked again later.
        window = asyncio.create_task(guard.input_budget(), name="guardproxy-guard-window")
        try:
            yield
        finally:
            logger.info("stopped", tenants=len(runtime.policies))  # the shutdown line
            await reloader.stop()
            window.cancel()
            if audit is not None:
                await audit.stop()
            guard.close()
            for upstream in upstreams.values():
                upstream.close()
            await _close(sessions, shared)
            metrics.count_in_batches(None)

    return ctx


async def _close(sessions: list[aiohttp.ClientSession], shared: SharedVerdicts | None) -> None:
    if shared is not None:
        await shared.close()
    for session in sessions:
        await session.close()
