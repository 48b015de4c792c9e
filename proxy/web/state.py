"""Typed keys for what the app and each request carry."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

from aiohttp import web

from proxy.audit.writer import AuditWriter
from proxy.clients.guard import Guard
from proxy.clients.sharedcache import SharedVerdicts
from proxy.clients.upstream import Upstream
from proxy.config import Config, Policy
from proxy.core.cache import VerdictCache
from proxy.obs.log import RequestRecord
from proxy.obs.metrics import Metrics


@dataclass(slots=True)
class Runtime:
    """The loaded configuration, the clients built from it, and the policies in force
    (replaced whole by a live reload)."""

    config: Config
    guard: Guard
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    cache: VerdictCache | None = None
    shared_cache: SharedVerdicts | None = None  # the replicas' cache in Redis, if configured
    metrics: Metrics | None = None
    audit: AuditWriter | None = None  # the audit trail's writer, if ``audit.url`` is set
    reloaded_at: float = 0.0  # when the policies in force were put in force (epoch s)
    policies: tuple[Policy, ...] = ()
    _keys: dict[bytes, Policy] = field(default_factory=dict)  # a key's SHA-256 digest
    _guard_shares: dict[str, tuple[int, asyncio.Semaphore]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.set_policies(self.policies or self.config.policies)

    def set_policies(self, policies: tuple[Policy, ...]) -> None:
        """Put a new set in force.  A request that already found its policy keeps it;
        the next one looks up the new set."""
        self._keys = {
            bytes.fromhex(digest): policy for policy in policies for digest in policy.keys
        }
        self.policies = policies
        self.reloaded_at = time.time()
        if self.metrics is not None:
            self.metrics.set_tenants(policy.tenant for policy in policies)

    def guard_share(self, policy: Policy) -> asyncio.Semaphore:
        """The tenant's share of the guard: ``limits.guard_concurrency`` calls at once
        (a reload that changes the limit starts a new share)."""
        limit = policy.limits.guard_concurrency
        held = self._guard_shares.get(policy.tenant)
        if held is None or held[0] != limit:
            held = self._guard_shares[policy.tenant] = (limit, asyncio.Semaphore(limit))
        return held[1]

    def tenant_for(self, key: str) -> Policy | None:
        """The policy whose key this is, looked up by the key's SHA-256 digest: as fast
        with ten thousand keys as with one.  A lookup's timing can depend only on the
        digest of the key presented, whose bits no caller chooses (nor learns anything
        of a stored key from, SHA-256 being preimage resistant), and on where the
        process's randomly keyed ``hash`` puts it."""
        return self._keys.get(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest())


RUNTIME = web.AppKey("runtime", Runtime)
RECORD = web.RequestKey("record", RequestRecord)
POLICY = web.RequestKey("policy", Policy)

#: On the admin app: the client app whose runtime (metrics) it shows.
SERVED = web.AppKey("served", web.Application)
