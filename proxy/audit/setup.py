"""The audit trail a server config asks for: its store, the key of its text hash, its
writer (``make_writer``), opened and migrated by ``start``."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from proxy.audit.records import Auditor
from proxy.audit.sqlite import SQLiteStore
from proxy.audit.store import Store
from proxy.audit.writer import AuditCounters, AuditWriter
from proxy.config import ServerConfig


def open_store(url: str, password: str | None = None) -> Store:
    """The store an ``audit.url`` names (not yet opened); PostgreSQL's driver is imported
    only for a PostgreSQL URL (it is an optional extra)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    from proxy.audit.postgres import PostgresStore

    return PostgresStore(url, password)


def make_store(server: ServerConfig) -> Store | None:
    if server.audit_url is None:
        return None
    password = server.audit_password.get() if server.audit_password is not None else None
    return open_store(server.audit_url, password)


def text_key(server: ServerConfig) -> bytes:
    """``audit.secret_env``'s secret; for a SQLite file without one, a random key kept
    beside it (``<file>.key``, readable by its owner only), made on first use."""
    if server.audit_secret is not None:
        return server.audit_secret.get().encode()
    assert server.audit_url is not None and server.audit_url.startswith("sqlite:///")
    path = Path(server.audit_url[len("sqlite:///"):] + ".key")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path.read_bytes()
    # written whole under a name of its own, then linked into place: workers starting
    # together all read the one key that won, never a half-written file
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_hex(32).encode())
    try:
        os.link(draft, path)
    except FileExistsError:
        pass  # another worker's key is in place: use it
    finally:
        draft.unlink()
    return path.read_bytes()


def make_writer(server: ServerConfig, counters: AuditCounters | None = None
                ) -> AuditWriter | None:
    """The writer of the trail ``audit.url`` names; None when there is none."""
    store = make_store(server)
    if store is None:
        return None
    auditor = Auditor(secret=text_key(server), sample_pass=server.audit_sample_pass)
    return AuditWriter(store=store, auditor=auditor,
                       retention_s=server.audit_retention_days * 86400,
                       queue_size=server.audit_queue_size, flush_s=server.audit_flush_s,
                       counters=counters or AuditCounters())


async def start(writer: AuditWriter) -> None:
    await writer.store.open()
    writer.start()
