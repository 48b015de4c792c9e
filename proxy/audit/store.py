"""Where the audit trail is kept: the interface both stores share (``setup.open_store``
picks the one an ``audit.url`` names).  Each store migrates its database at ``open``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.audit.records import Decision
from proxy.audit.schema import SELECT, Filters, decision_of, listing

#: At most this many decisions feed the overview's categories and latencies.
OVERVIEW_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class Bucket:
    """Decisions of one tenant and action in one time bucket (``start`` in epoch s)."""

    tenant: str | None
    action: str
    start: float
    count: int


class Store(abc.ABC):
    """A database of decisions."""

    dialect: str

    @abc.abstractmethod
    async def open(self, *, upto: int | None = None) -> None:
        """Connect and bring the schema to its newest version (``upto``: only so far)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def version(self) -> int:
        """The schema version the database is at (0: none yet)."""

    @abc.abstractmethod
    async def insert(self, decisions: Sequence[Decision]) -> None:
        """Write a batch in one transaction."""

    @abc.abstractmethod
    async def fetch(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a query written with ``?`` placeholders."""

    @abc.abstractmethod
    async def purge(self, before: float) -> int:
        """Delete the decisions older than ``before`` (epoch s); how many went."""

    async def decisions(self, filters: Filters, *, limit: int = 50, offset: int = 0
                        ) -> list[Decision]:
        sql, args = listing(filters, limit, offset)
        return [decision_of(row) for row in await self.fetch(sql, args)]

    async def decision(self, ident: int) -> Decision | None:
        rows = await self.fetch(f"{SELECT} WHERE id = ?", [ident])
        return decision_of(rows[0]) if rows else None

    async def buckets(self, since: float, width_s: float) -> list[Bucket]:
        """Decision counts per tenant, action and bucket of ``width_s`` seconds."""
        start = "FLOOR(ts / ?)" if self.dialect == "postgresql" else "CAST(ts / ? AS INTEGER)"
        rows = await self.fetch(
            f"SELECT tenant, action, {start} AS b, COUNT(*) FROM decisions WHERE ts >= ? "
            "GROUP BY tenant, action, b ORDER BY b", [width_s, since])
        return [Bucket(tenant, action, float(b) * width_s, int(n)) for tenant, action, b, n
                in rows]

    async def recent(self, since: float) -> list[tuple[Any, ...]]:
        """(tenant, action, categories as JSON, guard ms) of the newest decisions."""
        return await self.fetch(
            "SELECT tenant, action, categories, guard_ms FROM decisions WHERE ts >= ? "
            "ORDER BY ts DESC LIMIT ?", [since, OVERVIEW_ROWS])

