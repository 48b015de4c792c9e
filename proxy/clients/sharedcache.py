"""The verdict cache shared by replicas, in Redis (``cache.redis_url``).

Each process keeps its own LRU (``proxy.core.cache``) in front; Redis is the second level,
asked on a local miss, so a turn one replica judged is not judged again by another (with
``prompt.scope: all``, every earlier turn of a conversation).

Names and values are keyed by a secret the replicas share (``cache.redis_secret_env``,
``Seal``), so that whoever else reads or writes that Redis can neither tell what was judged
nor decide a verdict:

- A name is ``PREFIX`` and a keyed hash (HMAC-SHA256) of the local cache's digest (guard
  API and model, the tenant's scope, every turn's role and text): without the secret, a
  reader cannot tell which input a name stands for, nor test whether a given text was sent.
- A value is a tag, an expiry (Unix time) and ``encode_verdict``'s compact JSON; the tag is
  an HMAC-SHA256 of the name, the expiry and the verdict.  A value read back is believed only
  if its tag matches (compared in constant time), it has not expired and it is a verdict;
  anything else is a miss, counted in ``guardproxy_verdict_cache_redis_rejected_total``
  (``unauthenticated``, ``expired``, ``malformed``), and the guard is asked.  So a writer
  without the secret cannot plant a verdict, nor move one to another input's name.
- A read is one GET, waited for at most ``cache.redis_timeout_s``.
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
import hashlib
import hmac
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from proxy.config.server import REDIS_SECRET_MIN_BYTES
from proxy.core.cache import decode_verdict, encode_verdict
from proxy.core.verdict import Verdict

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = structlog.get_logger("guardproxy")

#: Every key's prefix: the cache may live in a Redis shared with other uses.  v2: keyed
#: names and authenticated values (v1's unkeyed entries are never read).
PREFIX = b"guardproxy:verdict:v2:"
#: After a failure, Redis is left alone this long, then PINGed (again and again).
RETRY_S = 1.0
#: How long a PING may take: it may have to connect (and shake hands for TLS).
PROBE_TIMEOUT_S = 2.0
WARN_EVERY_S = 30.0
MAX_READS = 64
MAX_WRITES = 64
MAX_TTL_S = 30 * 24 * 3600.0


_NAME_BYTES = 16  # of the keyed hash in a name: as many as the local cache's digest
_TAG = hashlib.sha256().digest_size
_EXPIRY = struct.Struct(">Q")  # a value's expiry: Unix time, in milliseconds
#: Why a stored value was not believed (``guardproxy_verdict_cache_redis_rejected_total``).
REJECTIONS = ("unauthenticated", "expired", "malformed")


class Seal:
    """Names and values of the shared cache, keyed by the replicas' secret.

    Two keys are derived from the secret (HMAC-SHA256 with a label each), one for names
    and one for values, so that neither can stand in for the other.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < REDIS_SECRET_MIN_BYTES:
            raise ValueError(f"the shared cache's secret needs {REDIS_SECRET_MIN_BYTES} bytes")
        self._names = hmac.new(_derive(secret, b"names"), digestmod=hashlib.sha256)
        self._values = hmac.new(_derive(secret, b"values"), digestmod=hashlib.sha256)

    def name(self, key: bytes) -> bytes:
        """The Redis key of a verdict cache key (``VerdictCache.key``)."""
        mac = self._names.copy()
        mac.update(key)
        return PREFIX + mac.digest()[:_NAME_BYTES].hex().encode()

    def seal(self, name: bytes, verdict: Verdict, expires_ms: int) -> bytes:
        """The value stored under ``name``: tag, expiry, verdict."""
        body = _EXPIRY.pack(expires_ms) + encode_verdict(verdict)
        return self._tag(name, body) + body

    def open(self, name: bytes, value: bytes, now_ms: int) -> Verdict | str:
        """The verdict ``seal`` stored under ``name``, or why ``value`` is not one (one of
        ``REJECTIONS``)."""
        head = _TAG + _EXPIRY.size
        if len(value) < head or not hmac.compare_digest(value[:_TAG],
                                                        self._tag(name, value[_TAG:])):
            return "unauthenticated"
        (expires_ms,) = _EXPIRY.unpack_from(value, _TAG)
        if expires_ms <= now_ms:
            return "expired"
        verdict = decode_verdict(value[head:])
        return "malformed" if verdict is None else verdict

    def _tag(self, name: bytes, body: bytes) -> bytes:
        mac = self._values.copy()
        mac.update(len(name).to_bytes(2, "big"))
        mac.update(name)
        mac.update(body)
        return mac.digest()


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.digest(secret, b"guardproxy verdict cache v2: " + label, "sha256")


def _nothing(*args: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """What the cache counts, told to whoever keeps the metrics: a hit, a value not
    believed (its reason, one of ``REJECTIONS``), a failed operation (op, kind)."""

    hit: Callable[[], None] = _nothing
    rejected: Callable[[str], None] = _nothing
    failed: Callable[[str, str], None] = _nothing


class SharedVerdicts:
    """The Redis level of the verdict cache; ``get`` and ``put`` never raise."""

    def __init__(self, *, url: str, password: str | None, secret: bytes, timeout_s: float,
                 ttl_s: float, counters: CacheCounters | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
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
        self._seal = Seal(secret)
        self._wall = wall  # expiries are Unix times: every replica reads them
        self._timeout = timeout_s
        self._ttl_ms = max(1, int(min(ttl_s, MAX_TTL_S) * 1000))
        self._counters = CacheCounters() if counters is None else counters
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
        name = self._seal.name(key)
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._client.get(name)
        except Exception as exc:  # any failure of the cache is a miss
            self._failed("get", exc)
            return None
        finally:
            self._reads -= 1
        if raw is None:
            return None
        opened = (self._seal.open(name, raw, self._now_ms()) if isinstance(raw, bytes)
                  else "malformed")
        if isinstance(opened, str):  # not believed: a miss, and the guard is asked
            self._counters.rejected(opened)
            return None
        self._counters.hit()
        return opened

    def put(self, key: bytes, verdict: Verdict) -> None:
        """Store a verdict in the background; dropped while Redis is down or busy."""
        if not self._up:
            return
        if len(self._writes) >= MAX_WRITES:
            self._count("set", "busy")
            return
        name = self._seal.name(key)
        value = self._seal.seal(name, verdict, self._now_ms() + self._ttl_ms)
        task = asyncio.create_task(self._set(name, value))
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

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

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
        self._counters.failed(op, kind)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
