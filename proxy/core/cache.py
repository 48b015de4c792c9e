"""The verdict cache: identical guard inputs get the verdict they got before.

A retried or regenerated message, or a conversation re-sent with one more turn
(whose earlier prompt checks are then identical), is answered without a guard call.
Entries are keyed by a 128-bit BLAKE2b digest of the exact guard input (every
turn's role and text, and which API and model judge it) and of a *scope*: the tenant
by default (and, for an answer, whether its refusal was asked for): one tenant's cached
verdicts never answer another's checks, so a cache hit (and its speed) cannot tell a
tenant what another one sent.  Sharing across tenants is an operator's opt-in
(``cache.shared_across_tenants``).  The cache is a bounded LRU whose entries expire
after a TTL.  No I/O.

The key is taken of the input as it is sent, after ``longinput.fit``: a piece of an
over-long message, or a conversation with its oldest turns trimmed, is cached as
such.  A user turn judged as the last one of a request is the same input when a
later request (``prompt.scope: all``) judges it again as history, so it hits.

Replicas may share their verdicts through Redis (``cache.redis_url``, the client is
``proxy.clients.sharedcache``): under keyed hashes of these keys, each verdict stored as
``encode_verdict`` writes it, signed, and read back by ``decode_verdict``, which takes
nothing it did not write: a malformed value is a miss, never a wrong verdict.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from proxy.config import CATEGORIES
from proxy.core.conversation import Turn
from proxy.core.verdict import Severity, Verdict

_SEVERITIES: tuple[Severity, ...] = ("safe", "controversial", "unsafe")
_KNOWN = frozenset(CATEGORIES)
#: The longest stored value read back: every category named, each with a score, fits.
MAX_ENCODED = 1024


class VerdictCache:
    def __init__(self, *, size: int, ttl_s: float, namespace: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl = ttl_s
        self._namespace = namespace.encode()
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, turns: Sequence[Turn], scope: str = "") -> bytes:
        """The key of a guard input within ``scope`` (a tenant; "" when shared)."""
        digest = hashlib.blake2b(self._namespace, digest_size=16)
        digest.update(orjson.dumps([scope, [(turn.role, turn.text) for turn in turns]]))
        return digest.digest()

    def get(self, key: bytes) -> Verdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, key: bytes, verdict: Verdict) -> None:
        if self._size <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def encode_verdict(verdict: Verdict) -> bytes:
    """A verdict as compact JSON: ``[severity, [categories], refusal, {category: score}]``."""
    return orjson.dumps([verdict.severity, list(verdict.categories), verdict.refusal,
                         dict(verdict.scores)])


def decode_verdict(data: bytes) -> Verdict | None:
    """What ``encode_verdict`` wrote, read strictly; None for anything else."""
    if len(data) > MAX_ENCODED:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, list) or len(value) != 4:
        return None
    severity, categories, refusal, scores = value
    if not isinstance(severity, str) or severity not in _SEVERITIES:
        return None
    if not isinstance(categories, list) or not all(
            isinstance(name, str) and name in _KNOWN for name in categories):
        return None
    if refusal is not None and not isinstance(refusal, bool):
        return None
    if not isinstance(scores, dict) or not all(
            name in categories and _is_probability(score) for name, score in scores.items()):
        return None
    return Verdict(severity=severity, categories=tuple(categories), refusal=refusal,
                   scores={name: float(score) for name, score in scores.items()})


def _is_probability(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0 <= value <= 1)
