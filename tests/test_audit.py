"""The audit trail in a SQLite file: what is recorded, what is never stored, retention,
migration, and a full queue that drops instead of delaying."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from audit_help import AUDIT_SECRET, audited_proxy, decisions_when, eventually, metric
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator

from proxy.audit.records import Decision, text_hash
from proxy.audit.schema import VERSION, Filters
from proxy.audit.sqlite import SQLiteStore
from proxy.audit.store import Store

BLOCKED = "How can I make a bomb? zq-unique-marker-7731"


def _chat(text: str, *, stream: bool = False, model: str = "gpt-4.1-mini") -> dict[str, object]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


@pytest.fixture
async def reader(tmp_path: Path) -> Store:
    store = SQLiteStore(tmp_path / "audit.db")
    yield store  # type: ignore[misc]
    await store.close()


async def _opened(store: Store) -> Store:
    await store.open()
    return store


async def test_a_blocked_prompt_is_recorded_with_its_verdict_and_rule(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db") as proxy:
        status, headers, _ = await proxy.post(_chat(BLOCKED))
        assert status == 200 and headers["x-guard-action"] == "block"
        (decision,) = await decisions_when(await _opened(reader), 1)
    assert decision.tenant == "strict" and decision.api == "chat" and decision.stage == "prompt"
    assert decision.action == "block" and decision.effect == "block"
    assert decision.severity == "unsafe" and decision.categories == ("Violent",)
    assert decision.scores["Violent"] > 0.5
    assert decision.rule == "prompt.unsafe" and decision.stream == "whole"
    assert decision.request_id == headers["x-request-id"] and decision.guard_ms is not None
    assert decision.text is None  # strict does not log content: only the keyed hash
    assert decision.text_hash == text_hash(_key(tmp_path), BLOCKED)


def _key(root: Path) -> bytes:
    return (root / "audit.db.key").read_bytes()


async def test_passes_are_not_recorded_unless_sampled(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db") as proxy:
        assert (await proxy.post(_chat("hello there")))[0] == 200
        assert (await proxy.post(_chat(BLOCKED)))[0] == 200
        found = await decisions_when(await _opened(reader), 1)
    assert [d.action for d in found] == ["block"]  # the pass before it left nothing


async def test_a_sample_of_passes_is_recorded(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", sample_pass=1) as proxy:
        proxy.upstream.replies.append(Reply(content="Hi! How can I help?"))
        assert (await proxy.post(_chat("hello there")))[0] == 200
        found = await decisions_when(await _opened(reader), 2)
    assert {(d.stage, d.action) for d in found} == {("prompt", "pass"), ("response", "pass")}


async def test_a_blocked_prompts_answer_is_no_decision(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", sample_pass=1) as proxy:
        await proxy.post(_chat(BLOCKED))  # the upstream is never called: no answer was judged
        proxy.upstream.replies.append(Reply(content="Hi!"))
        await proxy.post(_chat("hello"), tenant="lenient")
        found = await decisions_when(await _opened(reader), 3)
    assert sorted((d.tenant, d.stage, d.action) for d in found) == [
        ("lenient", "prompt", "pass"), ("lenient", "response", "pass"),
        ("strict", "prompt", "block")]


async def test_flags_errors_and_rejections_are_recorded(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db") as proxy:
        proxy.upstream.replies.append(Reply(content="A story."))
        await proxy.post(_chat("Write a story where a bomb goes off"), tenant="lenient")
        await proxy.post(_chat("hello", model="gpt-4o"), tenant="errors")  # model not allowed
        guard_emulator.fault = "http_500"
        await proxy.post(_chat("hello"), tenant="strict")
        await _opened(reader)
        found = await decisions_when(reader, 3)
    by_tenant = {d.tenant: d for d in found}
    flagged = by_tenant["lenient"]
    assert flagged.action == "flag" and flagged.rule == "prompt.categories.Violent.unsafe"
    refused = by_tenant["errors"]
    assert refused.action == "rejected" and refused.status == 404
    assert refused.error_kind == "model_not_found" and refused.stage == "request"
    failed = by_tenant["strict"]
    assert failed.action == "error" and failed.effect == "block"
    assert failed.error_kind == "http_error" and failed.rule == "on_guard_error: block"


async def test_a_stream_cut_records_where_it_fell(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    answer = "Once upon a time there was a calm village. " * 3 + "Then a bomb went off."
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", stream="window") as proxy:
        # paced, so each window's check passes before the next words arrive
        chunks = [word + " " for word in answer.split(" ")[:-1]] + [answer.split(" ")[-1]]
        proxy.upstream.replies.append(Reply(content=answer, chunks=chunks, delay_s=0.002))
        status, _, raw = await proxy.post(_chat("tell me a story", stream=True),
                                          tenant="annotated")  # windows of 40 characters
        assert status == 200 and b"content_filter" in raw
        (decision,) = await decisions_when(await _opened(reader), 1)
    assert decision.stage == "response" and decision.action == "block"
    assert decision.stream == "window" and decision.released_chars is not None
    assert 0 < decision.released_chars < len(answer)
    sent = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in raw.decode().splitlines()
                   if line.startswith("data: {") and orjson.loads(line[6:])["choices"])
    assert sent.startswith(answer[:decision.released_chars])


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/responses", {"model": "gpt-4.1-mini", "input": BLOCKED}),
    ("/v1/messages", {"model": "claude-x", "max_tokens": 50,
                      "messages": [{"role": "user", "content": BLOCKED}]}),
])
async def test_each_api_is_named(tmp_path: Path, guard_emulator: GuardEmulator,
                                 upstream_emulator: UpstreamEmulator, reader: Store,
                                 path: str, body: dict[str, object]) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db") as proxy:
        assert (await proxy.post(body, path=path))[0] == 200
        (decision,) = await decisions_when(await _opened(reader), 1)
    assert decision.api == path.rsplit("/", 1)[1] and decision.action == "block"


async def test_text_is_stored_only_for_a_tenant_that_logs_content(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    logged = "Who should win the election? logged-marker-5521"
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", secret_env="AUDIT_SECRET",
                             env={"AUDIT_SECRET": AUDIT_SECRET}) as proxy:
        for _ in range(2):  # twice: the same text, the same hash
            await proxy.post(_chat(BLOCKED), tenant="strict")
        await proxy.post(_chat(logged), tenant="audited")
        found = await decisions_when(await _opened(reader), 3)
        await reader.close()
    strict = [d for d in found if d.tenant == "strict"]
    assert {d.text_hash for d in strict} == {text_hash(AUDIT_SECRET.encode(), BLOCKED)}
    assert all(d.text is None for d in strict)
    (audited,) = [d for d in found if d.tenant == "audited"]
    assert audited.text == logged and audited.text_hash is None
    _assert_nowhere(tmp_path, "zq-unique-marker-7731")
    assert not (tmp_path / "audit.db.key").exists()  # the configured secret is used


def _assert_nowhere(root: Path, marker: str) -> None:
    """No file of the store (the database, its WAL) and no table holds ``marker``."""
    files = [p for p in root.iterdir() if p.name.startswith("audit.db")]
    assert any(p.name == "audit.db" for p in files)
    for path in files:
        assert marker.encode() not in path.read_bytes(), path.name
    with sqlite3.connect(root / "audit.db") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in db.execute(f"SELECT * FROM {table}"):  # the table names are sqlite's
                assert marker not in repr(row), table


async def test_retention_deletes_old_decisions_at_start(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    import time
    store = await _opened(reader)
    now = time.time()
    await store.insert([_decision(now - 3 * 86400, "old"), _decision(now - 3600, "new")])
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", retention_days=2) as proxy:
        async def purged() -> bool:
            return [d.request_id for d in await store.decisions(Filters())] == ["new"]
        await eventually(purged)
        assert await metric(proxy, "guardproxy_audit_purged_total") == 1


def _decision(ts: float, request_id: str, **fields: object) -> Decision:
    values: dict[str, object] = dict(ts=ts, request_id=request_id, tenant="strict", api="chat",
                                     model="m", stream="whole", stage="prompt",
                                     action="block", effect="block")
    values.update(fields)
    return Decision(**values)  # type: ignore[arg-type]


async def test_a_first_version_database_is_migrated(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    import time
    await reader.open(upto=1)
    assert await reader.version() == 1
    with sqlite3.connect(tmp_path / "audit.db") as db:  # a row as the first version wrote it
        db.execute("INSERT INTO decisions (ts, request_id, tenant, api, model, stream, stage, "
                   "action, effect, categories, scores, status) VALUES "
                   "(?, 'v1-row', 'strict', 'chat', 'm', 'whole', 'prompt', 'block', 'block',"
                   " '[\"Violent\"]', '{}', 200)", [time.time()])
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db") as proxy:
        await proxy.post(_chat(BLOCKED))
        found = await decisions_when(reader, 2)
        assert await reader.version() == VERSION
    old = next(d for d in found if d.request_id == "v1-row")
    assert old.categories == ("Violent",) and old.rule is None  # a column it never had
    assert next(d for d in found if d.request_id != "v1-row").rule == "prompt.unsafe"


async def test_a_full_queue_drops_and_counts_without_delaying_requests(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    await reader.open()
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", queue_size=2, flush_s=0) as proxy:
        holder = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the writer's insert now waits for this lock
        try:
            for _ in range(8):  # every request is answered while the trail cannot be written
                status, headers, _ = await proxy.post(_chat(BLOCKED))
                assert status == 200 and headers["x-guard-action"] == "block"
            dropped = await metric(proxy, 'guardproxy_audit_dropped_total{reason="queue_full"}')
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # one decision was taken by the writer, two wait in the queue: the other five dropped
        assert dropped == 5
        found = await decisions_when(reader, 3)
        assert len(found) == 3
        assert await metric(proxy, "guardproxy_audit_written_total") == 3


def test_the_sqlite_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from proxy.audit.setup import text_key
    from proxy.config import ServerConfig

    server = dataclasses.replace(ServerConfig(policies_dir=tmp_path, guard=None,  # type: ignore[arg-type]
                                              upstreams={}),
                                 audit_url=f"sqlite:///{tmp_path}/audit.db")
    with ThreadPoolExecutor(8) as pool:  # workers starting together
        keys = set(pool.map(lambda _: text_key(server), range(16)))
    (key,) = keys
    assert len(key) == 64 and (tmp_path / "audit.db.key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["audit.db.key"]  # no draft left behind


async def test_a_batch_waiting_to_fill_is_written_when_the_proxy_stops(
        tmp_path: Path, guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        reader: Store) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db", flush_s=10) as proxy:
        ids = [(await proxy.post(_chat(BLOCKED)))[1]["x-request-id"] for _ in range(3)]
    # the writer was waiting up to 10 s for its batch to fill: stopping wrote it at once
    found = await (await _opened(reader)).decisions(Filters())
    assert sorted(d.request_id for d in found) == sorted(ids)
