"""Shared fixtures: the guard and upstream emulators on loopback, one pair per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from emulators.guard import GuardEmulator
from emulators.loopback import LoopbackServer
from emulators.upstream import UpstreamEmulator
from harness import Proxy, start_proxy

Server = TypeVar("Server", bound=LoopbackServer)


@asynccontextmanager
async def _serving(emulator: Server) -> AsyncIterator[Server]:
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.close()


@pytest.fixture
async def guard_emulator() -> AsyncIterator[GuardEmulator]:
    """SGLang serving Qwen3Guard-Gen at ``guard_emulator.url`` (no ``/v1`` suffix)."""
    async with _serving(GuardEmulator()) as emulator:
        yield emulator


@pytest.fixture
async def upstream_emulator() -> AsyncIterator[UpstreamEmulator]:
    """An OpenAI-compatible LLM at ``upstream_emulator.url`` (the SDK's base is ``url + "/v1"``)."""
    async with _serving(UpstreamEmulator()) as emulator:
        yield emulator


@pytest.fixture
async def proxy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    guard_emulator: GuardEmulator,
    upstream_emulator: UpstreamEmulator,
) -> AsyncIterator[Proxy]:
    """guardproxy in front of both emulators, with the tenants of ``harness``; parametrize
    it indirectly with ``write_config`` options, e.g. ``{"stream": "window"}``."""
    options = getattr(request, "param", {})
    server, running = await start_proxy(tmp_path, guard_emulator, upstream_emulator, **options)
    try:
        yield running
    finally:
        await running.http.close()
        await server.close()
