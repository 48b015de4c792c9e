"""Streams a moderated answer from the upstream to the client.

One task reads the upstream's SSE into a ``StreamState`` and, between reads, starts
the checks the ``WindowSchedule`` calls for, one at a time, in a task of their own
whose end interrupts the wait for the upstream.  Each passed check releases the
text it covers (``window`` mode); ``async`` mode writes text as it arrives.  The
stream ends with the rest of the answer once the final check over the whole text
passed, or with a ``content_filter`` ending as soon as a check fails.  Nothing
held back is ever written before a check covering it passed.

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
#: At most this much of a streamed answer is held back waiting for a check (the whole
#: answer in buffer mode): past it, the stream ends with an in-band error.
MAX_HELD_BYTES = 16 * 1024 * 1024
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
        self._upstream: StreamedAnswer | None = None
        self.read_to_end = False  # the upstream's [DONE] arrived
        self._check: asyncio.Task[tuple[Outcome, int, int]] | None = None
        self._last: tuple[Outcome, int] | None = None  # the last passed window, its length

    async def run(self, upstream: StreamedAnswer) -> None:
        try:
            try:
                ended = await self._relay(upstream)
            except _UPSTREAM_ERRORS as exc:
                await self._end_with_error(exc)
                return
            if not ended:
                await self._finish(await self._final_outcomes(), self.state.length())
        finally:
            if self._check is not None and not self._check.done():
                self._check.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._check

    async def _relay(self, upstream: StreamedAnswer) -> bool:
        """Read the whole answer, checking windows on the way; True once a check
        ended the stream."""
        self._upstream = upstream
        decoder = SSEDecoder()
        while True:
            data = await upstream.read_some()
            if await self._check_ended():
                return True
            if data is None:
                continue
            events = decoder.feed_data(data) if data else [e.data for e in decoder.close()]
            self.read_to_end = self._feed(events)
            if self.state.held > MAX_HELD_BYTES:
                raise StreamFault(f"the answer held back for moderation exceeds "
                                  f"{MAX_HELD_BYTES} bytes")
            if self.read_to_end:
                break
            if not data:
                if not self.state.finished():
                    raise StreamFault("upstream stream ended before it finished")
                break
            if self.mode == "async":
                await self._write(self.state.release(len(self.state.events)))
            if self._check is None and self.schedule.due(self.state.length()):
                self._start_window_check()
        if self._check is not None:  # the last window, before the final check
            await asyncio.wait([self._check])
            return await self._check_ended()
        return False

    def _feed(self, events: list[bytes]) -> bool:
        """Feed decoded events' data; True once ``[DONE]`` arrived."""
        feed = self.state.feed
        for data in events:
            if data == DONE:
                return True
            feed(data)
        return False

    async def _check_ended(self) -> bool:
        """Act on a finished window check; True when it ended the stream."""
        check = self._check
        if check is None or not check.done():
            return False
        self._check = None
        return await self._window_checked(check.result())

    def _start_window_check(self) -> None:
        upto, text = len(self.state.events), self.state.text()
        self.schedule.checked(len(text))
        self._check = asyncio.create_task(self._judge(upto, text), name="guardproxy-window")
        self._check.add_done_callback(self._interrupt)

    def _interrupt(self, _: object) -> None:
        if self._upstream is not None:
            self._upstream.interrupt()

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
