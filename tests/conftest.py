"""Shared fixtures: the guard and upstream emulators on loopback, one pair per test; and
the secrets scan over every log line the suite produces.

The scan: a session fixture collects each rendered structlog line (also those a test's
``capture_logs`` keeps for itself), each stdlib log record, and the output of every
subprocess a test starts (``asyncio.create_subprocess_exec`` and ``subprocess.run``).
After each test, an autouse fixture fails that test's teardown if anything collected
since the last check holds one of the keys the suite uses.  Checking per test, not once
at the end, names the test that leaked and works the same under ``-x`` and subsets.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import structlog
import structlog.testing
from browser import browser  # noqa: F401
from emulators.guard import GuardEmulator
from emulators.loopback import LoopbackServer
from emulators.upstream import UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, Proxy, running_proxy
from pgserver import postgres  # noqa: F401
from sdks import close_all

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
    async with running_proxy(tmp_path, guard_emulator, upstream_emulator, **options) as running:
        yield running


@pytest.fixture(autouse=True)
async def _sdk_clients_closed() -> AsyncIterator[None]:
    """The SDK clients a test opened (``sdks``) are closed after it."""
    yield
    await close_all()


# -- the secrets scan -------------------------------------------------------------------------

#: Every key the suite uses: tenants' client keys, upstream and guard keys, and the wrong or
#: leaked keys tests send on purpose.
SECRETS = (*KEYS.values(), UPSTREAM_KEY, "sk-upstream-secret-value", "guard-secret-value",
           "sk-leaked-key", "sk-wrong", "sk-bad", "sk-nope", "sk-client", "sk-acme-demo",
           "sk-studio-demo", "sk-live-plaintext-key", "sk-proj-Abc123",
           "replicas-share-this-0123456789", "another-secret-0123456789abcdef")


class LogSink:
    """What the suite logged: rendered lines, and subprocess outputs as they grow."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.outputs: list[bytearray] = []
        self._seen = (0, 0)

    def unseen(self) -> list[str]:
        """Lines and whole subprocess outputs added since the last call."""
        lines, outputs = self._seen
        self._seen = (len(self.lines), len(self.outputs))
        texts = [bytes(out).decode("utf-8", "replace") for out in self.outputs[outputs:]]
        return [*self.lines[lines:], *texts]


def leaked(texts: list[str]) -> list[tuple[str, str]]:
    """(secret, text) for each text that holds a secret."""
    return [(secret, text) for text in texts for secret in SECRETS if secret in text]


class _TeeLogger:
    """structlog's ``PrintLogger``, keeping a copy of every line."""

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.lines.append(message)
        print(message, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _Handler(logging.Handler):
    def __init__(self, sink: LogSink) -> None:
        super().__init__(logging.DEBUG)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.lines.append(self.format(record))


def _tee_streams(sink: LogSink, process: asyncio.subprocess.Process) -> None:
    for reader in (process.stdout, process.stderr):
        if reader is not None:
            kept, feed = bytearray(), reader.feed_data
            sink.outputs.append(kept)

            def tee(data: bytes, kept: bytearray = kept, feed: Any = feed) -> None:
                kept.extend(data)
                feed(data)

            reader.feed_data = tee  # type: ignore[method-assign]


def _patch_subprocesses(sink: LogSink, patch: pytest.MonkeyPatch) -> None:
    start, run = asyncio.create_subprocess_exec, subprocess.run

    async def started(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await start(*args, **kwargs)
        _tee_streams(sink, process)
        return process

    def ran(*args: Any, **kwargs: Any) -> Any:
        done = run(*args, **kwargs)
        for out in (done.stdout, done.stderr):
            if out:
                sink.outputs.append(bytearray(out.encode() if isinstance(out, str) else out))
        return done

    patch.setattr(asyncio, "create_subprocess_exec", started)
    patch.setattr(subprocess, "run", ran)


def _patch_logging(sink: LogSink, patch: pytest.MonkeyPatch) -> None:
    structlog.configure(logger_factory=lambda *args: _TeeLogger(sink))
    captured = structlog.testing.LogCapture.__call__

    def capture(self: Any, logger: Any, name: str, event: Any) -> Any:
        sink.lines.append(orjson.dumps(event, default=repr).decode())
        return captured(self, logger, name, event)

    patch.setattr(structlog.testing.LogCapture, "__call__", capture)
    root = logging.getLogger()
    handler = _Handler(sink)
    root.addHandler(handler)
    patch.setattr(root, "level", logging.INFO)  # aiohttp's access and error logs too


@pytest.fixture(scope="session", autouse=True)
def log_sink() -> Iterator[LogSink]:
    """Every log line of the session (see the module docstring)."""
    sink = LogSink()
    with pytest.MonkeyPatch.context() as patch:
        _patch_logging(sink, patch)
        _patch_subprocesses(sink, patch)
        yield sink
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                       if not isinstance(h, _Handler)]


@pytest.fixture(autouse=True)
def _no_secret_in_logs(log_sink: LogSink) -> Iterator[None]:
    yield  # lines logged between two tests count for the next one
    found = leaked(log_sink.unseen())
    assert not found, f"a key reached the logs: {found[:3]}"
