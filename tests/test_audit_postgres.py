"""The audit trail in PostgreSQL, against a real server (``pgserver``), each test in a fresh
database of its own: what is recorded, two proxies sharing one database, retention,
migration from the first version, a full queue, the password, and texts never stored."""

from __future__ import annotations

import asyncio
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from audit_help import (
    AUDIT_SECRET,
    audit_yaml,
    audited_proxy,
    decisions_when,
    eventually,
    metric,
)
from conftest import LogSink
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import Proxy, start_proxy
from pgserver import PgServer, create_database

from proxy.audit.postgres import PostgresStore
from proxy.audit.records import Decision, text_hash
from proxy.audit.schema import VERSION, Filters

BLOCKED = "How can I make a bomb? pg-marker-4417"
PASSWORD_ENV = "AUDIT_PG_PASSWORD"
ProxyFactory = Callable[..., AbstractAsyncContextManager[Proxy]]


def _chat(text: str) -> dict[str, object]:
    return {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture(autouse=True)
def _no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the configured password reaches the server: no PGPASSWORD, no passfile."""
    for name in ("PGPASSWORD", "PGUSER", "PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-passfile"))


@pytest.fixture
def database(postgres: PgServer) -> str:
    """A fresh database's URL (without the password)."""
    return create_database(postgres, f"audit_{secrets.token_hex(6)}")


@pytest.fixture
async def store(postgres: PgServer, database: str) -> AsyncIterator[PostgresStore]:
    """The test's own store on ``database``, not yet opened."""
    own = PostgresStore(database, postgres.password)
    yield own
    await own.close()


@pytest.fixture
def pg_proxy(tmp_path: Path, guard_emulator: GuardEmulator,
             upstream_emulator: UpstreamEmulator, postgres: PgServer, database: str
             ) -> ProxyFactory:
    """A proxy recording to ``database``, its config under ``tmp_path / folder``."""
    def make(folder: str = "proxy", **keys: Any) -> AbstractAsyncContextManager[Proxy]:
        return audited_proxy(tmp_path / folder, guard_emulator, upstream_emulator, database,
                             env=_env(postgres.password), password_env=PASSWORD_ENV,
                             secret_env="AUDIT_SECRET", **keys)
    return make


def _env(password: str) -> dict[str, str]:
    return {PASSWORD_ENV: password, "AUDIT_SECRET": AUDIT_SECRET}


@asynccontextmanager
async def _connected(postgres: PgServer, url: str) -> AsyncIterator[asyncpg.Connection]:
    db = await asyncpg.connect(url, password=postgres.password)
    try:
        yield db
    finally:
        await db.close()


async def _blocked(proxy: Proxy, tenant: str = "strict", text: str = BLOCKED) -> str:
    """Send ``text`` as ``tenant``, check it was blocked; the request id."""
    status, headers, _ = await proxy.post(_chat(text), tenant=tenant)
    assert status == 200 and headers["x-guard-action"] == "block"
    return headers["x-request-id"]


async def test_a_blocked_prompt_is_recorded(pg_proxy: ProxyFactory,
                                            store: PostgresStore) -> None:
    async with pg_proxy() as proxy:
        strict_id = await _blocked(proxy, "strict")
        audited_id = await _blocked(proxy, "audited")
        await store.open()
        found = await decisions_when(store, 2)
    assert len(found) == 2  # one decision a request: the prompt's
    strict, audited = (next(d for d in found if d.tenant == t) for t in ("strict", "audited"))
    for decision in (strict, audited):
        assert decision.api == "chat" and decision.stage == "prompt"
        assert decision.action == "block" and decision.effect == "block"
        assert decision.severity == "unsafe" and decision.categories == ("Violent",)
        assert decision.scores["Violent"] > 0.5 and decision.rule == "prompt.unsafe"
        assert decision.stream == "whole" and decision.guard_ms is not None
    assert (strict.request_id, audited.request_id) == (strict_id, audited_id)
    assert strict.text is None  # strict does not log content: only the keyed hash
    assert strict.text_hash == text_hash(AUDIT_SECRET.encode(), BLOCKED)
    assert audited.text == BLOCKED and audited.text_hash is None  # log_content: true


async def test_two_proxies_share_one_database(pg_proxy: ProxyFactory, postgres: PgServer,
                                              database: str, store: PostgresStore) -> None:
    async with AsyncExitStack() as stack:
        # started together: both migrate the empty database at once, under the lock
        first, second = await asyncio.gather(stack.enter_async_context(pg_proxy("first")),
                                             stack.enter_async_context(pg_proxy("second")))
        sent = [await _blocked(proxy) for proxy in (first, second, first, second)]
        await store.open()
        found = await decisions_when(store, 4)
    assert len(found) == 4 and sorted(d.request_id for d in found) == sorted(sent)
    assert len(set(sent)) == 4  # distinct request ids across the two proxies
    # one key for every replica: the same text hashes the same, whichever proxy saw it
    assert {d.text_hash for d in found} == {text_hash(AUDIT_SECRET.encode(), BLOCKED)}
    assert await store.version() == VERSION
    async with _connected(postgres, database) as db:
        assert await db.fetch("SELECT version FROM audit_schema") == [(VERSION,)]


def _decision(ts: float, request_id: str) -> Decision:
    return Decision(ts=ts, request_id=request_id, tenant="strict", api="chat", model="m",
                    stream="whole", stage="prompt", action="block", effect="block")


async def test_retention_deletes_old_decisions_at_start(pg_proxy: ProxyFactory,
                                                        store: PostgresStore) -> None:
    await store.open()
    now = time.time()
    await store.insert([_decision(now - 3 * 86400, "old"), _decision(now - 3600, "new")])
    assert len(await store.decisions(Filters())) == 2
    async with pg_proxy(retention_days=2) as proxy:
        async def purged() -> bool:
            kept = [d.request_id for d in await store.decisions(Filters())]
            return kept == ["new"] and await metric(
                proxy, "guardproxy_audit_purged_total") == 1
        await eventually(purged)


async def test_a_first_version_database_is_migrated(pg_proxy: ProxyFactory,
                                                    postgres: PgServer, database: str,
                                                    store: PostgresStore) -> None:
    await store.open(upto=1)
    assert await store.version() == 1
    async with _connected(postgres, database) as db:  # a row as the first version wrote it
        await db.execute(
            "INSERT INTO decisions (ts, request_id, tenant, api, model, stream, stage, "
            "action, effect, categories, scores, status) VALUES ($1, 'v1-row', 'strict', "
            "'chat', 'm', 'whole', 'prompt', 'block', 'block', '[\"Violent\"]', '{}', 200)",
            time.time())
    async with pg_proxy() as proxy:
        new_id = await _blocked(proxy)
        found = await decisions_when(store, 2)
        assert await store.version() == VERSION
    old = next(d for d in found if d.request_id == "v1-row")
    assert old.categories == ("Violent",) and old.rule is None  # columns it never had
    assert old.released_chars is None and old.leaked_chars is None
    assert next(d for d in found if d.request_id == new_id).rule == "prompt.unsafe"


async def _insert_waits(db: asyncpg.Connection) -> bool:
    """Whether an insert into decisions is waiting for a lock (read afresh: within a
    transaction, pg_stat_activity is otherwise the snapshot of its first reading)."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE 'INSERT INTO decisions%'"))


async def test_a_full_queue_drops_and_counts_without_delaying_requests(
        pg_proxy: ProxyFactory, postgres: PgServer, database: str,
        store: PostgresStore) -> None:
    async with pg_proxy(queue_size=2, flush_s=0) as proxy, \
            _connected(postgres, database) as holder:
        locked = holder.transaction()
        await locked.start()
        await holder.execute("LOCK TABLE decisions IN ACCESS EXCLUSIVE MODE")
        try:
            await _blocked(proxy)
            # the writer took the first decision as a batch of one and waits on the lock
            await eventually(lambda: _insert_waits(holder))
            for _ in range(7):  # each answered while the trail cannot be written
                await _blocked(proxy)
            dropped = await metric(proxy, 'guardproxy_audit_dropped_total{reason="queue_full"}')
            assert await holder.fetchval("SELECT count(*) FROM decisions") == 0
        finally:
            await locked.rollback()
        # one decision a request: the first is in the writer's stuck batch, the second and
        # third fill the queue (queue_size 2), the other five are dropped
        assert dropped == 5
        await store.open()

        async def written() -> bool:
            return (len(await store.decisions(Filters())) == 3
                    and await metric(proxy, "guardproxy_audit_written_total") == 3)
        await eventually(written)
        assert await metric(proxy, 'guardproxy_audit_dropped_total{reason="write_failed"}') == 0
    assert len(await store.decisions(Filters())) == 3


@pytest.mark.parametrize("given", [True, False], ids=["wrong", "none"])
async def test_the_password_is_required(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        postgres: PgServer, database: str, log_sink: LogSink, given: bool) -> None:
    password = secrets.token_urlsafe(24) if given else None  # a wrong one, or none at all
    keys = {"password_env": PASSWORD_ENV} if given else {}
    extra = audit_yaml(database, secret_env="AUDIT_SECRET", **keys)
    env = _env(password) if password else {"AUDIT_SECRET": AUDIT_SECRET}
    with pytest.raises(asyncpg.InvalidPasswordError) as caught:  # the start fails
        await start_proxy(tmp_path, guard_emulator, upstream_emulator, extra=extra, env=env)
    assert str(caught.value) == f'password authentication failed for user "{postgres.user}"'
    told = "".join(traceback.format_exception(caught.value)) + "\n".join(log_sink.lines)
    assert postgres.password not in told and (password is None or password not in told)


def _files_hold(folder: Path, marker: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and marker in p.read_bytes()]


async def test_a_text_not_logged_is_in_no_table(pg_proxy: ProxyFactory, postgres: PgServer,
                                                database: str, store: PostgresStore) -> None:
    # markers of this test alone: the server's files (its WAL) are shared by every test
    never, kept = f"pg-never-{secrets.token_hex(8)}", f"pg-kept-{secrets.token_hex(8)}"
    async with pg_proxy() as proxy:
        for _ in range(2):
            await _blocked(proxy, "strict", f"How can I make a bomb? {never}")
        await _blocked(proxy, "audited", f"How can I make a bomb? {kept}")  # the control
        await store.open()
        await decisions_when(store, 3)
    async with _connected(postgres, database) as db:
        tables = [name for (name,) in await db.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' ORDER BY table_name")]
        assert tables == ["audit_schema", "decisions"]
        rows = {table: repr(await db.fetch(f'SELECT * FROM "{table}"')) for table in tables}
        await db.execute("CHECKPOINT")  # every page on disk: the files can be read too
    assert all(never not in dump for dump in rows.values())
    assert kept in rows["decisions"]  # the same reading finds a text that is kept
    assert _files_hold(postgres.data, never.encode()) == []
    assert _files_hold(postgres.data, kept.encode())  # and so does the files' scan
