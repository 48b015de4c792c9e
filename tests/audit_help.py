"""Shared by the audit trail's tests: a proxy whose trail is on, and waiting for what it
wrote (read back through a store of the test's own, as the console and CLI read it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import Proxy, eventually, running_proxy

from proxy.audit.records import Decision
from proxy.audit.schema import Filters
from proxy.audit.store import Store

AUDIT_SECRET = "audit-secret-0123456789abcdef"
AUDIT_KEYS = frozenset({"password_env", "secret_env", "retention_days", "sample_pass",
                        "queue_size", "flush_s"})


def audit_yaml(url: str, **keys: Any) -> str:
    lines = [f"  url: \"{url}\""] + [f"  {k}: {v}" for k, v in keys.items()]
    return "audit:\n" + "\n".join(lines) + "\n"


@asynccontextmanager
async def audited_proxy(root: Path, guard: GuardEmulator, upstream: UpstreamEmulator,
                        url: str, env: dict[str, str] | None = None, **keys: Any
                        ) -> AsyncIterator[Proxy]:
    """The suite's proxy with ``audit.url`` and the ``audit:`` keys among ``keys``; the
    others are ``write_config``'s options."""
    audit = {k: v for k, v in keys.items() if k in AUDIT_KEYS}
    options = {k: v for k, v in keys.items() if k not in AUDIT_KEYS}
    async with running_proxy(root, guard, upstream, extra=audit_yaml(url, **audit),
                             env=env, **options) as proxy:
        yield proxy


async def decisions_when(store: Store, count: int, filters: Filters | None = None
                         ) -> list[Decision]:
    """The newest decisions, once at least ``count`` are written."""
    found: list[Decision] = []

    async def enough() -> bool:
        nonlocal found
        found = await store.decisions(filters or Filters(), limit=500)
        return len(found) >= count

    await eventually(enough)
    return found


@asynccontextmanager
async def console_proxy(root: Path, guard: GuardEmulator, upstream: UpstreamEmulator,
                        token: str) -> AsyncIterator[Proxy]:
    """The suite's proxy with its trail in SQLite and ``token`` as the admin token."""
    async with audited_proxy(root, guard, upstream, "sqlite:///audit.db",
                             admin_more=", token_env: ADMIN_TOKEN",
                             env={"ADMIN_TOKEN": token}) as proxy:
        yield proxy


async def metric(proxy: Proxy, line_start: str) -> float:
    """A sample of the proxy's admin ``/metrics`` (``name{labels}``); 0 when absent."""
    async with aiohttp.ClientSession() as http, http.get(proxy.admin_url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
    return 0.0
