"""What one audit record costs on disk: writes typical decisions (a block with its
category, scores, rule and text hash) and reports bytes per record, in SQLite and, with
``--postgres URL`` (the password in $AUDIT_PG_PASSWORD), in PostgreSQL.

    python bench/audit_size.py [--records 20000] [--postgres postgresql://user@host/db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from proxy.audit.postgres import PostgresStore
from proxy.audit.records import Decision, text_hash
from proxy.audit.sqlite import SQLiteStore
from proxy.audit.store import Store


def decisions(count: int) -> list[Decision]:
    now = time.time()
    return [Decision(ts=now - i, request_id=os.urandom(16).hex(), tenant=f"tenant-{i % 5}",
                     api="chat", model="gpt-4.1-mini", stream="whole", stage="prompt",
                     action="block", effect="block", severity="unsafe",
                     categories=("Violent",), scores={"Violent": 0.9731},
                     guard_ms=41.237, status=200, rule="prompt.unsafe",
                     text_hash=text_hash(b"k" * 32, f"prompt {i}"))
            for i in range(count)]


async def fill(store: Store, count: int) -> None:
    await store.open()
    batch = decisions(count)
    for start in range(0, count, 500):
        await store.insert(batch[start:start + 500])


async def sqlite_bytes(count: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.db"
        store = SQLiteStore(path)
        await fill(store, count)
        await store.fetch("PRAGMA wal_checkpoint(TRUNCATE)", [])
        await store.close()
        return path.stat().st_size / count


async def postgres_bytes(url: str, count: int) -> float:
    store = PostgresStore(url, os.environ.get("AUDIT_PG_PASSWORD"))
    await fill(store, count)
    (size,), = await store.fetch("SELECT pg_total_relation_size('decisions')", [])
    (rows,), = await store.fetch("SELECT COUNT(*) FROM decisions", [])
    await store.close()
    return float(size) / int(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--postgres", metavar="URL")
    args = parser.parse_args()
    print(f"SQLite: {await sqlite_bytes(args.records):.0f} bytes per record "
          f"({args.records} records, indexes included)")
    if args.postgres:
        print(f"PostgreSQL: {await postgres_bytes(args.postgres, args.records):.0f} bytes per "
              "record (table, indexes and TOAST)")


if __name__ == "__main__":
    asyncio.run(main())
