"""The audit trail in PostgreSQL, one schema shared by every replica, through asyncpg
(a maintained asyncio driver speaking PostgreSQL's binary protocol: batches go in one
round trip with ``executemany``, no thread needed).  The password comes from
``audit.password_env``, never from the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from proxy.audit.records import Decision
from proxy.audit.schema import (
    INSERT,
    MIGRATIONS,
    SCHEMA_TABLE,
    VERSION,
    newer_schema,
    numbered,
    row_of,
)
from proxy.audit.store import Store

#: Replicas starting at once migrate one after the other: this advisory lock's key.
MIGRATION_LOCK = 0x67756172  # "guar"


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str, password: str | None = None) -> None:
        self.url = url
        self.password = password
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the audit store is not open")
        return self._pool

    async def open(self, *, upto: int | None = None) -> None:
        self._pool = await asyncpg.create_pool(self.url, password=self.password, min_size=1,
                                               max_size=4, command_timeout=30)
        try:
            await self._migrate(VERSION if upto is None else upto)
        except BaseException:
            await self.close()
            raise

    async def _migrate(self, upto: int) -> None:
        async with self.pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await db.execute(SCHEMA_TABLE)
            at = int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM audit_schema"))
            newer_schema(at)
            for version in range(at + 1, upto + 1):
                for statement in MIGRATIONS[version - 1]("postgresql"):
                    await db.execute(statement)
                await db.execute("DELETE FROM audit_schema")
                await db.execute("INSERT INTO audit_schema (version) VALUES ($1)", version)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def version(self) -> int:
        async with self.pool.acquire() as db:
            await db.execute(SCHEMA_TABLE)
            return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM audit_schema"))

    async def insert(self, decisions: Sequence[Decision]) -> None:
        async with self.pool.acquire() as db, db.transaction():
            await db.executemany(numbered(INSERT), [row_of(d) for d in decisions])

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as db:
            return [tuple(row) for row in await db.fetch(numbered(sql), *args)]

    async def purge(self, before: float) -> int:
        async with self.pool.acquire() as db:
            done = await db.execute("DELETE FROM decisions WHERE ts < $1", before)
        return int(done.split()[-1])
