"""``guardproxy demo`` started as a user starts it: a subprocess on a free port (``--port 0``,
the port read back from the banner), its banner read up to the last line, and its output
drained from then on so that its one JSON log line per request can be waited for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = "Ctrl-C stops the demo"
STRICT_KEY = "sk-demo-strict"
RELAXED_KEY = "sk-demo-relaxed"
BLOCKED = "Blocked by the demo-strict policy."

Json = dict[str, Any]


@dataclass
class Demo:
    process: asyncio.subprocess.Process
    banner: list[str]
    base: str  # http://127.0.0.1:PORT, without /v1
    lines: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # output after the banner

    async def request_log(self) -> Json:
        """The next request's log line (the demo writes one per request, in order)."""
        while True:
            line = await self.lines.get()
            assert line, "the demo ended"
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict) and entry.get("event") == "request":
                    return entry


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "demo", *args]


def demo_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **extra}


async def _drain(process: asyncio.subprocess.Process, lines: asyncio.Queue[str]) -> None:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        lines.put_nowait(line.decode().rstrip("\n"))
    lines.put_nowait("")  # the end


@contextlib.asynccontextmanager
async def running_demo(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Demo]:
    """The demo on a free port (``--port 0``), once its banner is complete."""
    process = await asyncio.create_subprocess_exec(
        *demo_command("--port", "0", *args), cwd=ROOT, env=env or demo_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    banner: list[str] = []
    try:
        while not banner or LAST_LINE not in banner[-1]:
            line = await process.stdout.readline()
            assert line, "the demo ended before printing its commands:\n" + "\n".join(banner)
            banner.append(line.decode().rstrip("\n"))
        found = re.search(r"^  proxy +(http://\S+)/v1 ", "\n".join(banner), re.M)
        assert found, banner
        demo = Demo(process, banner, found.group(1))
        drain = asyncio.create_task(_drain(process, demo.lines))
        try:
            yield demo
        finally:
            process.terminate()
            await drain
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
