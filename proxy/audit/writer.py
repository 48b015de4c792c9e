"""Writes decisions to the store off the request path: a request only puts its decisions
on a bounded queue (``record``, never waiting); one task takes what the queue holds and
inserts it as one batch — once ``flush_s`` has passed since the batch's first decision
came, or ``BATCH`` are waiting, or the proxy stops, so that a busy proxy makes a few large
inserts rather than one per decision.  A full queue drops the new decisions and counts them; a batch
the store refuses is counted too, and the writer goes on with the next.  Retention runs
at start and then every hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.audit.records import Auditor, Decision
from proxy.audit.store import Store
from proxy.obs.log import RequestRecord, logger

#: At most this many decisions go in one insert.
BATCH = 500
PURGE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class AuditCounters:
    """Where the writer counts: decisions written, and dropped by reason."""

    written: Callable[[int], None] = lambda n: None
    dropped: Callable[[str, int], None] = lambda reason, n: None
    purged: Callable[[int], None] = lambda n: None


@dataclass
class AuditWriter:
    store: Store
    auditor: Auditor
    retention_s: float
    queue_size: int = 10_000
    flush_s: float = 0.1  # the longest a decision waits for others to share its insert
    counters: AuditCounters = field(default_factory=AuditCounters)
    _queue: asyncio.Queue[Decision] = field(init=False)
    _flush: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _stopping: bool = field(default=False, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)

    def record(self, record: RequestRecord, status: int) -> None:
        """A finished request's decisions, queued (or dropped, never waited for)."""
        made = self.auditor.decisions(record, status)
        for index, decision in enumerate(made):
            try:
                self._queue.put_nowait(decision)
            except asyncio.QueueFull:
                self.counters.dropped("queue_full", len(made) - index)
                return
        if self._queue.qsize() >= BATCH:
            self._flush.set()  # a full batch waits for nothing

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write(), name="guardproxy-audit-writer"),
                       asyncio.create_task(self._purge(), name="guardproxy-audit-retention")]

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        for task in self._tasks[1:]:
            task.cancel()
        self._stopping = True
        self._flush.set()
        if self._tasks:
            await self._queue.join()
            self._tasks[0].cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.store.close()

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._gather()
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.store.insert(batch)
                self.counters.written(len(batch))
            except Exception as exc:  # a store fault loses a batch, never the proxy
                self.counters.dropped("write_failed", len(batch))
                logger.warning("audit_write_failed", decisions=len(batch),
                               error=type(exc).__name__)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _gather(self) -> None:
        """Let the batch grow: at most ``flush_s``, less when it fills or the proxy stops."""
        if self.flush_s > 0 and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_s):
                    await self._flush.wait()
            if not self._stopping:
                self._flush.clear()

    async def _purge(self) -> None:
        while True:
            try:
                purged = await self.store.purge(time.time() - self.retention_s)
                self.counters.purged(purged)
            except Exception as exc:  # the next round tries again
                logger.warning("audit_purge_failed", error=type(exc).__name__)
            await asyncio.sleep(PURGE_EVERY_S)
