"""The verdict cache shared by replicas, in Redis (``cache.redis_url``).

Each process keeps its own LRU (``proxy.core.cache``) in front; Redis is the second level,
asked on a local miss, so a turn one replica judged is not judged again by another (with
``prompt.scope: all``, every earlier turn of a conversation).  The keys are the local
cache's digests (the tenant's scope included), under ``PREFIX``; the values are
``encode_verdict``'s compact JSON, read back strictly.

- A read is one GET, waited for at most ``cache.redis_timeout_s``.  A value that is not
  a verdict is a miss (counted as ``malformed``), never an error and never a verdict.
- A write is one SET with an expiry (``guard.cache_ttl_s``, at most ``MAX_TTL_S``), in a
  background task: the request does not wait for it.  At most ``MAX_WRITES`` are in
  flight and at most ``MAX_READS`` reads; past that a write is dropped and a read is a
  miss (``busy``), so a slow Redis cannot pile up tasks or connections.
- Any error or timeout is a miss.  Redis is then left alone: reads and writes skip it
  while a background task PINGs it every ``RETRY_S``; once it answers, sharing resumes.
  A Redis that is down or slow thus costs at most one timeout, to the checks that were
  waiting for it when it failed.  Until the first PING answers, at start-up, checks miss.
- One warning line when Redis is lost (``verdict_cache_redis``, ``state: down``), at most
  one per ``WARN_EVERY_S`` (those left out are counted in the next one's ``suppressed``),
  and an info line when it is reachable (``state: up``).  Every failure is counted in
  ``guardproxy_verdict_cache_redis_errors_total{op, kind}``; no failure reaches a request.

redis-py (the ``redis`` extra) is imported when an instance is made: a proxy without
``cache.redis_url`` never loads it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from proxy.core.cache import decode_verdict, encode_verdict
from proxy.core.verdict import Verdict
from proxy.obs.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = structlog.get_logger("guardproxy")

#: Every key's prefix: the cache may live in a Redis shared with other uses.
PREFIX = b"guardproxy:verdict:v1:"
#: After a failure, Redis is left alone this long, then PINGed (again and again).
RETRY_S = 1.0
#: How long a PING may take: it may have to connect (and shake hands for TLS).
PROBE_TIMEOUT_S = 2.0
WARN_EVERY_S = 30.0
MAX_READS = 64
MAX_WRITES = 64
MAX_TTL_S = 30 * 24 * 3600.0


def redis_key(key: bytes) -> bytes:
    """The Redis key of a verdict cache key (``VerdictCache.key``)."""
    return PREFIX + key.hex().encode()


class SharedVerdicts:
    """The Redis level of the verdict cache; ``get`` and ``put`` never raise."""

    def __init__(self, *, url: str, password: str | None, timeout_s: float, ttl_s: float,
                 metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import TimeoutError as RedisTimeout

        self.url = url  # never holds credentials (the loader refuses them)
        self._client: Redis = redis.asyncio.Redis.from_url(
            url, password=password, retry=Retry(NoBackoff(), 0),  # a failure is a miss
            socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S,
            max_connections=MAX_READS + MAX_WRITES + 1)
        self._timeouts: tuple[type[Exception], ...] = (TimeoutError, RedisTimeout)
        self._timeout = timeout_s
        self._ttl_ms = max(1, int(min(ttl_s, MAX_TTL_S) * 1000))
        self._metrics = metrics
        self._clock = clock
        self._up = False
        self._probe: asyncio.Task[None] | None = None
        self._reads = 0
        self._writes: set[asyncio.Task[None]] = set()
        self._warned_at: float | None = None
        self._suppressed = 0
        self._lost_shown = True  # a "down" line was the last one shown (or none yet)

    @property
    def up(self) -> bool:
        """Redis answered, and nothing failed since."""
        return self._up

    def start(self) -> None:
        """Connect in the background (a PING); checks miss until it answers."""
        self._reconnect(wait=False)

    async def get(self, key: bytes) -> Verdict | None:
        """The verdict stored under ``key``; None for a miss, whatever the reason."""
        if not self._up:
            return None
        if self._reads >= MAX_READS:
            self._count("get", "busy")
            return None
        self._reads += 1
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._client.get(redis_key(key))
        except Exception as exc:  # any failure of the cache is a miss
            self._failed("get", exc)
            return None
        finally:
            self._reads -= 1
        if raw is None:
            return None
        verdict = decode_verdict(raw) if isinstance(raw, bytes) else None
        if verdict is None:
            self._count("get", "malformed")
        elif self._metrics is not None:
            self._metrics.redis_hits.inc()
        return verdict

    def put(self, key: bytes, verdict: Verdict) -> None:
        """Store a verdict in the background; dropped while Redis is down or busy."""
        if not self._up:
            return
        if len(self._writes) >= MAX_WRITES:
            self._count("set", "busy")
            return
        task = asyncio.create_task(self._set(redis_key(key), encode_verdict(verdict)))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def check(self) -> str | None:
        """One PING (``guardproxy check --probe``): None if Redis answered, else why not."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self._client.ping()
        except Exception as exc:
            return _describe(exc)
        return None

    async def close(self) -> None:
        """Let the writes in flight finish (one timeout at most), then disconnect."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=self._timeout)
        tasks = [task for task in (self._probe, *self._writes) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def _set(self, name: bytes, value: bytes) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(name, value, px=self._ttl_ms)
        except Exception as exc:
            self._failed("set", exc)

    def _failed(self, op: str, exc: Exception) -> None:
        self._count(op, self._kind(exc))
        if self._up:  # the first failure leaves Redis alone; the probe brings it back
            self._up = False
            self._warn(op, exc)
            self._reconnect(wait=True)

    def _reconnect(self, *, wait: bool) -> None:
        if self._probe is None or self._probe.done():
            # a context of its own: not that of the request whose check failed
            self._probe = asyncio.create_task(self._probing(wait), context=contextvars.Context(),
                                              name="guardproxy-redis-probe")

    async def _probing(self, wait: bool) -> None:
        while True:
            if wait:
                await asyncio.sleep(RETRY_S)
            wait = True
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await self._client.ping()
            except Exception as exc:
                self._count("ping", self._kind(exc))
                self._warn("ping", exc)
                continue
            self._up = True
            if self._lost_shown:  # the first connection, or back after a "down" line
                self._lost_shown = False
                logger.info("verdict_cache_redis", state="up", url=self.url)
            return

    def _warn(self, op: str, exc: Exception) -> None:
        """A warning, unless one went out less than ``WARN_EVERY_S`` ago."""
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            self._suppressed += 1
            return
        logger.warning("verdict_cache_redis", state="down", url=self.url, op=op,
                       error=_describe(exc), suppressed=self._suppressed, retry_s=RETRY_S)
        self._warned_at, self._suppressed, self._lost_shown = now, 0, True

    def _kind(self, exc: Exception) -> str:
        return "timeout" if isinstance(exc, self._timeouts) else "error"

    def _count(self, op: str, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.redis_errors.labels(op, kind).inc()


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
