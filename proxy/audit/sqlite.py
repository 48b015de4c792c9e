"""The audit trail in a SQLite file: nothing to run.  The file is opened in WAL mode, so
the console reads while the proxy writes (several workers of one host may share it);
every call runs on one thread of its own, off the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from proxy.audit.records import Decision
from proxy.audit.schema import INSERT, MIGRATIONS, SCHEMA_TABLE, VERSION, newer_schema, row_of
from proxy.audit.store import Store

_T = TypeVar("_T")

#: How long a write waits for another process's lock before it fails.
BUSY_TIMEOUT_S = 5.0


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardproxy-audit")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        db = self._db
        if db is None:
            raise RuntimeError("the audit store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, db)

    async def open(self, *, upto: int | None = None) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self.path.chmod(0o600)  # the trail may hold a tenant's texts
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._thread, connect)
        try:
            await self._run(lambda db: _migrate(db, VERSION if upto is None else upto))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._thread.shutdown(wait=False)

    async def version(self) -> int:
        return await self._run(_version)

    async def insert(self, decisions: Sequence[Decision]) -> None:
        rows = [row_of(d) for d in decisions]

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(INSERT, rows)

        await self._run(write)

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._run(lambda db: db.execute(sql, list(args)).fetchall())

    async def purge(self, before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute("DELETE FROM decisions WHERE ts < ?", [before]).rowcount

        return await self._run(delete)


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _version(db: sqlite3.Connection) -> int:
    db.execute(SCHEMA_TABLE)
    row = db.execute("SELECT MAX(version) FROM audit_schema").fetchone()
    return int(row[0] or 0)


def _migrate(db: sqlite3.Connection, upto: int) -> None:
    db.execute(SCHEMA_TABLE)
    with _transaction(db):  # another worker starting at once waits here
        at = _version(db)
        newer_schema(at)
        for version in range(at + 1, upto + 1):
            for statement in MIGRATIONS[version - 1]("sqlite"):
                db.execute(statement)
            db.execute("DELETE FROM audit_schema")
            db.execute("INSERT INTO audit_schema (version) VALUES (?)", [version])
