"""What both emulators share: serving an aiohttp app on loopback, and reading a JSON body."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class LoopbackServer:
    """Serves :meth:`make_app` on an ephemeral (or given) port; ``url`` is set once started.

    A mixin for the emulator dataclasses, which declare the ``url`` and ``_runner`` fields
    themselves (``url: str = ""`` and ``_runner: web.AppRunner | None = None``).
    """

    url: str
    _runner: web.AppRunner | None

    def make_app(self) -> web.Application:
        """Each emulator builds its own app."""
        raise TypeError(f"{type(self).__name__} must define make_app()")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    def run(self, host: str, port: int) -> None:
        """Serve in the foreground until interrupted (the emulators' command lines)."""
        web.run_app(
            self.make_app(), host=host, port=port, access_log=None, handler_cancellation=True
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def read_json_body(request: web.Request) -> tuple[bytes, Any]:
    """The raw body, and its JSON value (``None`` when the body is empty or not JSON)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    return raw, body
