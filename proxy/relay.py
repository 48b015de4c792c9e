"""Streams a moderated answer from the upstream to the client.

Two tasks share one ``StreamState``: the *reader* decodes the upstream's SSE into
it (and, in ``async`` mode, writes what it may at once); the *moderator* (``run``)
starts the checks the ``WindowSchedule`` calls for, one at a time, releases text
each passed check covers (``window`` mode), and ends the stream: the rest of the
answer once the final check over the whole text passed, or a ``content_filter``
ending as soon as a check fails.  Nothing the reader holds back is ever written
before a check covering it passed.

=========  ===========================================  =========================
mode       the client sees                              checks
=========  ===========================================  =========================
buffer     everything after the final check             one
window     text up to the last passed check             windows, then the final
async      text at once; a failed check ends it         windows, then the final
=========  ===========================================  =========================

Tool-call deltas, finish reasons and choices other than the first wait for the
final check in every mode.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from .config import Action, StreamMode
from .http1 import HTTPFormatError, StreamedAnswer
from .moderation import StreamFault, StreamState, WindowSchedule
from .pipeline import Checks
from .policy import Outcome, strictest
from .protocol import annotation
from .sse import DONE, DONE_EVENT, SSEDecoder, SSEError, encode

#: The largest window, in characters: long answers keep flowing at least this often.
MAX_WINDOW_CHARS = 4096
_UPSTREAM_ERRORS = (StreamFault, SSEError, HTTPFormatError, TimeoutError)


class StreamRelay:
    def __init__(self, *, response: web.StreamResponse, checks: Checks, mode: StreamMode
                 ) -> None:
        stage = checks.policy.response
        self.response = response
        self.checks = checks
        self.state = StreamState(model=checks.chat.model)
        self.checking = stage.check
        self.mode: StreamMode = mode if stage.check else "async"
        windowed = self.checking and mode != "buffer"
        self.schedule = (WindowSchedule(first=stage.window_chars,
                                        cap=max(stage.window_chars, MAX_WINDOW_CHARS))
                         if windowed else WindowSchedule.never())
        self._wake = asyncio.Event()
        self._check: asyncio.Task[tuple[Outcome, int, int]] | None = None
        self._last: tuple[Outcome, int] | None = None  # the last passed window, its length

    async def run(self, upstream: StreamedAnswer) -> None:
        reader = asyncio.create_task(self._read(upstream), name="guardproxy-upstream-reader")
        reader.add_done_callback(lambda _: self._wake.set())
        try:
            await self._moderate(reader)
        finally:
            for task in (reader, self._check):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *_UPSTREAM_ERRORS):
                        await task

    # -- the reader --------------------------------------------------------------------

    async def _read(self, upstream: StreamedAnswer) -> None:
        decoder = SSEDecoder()
        async for data in upstream.iter_any():
            if self._feed(decoder.feed(data)):
                return
            if self.mode == "async":
                await self._write(self.state.release(len(self.state.events)))
            if self.schedule.due(self.state.length()):
                self._wake.set()
        self._feed(decoder.close())
        if not self.state.finished():
            raise StreamFault("upstream stream ended before it finished")

    def _feed(self, events: list[Any]) -> bool:
        """Feed decoded events; True once ``[DONE]`` arrived."""
        for event in events:
            if event.data == DONE:
                return True
            self.state.feed(event.data)
        return False

    # -- the moderator -------------------------------------------------------------------

    async def _moderate(self, reader: asyncio.Task[None]) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._check is not None and self._check.done():
                if await self._window_checked(self._check.result()):
                    return
                self._check = None
            if reader.done() and self._check is None:
                await self._end(reader)
                return
            if self._check is None and self.schedule.due(self.state.length()):
                self._start_window_check()

    def _start_window_check(self) -> None:
        upto, text = len(self.state.events), self.state.text()
        self.schedule.checked(len(text))
        self._check = asyncio.create_task(self._judge(upto, text), name="guardproxy-window")
        self._check.add_done_callback(lambda _: self._wake.set())

    async def _judge(self, upto: int, text: str) -> tuple[Outcome, int, int]:
        return await self.checks.judge_response(text), upto, len(text)

    async def _window_checked(self, result: tuple[Outcome, int, int]) -> bool:
        """Act on a window's verdict; True when it ended the stream."""
        outcome, upto, covered = result
        if outcome.action is Action.BLOCK:
            await self._finish([outcome], covered)
            return True
        self._last = (outcome, covered)
        if self.mode == "window":
            await self._write(self.state.release(upto))
        return False

    async def _end(self, reader: asyncio.Task[None]) -> None:
        failure = reader.exception()
        if failure is not None:
            if isinstance(failure, ConnectionResetError):
                raise failure
            await self._end_with_error(failure)
            return
        await self._finish(await self._final_outcomes(), self.state.length())

    async def _final_outcomes(self) -> list[Outcome]:
        """The check of the complete answer (a window check may already be it)."""
        last = self._last
        if last is not None and len(self.state.choices) <= 1 and last[1] == len(self.state.text()):
            return [last[0]]
        return await self.checks.check_response(self.state.texts())

    async def _finish(self, outcomes: list[Outcome], covered: int) -> None:
        """End the stream after the check of the first ``covered`` characters."""
        record = self.checks.record
        record.output = outcomes
        record.usage = self.state.usage()
        if strictest(outcomes) is Action.BLOCK:
            if self.mode == "async":
                record.leaked_chars = max(0, self.state.released_chars() - covered)
            body = self.state.blocked_tail(self.checks.policy.block.message)
        else:
            body = self.state.release_all()
        await self._write(body + self.state.closing_chunk(self._moderation()) + DONE_EVENT)

    async def _end_with_error(self, exc: BaseException) -> None:
        """After the first byte the status is sent: the error goes in-band, then [DONE]."""
        if isinstance(exc, StreamFault) and isinstance(exc.error, dict):
            error = exc.error
        else:
            message = getattr(exc, "message", None) or f"upstream stream failed: {exc!r}"
            error = {"message": message, "type": "upstream_error", "param": None,
                     "code": "upstream_stream_error"}
        self.checks.record.output = [Outcome.not_checked("the upstream stream failed")]
        await self._write(encode(orjson.dumps({"error": error}))
                          + self.state.closing_chunk(self._moderation()) + DONE_EVENT)

    def _moderation(self) -> dict[str, Any]:
        record = self.checks.record
        return annotation(self.checks.guard.model, record.input, record.output)

    async def _write(self, data: bytes) -> None:
        if data:
            await self.response.write(data)
