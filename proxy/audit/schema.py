"""The audit trail's tables, its versions, and the SQL both stores share.  No I/O.

The schema is versioned: ``audit_schema`` holds the version a database is at, and a store
brings it to ``VERSION`` at start, one migration after another, under a lock (so replicas
starting together migrate once).  SQL is written with ``?`` placeholders; PostgreSQL's
store numbers them (``numbered``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.audit.records import Decision

Dialect = str  # "sqlite" | "postgresql"

_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_REAL = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"}


def _first(dialect: Dialect) -> list[str]:
    """Version 1: the decisions, by time and by tenant."""
    real = _REAL[dialect]
    return [
        f"""CREATE TABLE decisions (
            id {_ID[dialect]},
            ts {real} NOT NULL,
            request_id TEXT NOT NULL,
            tenant TEXT,
            api TEXT NOT NULL,
            model TEXT,
            stream TEXT NOT NULL,
            stage TEXT NOT NULL,
            action TEXT NOT NULL,
            effect TEXT NOT NULL,
            severity TEXT,
            categories TEXT NOT NULL,
            scores TEXT NOT NULL,
            refusal INTEGER,
            error_kind TEXT,
            guard_ms {real},
            status INTEGER NOT NULL,
            text TEXT,
            text_hash TEXT)""",
        "CREATE INDEX decisions_ts ON decisions (ts)",
        "CREATE INDEX decisions_tenant_ts ON decisions (tenant, ts)",
    ]


def _second(dialect: Dialect) -> list[str]:
    """Version 2: the policy rule that decided, and a stream's cut point."""
    return [
        "ALTER TABLE decisions ADD COLUMN rule TEXT",
        "ALTER TABLE decisions ADD COLUMN released_chars INTEGER",
        "ALTER TABLE decisions ADD COLUMN leaked_chars INTEGER",
    ]


MIGRATIONS = (_first, _second)
VERSION = len(MIGRATIONS)
SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS audit_schema (version INTEGER NOT NULL)"

def newer_schema(at: int) -> None:
    """Refuse a database a newer proxy has migrated: this one cannot know its columns."""
    if at > VERSION:
        raise RuntimeError(f"the audit database is at schema version {at}, newer than this "
                           f"proxy's {VERSION}: upgrade the proxy")


#: The columns a decision is written to and read from, in order (``id`` is the store's).
COLUMNS = ("ts", "request_id", "tenant", "api", "model", "stream", "stage", "action",
           "effect", "severity", "categories", "scores", "refusal", "error_kind", "guard_ms",
           "status", "text", "text_hash", "rule", "released_chars", "leaked_chars")
INSERT = (f"INSERT INTO decisions ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' for _ in COLUMNS)})")
SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM decisions"


def row_of(d: Decision) -> tuple[Any, ...]:
    return (d.ts, d.request_id, d.tenant, d.api, d.model, d.stream, d.stage, d.action,
            d.effect, d.severity, orjson.dumps(list(d.categories)).decode(),
            orjson.dumps(d.scores).decode(), None if d.refusal is None else int(d.refusal),
            d.error_kind, d.guard_ms, d.status, d.text, d.text_hash, d.rule,
            d.released_chars, d.leaked_chars)


def decision_of(row: Sequence[Any]) -> Decision:
    values = dict(zip(("id", *COLUMNS), row, strict=True))
    values["categories"] = tuple(orjson.loads(values["categories"]))
    values["scores"] = orjson.loads(values["scores"])
    if values["refusal"] is not None:
        values["refusal"] = bool(values["refusal"])
    return Decision(**values)


@dataclass(frozen=True, slots=True)
class Filters:
    """What a list of decisions is narrowed to; None: any."""

    tenant: str | None = None
    action: str | None = None
    category: str | None = None
    api: str | None = None
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # exclusive

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (with ``?`` placeholders) and its arguments."""
        parts: list[str] = []
        args: list[Any] = []
        for column in ("tenant", "action", "api"):
            value = getattr(self, column)
            if value is not None:
                parts.append(f"{column} = ?")
                args.append(value)
        if self.category is not None:  # categories are stored as a JSON list of names
            parts.append("categories LIKE ?")
            args.append(f'%{orjson.dumps(self.category).decode()}%')
        if self.since is not None:
            parts.append("ts >= ?")
            args.append(self.since)
        if self.until is not None:
            parts.append("ts < ?")
            args.append(self.until)
        return (" WHERE " + " AND ".join(parts) if parts else ""), args


def listing(filters: Filters, limit: int, offset: int) -> tuple[str, list[Any]]:
    """Decisions newest first, one page."""
    where, args = filters.where()
    return f"{SELECT}{where} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?", [*args, limit, offset]


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no ``?`` appears otherwise)."""
    pieces = sql.split("?")
    out = [pieces[0]]
    for index, piece in enumerate(pieces[1:], start=1):
        out.append(f"${index}{piece}")
    return "".join(out)
