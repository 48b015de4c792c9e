"""The upstream LLM server: chat completions, responses and messages (whole or
streamed, each at its own path under the configured base URL) and models.

Transport errors are translated here, once, into the ``UpstreamError`` tree.  The
client's own headers never travel upstream: the upstream gets its configured key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson
import yarl

from proxy.clients.http1 import Origin, StreamedAnswer
from proxy.config import UpstreamConfig
from proxy.core.protocol import upstream_error
from proxy.errors import (
    HTTPFormatError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

MAX_ANSWER_BYTES = 64 << 20  # a whole chat answer larger than this is an upstream error
MAX_ERROR_BYTES = 1 << 20
#: Each API's path under the upstream's base URL (``.../v1``).
API_PATHS = {"chat": "/chat/completions", "responses": "/responses", "messages": "/messages"}
#: What Anthropic-style servers ask of a Messages request besides the key.
ANTHROPIC_VERSION = "2023-06-01"


class Upstream:
    def __init__(self, *, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self.name = config.name
        self._config = config
        self._session = session
        self._headers = {"Content-Type": "application/json"}
        if config.api_key is not None:
            self._headers["Authorization"] = f"Bearer {config.api_key.get()}"
        # Whole answers take the lean client; streams keep aiohttp's.
        self._origin = Origin(config.url, limit=MAX_ANSWER_BYTES)
        self._heads = {api: (self._api_head(api, "application/json"),
                             self._api_head(api, "text/event-stream")) for api in API_PATHS}
        self._whole = aiohttp.ClientTimeout(total=config.timeout_s)

    def _api_head(self, api: str, accept: str) -> bytes:
        headers = {"Accept": accept, **self._headers}
        if api == "messages":  # Anthropic's own servers read the key from x-api-key
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if self._config.api_key is not None:
                headers["x-api-key"] = self._config.api_key.get()
        path = yarl.URL(f"{self._config.url}{API_PATHS[api]}").raw_path  # parsed once
        return self._origin.head(path, headers)

    async def complete(self, body: bytes, request_id: str, api: str = "chat") -> bytes:
        """POST a request and return the body of a 200 answer."""
        try:
            answer = await self._origin.post(
                self._heads[api][0], body, b"X-Request-Id: %s\r\n" % request_id.encode(),
                within_s=self._config.timeout_s)
        except TimeoutError as exc:
            raise self._timeout() from exc
        except (OSError, HTTPFormatError) as exc:
            raise UpstreamUnreachable(f"upstream {self.name!r} unreachable: {exc!r}") from exc
        if answer.status >= 400:
            raise self._error(answer.status, answer.body, answer.retry_after)
        return answer.body

    async def open_stream(self, body: bytes, request_id: str, api: str = "chat"
                          ) -> StreamedAnswer:
        """POST a streaming request; returns the 200 answer with its head read (the
        caller reads the body and releases it), or raises with the upstream's error."""
        extra = b"X-Request-Id: %s\r\n" % request_id.encode()
        try:
            async with asyncio.timeout(self._config.timeout_s):
                answer = await self._origin.stream(self._heads[api][1], body, extra)
                try:
                    await self._raise_for_answer(answer)
                except BaseException:
                    answer.close()
                    raise
        except TimeoutError as exc:
            raise self._timeout() from exc
        except (OSError, HTTPFormatError) as exc:
            raise UpstreamUnreachable(f"upstream {self.name!r} unreachable: {exc!r}") from exc
        answer.read_timeout = self._config.timeout_s  # between reads, as for the first byte
        return answer

    async def models(self) -> Any:
        with self._translated():
            async with self._session.get(
                f"{self._config.url}/models", headers=self._headers, timeout=self._whole
            ) as resp:
                if resp.status >= 400:
                    retry = resp.headers.get("Retry-After", "").encode("latin-1", "replace")
                    raise self._error(resp.status, await resp.read(), retry)
                return orjson.loads(await resp.read())

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never reach a client, even inside this upstream's own error text."""
        return (self._config.api_key.get(),) if self._config.api_key is not None else ()

    def _error(self, status: int, body: bytes, retry_after: bytes) -> UpstreamHTTPError:
        return upstream_error(status, body, secrets=self.secrets, retry_after=retry_after)

    async def _raise_for_answer(self, answer: StreamedAnswer) -> None:
        if answer.status >= 400:
            body = await answer.read_all(MAX_ERROR_BYTES)
            answer.release()
            raise self._error(answer.status, body, answer.retry_after)

    def _timeout(self) -> UpstreamTimeout:
        limit = self._config.timeout_s
        return UpstreamTimeout(f"upstream {self.name!r} did not answer within {limit}s")

    def close(self) -> None:
        self._origin.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:
            raise self._timeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"upstream {self.name!r} unreachable: {exc!r}") from exc


class UpstreamCall:
    """One chat's upstream request: started after the prompt passed (``sequential``)
    or at once, beside the prompt check (``parallel``), its answer unread until the
    verdict, and abandoned — the connection dropped — when the prompt is blocked."""

    def __init__(self, upstream: Upstream, body: bytes, request_id: str, *, stream: bool,
                 api: str = "chat") -> None:
        self._upstream = upstream
        self.secrets = upstream.secrets
        self._args = (body, request_id, api)
        self._stream = stream
        self._task: asyncio.Task[Any] | None = None
        self.started = 0.0

    def start(self) -> None:
        if self._task is not None:
            return
        self.started = time.perf_counter()
        call = self._upstream.open_stream if self._stream else self._upstream.complete
        self._task = asyncio.create_task(call(*self._args), name="guardproxy-upstream")

    async def whole(self) -> bytes:
        assert not self._stream
        if self._task is None:  # not started beside the prompt check: no task needed
            self.started = time.perf_counter()
            return await self._upstream.complete(*self._args)
        answer: bytes = await self._task
        self._task = None
        return answer

    async def opened(self) -> StreamedAnswer:
        assert self._stream
        if self._task is None:
            self.started = time.perf_counter()
            return await self._upstream.open_stream(*self._args)  # the caller releases it
        resp: StreamedAnswer = await self._task
        self._task = None  # the caller owns the answer now, and releases it
        return resp

    async def abandon(self) -> None:
        """Drop an answer nobody took: cancel the call, close its connection."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, UpstreamError):
            result = await task
            if isinstance(result, StreamedAnswer):
                result.close()  # the upstream sees the client go away
