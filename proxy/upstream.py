"""The OpenAI-compatible upstream: chat completions (whole or streamed) and models.

Transport errors are translated here, once, into the ``UpstreamError`` tree.  The
client's own headers never travel upstream: the upstream gets its configured key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import orjson

from .config import UpstreamConfig
from .errors import UpstreamHTTPError, UpstreamTimeout, UpstreamUnreachable


class Upstream:
    def __init__(self, *, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self.name = config.name
        self._config = config
        self._session = session
        self._chat_url = f"{config.url}/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if config.api_key is not None:
            self._headers["Authorization"] = f"Bearer {config.api_key.get()}"
        self._whole = aiohttp.ClientTimeout(total=config.timeout_s)
        # A stream may run long; what must not stall is the first byte and each read.
        self._streamed = aiohttp.ClientTimeout(
            total=None, sock_connect=min(config.timeout_s, 30.0), sock_read=config.timeout_s
        )

    async def complete(self, body: bytes, request_id: str) -> bytes:
        """POST a chat request and return the body of a 200 answer."""
        with self._translated():
            async with self._session.post(
                self._chat_url, data=body, headers=self._with_id(request_id), timeout=self._whole
            ) as resp:
                await _raise_for_status(resp)
                return await resp.read()

    @asynccontextmanager
    async def stream(self, body: bytes, request_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a streaming chat request; yields the open 200 response, released on exit."""
        with self._translated():
            resp = await self._session.post(
                self._chat_url, data=body, headers=self._with_id(request_id),
                timeout=self._streamed,
            )
        try:
            with self._translated():
                await _raise_for_status(resp)
            yield resp
        finally:
            resp.release()

    async def models(self) -> Any:
        with self._translated():
            async with self._session.get(
                f"{self._config.url}/models", headers=self._headers, timeout=self._whole
            ) as resp:
                await _raise_for_status(resp)
                return orjson.loads(await resp.read())

    def _with_id(self, request_id: str) -> dict[str, str]:
        return {**self._headers, "X-Request-Id": request_id}

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"upstream {self.name!r} did not answer within {self._config.timeout_s}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"upstream {self.name!r} unreachable: {exc!r}") from exc


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status >= 400:
        body = await resp.read()
        raise UpstreamHTTPError(resp.status, body, resp.content_type or "application/json")
