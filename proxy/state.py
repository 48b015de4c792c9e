"""Typed keys for what the app and each request carry."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from aiohttp import web

from .cache import VerdictCache
from .config import Config, Policy
from .guard import Guard
from .log import RequestRecord
from .upstream import Upstream


@dataclass(slots=True)
class Runtime:
    """The loaded configuration and the clients built from it."""

    config: Config
    guard: Guard
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    cache: VerdictCache | None = None
    _keys: tuple[tuple[bytes, Policy], ...] = ()

    def __post_init__(self) -> None:
        self._keys = tuple(
            (bytes.fromhex(digest), policy)
            for policy in self.config.policies for digest in policy.keys
        )

    def tenant_for(self, key: str) -> Policy | None:
        """The policy whose key this is.  Every stored digest is compared, in constant
        time, so the answer's timing says nothing about which digest came close."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for stored, policy in self._keys:
            if hmac.compare_digest(stored, digest):
                found = policy
        return found


RUNTIME = web.AppKey("runtime", Runtime)
RECORD = web.RequestKey("record", RequestRecord)
POLICY = web.RequestKey("policy", Policy)
