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

Tool calls, function calls, citations, finish reasons and choices other than the
first wait for the final check in every mode.  What the client gets is built by
``StreamState`` from judged text and type-checked structural fields, never relayed
as the upstream sent it; a stream that breaks in any way after its first byte ends
with an in-band error event and ``[DONE]``, never a second status line.

``leaked_chars`` (async mode) counts every character written before a passing check
covered it: the honest cost of not waiting.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from proxy.clients.http1 import StreamedAnswer
from proxy.config import Action, StreamMode
from proxy.core.moderation import WindowSchedule
from proxy.core.policy import Outcome, strictest, worst
from proxy.core.protocol import stream_error
from proxy.core.sse import DONE, SSEDecoder
from proxy.errors import HTTPFormatError, SSEError, StreamFault
from proxy.pipeline import Checks

logger = structlog.get_logger("guardproxy")

#: The largest window, in characters: long answers keep flowing at least this often.
MAX_WINDOW_CHARS = 4096
#: At most this much of a streamed answer is held back waiting for a check (the whole
#: answer in buffer mode): past it, the stream ends with an in-band error.
MAX_HELD_BYTES = 16 * 1024 * 1024
_UPSTREAM_ERRORS = (StreamFault, SSEError, HTTPFormatError, TimeoutError)


class StreamRelay:
    def __init__(self, *, response: web.StreamResponse, checks: Checks, mode: StreamMode,
                 secrets: tuple[str, ...] = ()) -> None:
        stage = checks.policy.response
        self.response = response
        self.checks = checks
        self.state = checks.stream_state(secrets)
        reader = checks.api.reader
        self.reader = reader(secrets) if reader is not None else None
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
        if self.mode == "async":
            checks.record.leaked_chars = 0

    async def run(self, upstream: StreamedAnswer) -> None:
        try:
            try:
                ended = await self._relay(upstream)
                if not ended:
                    await self._finish(await self._final_outcomes())
            except _UPSTREAM_ERRORS as exc:
                await self._end_with_error(exc)
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a shape nobody foresaw: the framing still holds
                logger.exception("stream_failed", error=type(exc).__name__)
                await self._end_with_error(exc)
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
                await self._write_unchecked()
            if self._check is None and self.schedule.due(self.state.length()):
                self._start_window_check()
        if self._check is not None:  # the last window, before the final check
            await asyncio.wait([self._check])
            return await self._check_ended()
        return False

    def _feed(self, events: list[bytes]) -> bool:
        """Feed decoded events' data; True once ``[DONE]`` arrived."""
        feed, reader = self.state.feed, self.reader
        for data in events:
            if data == DONE:
                return True
            if reader is None:
                feed(data)
                continue
            chunk = reader.read(data)
            if type(chunk) is str:  # answer text: the usual event
                self.state.feed_text(chunk, len(data))
            elif chunk is not None:
                self.state.feed_chunk(chunk, len(data))
        return False

    async def _check_ended(self) -> bool:
        """Act on a finished window check; True when it ended the stream."""
        check = self._check
        if check is None or not check.done():
            return False
        self._check = None
        return await self._window_checked(check.result())

    async def _write_unchecked(self) -> None:
        """Async mode: what arrived goes out now; what no passed check covers is leaked."""
        state, before = self.state, self.state.released_chars()
        data = state.release(len(state.events))
        covered = self._last[1] if self._last is not None else 0
        self.checks.record.leaked_chars = ((self.checks.record.leaked_chars or 0)
                                           + max(0, state.released_chars() - max(before, covered)))
        await self._write(data)

    def _start_window_check(self) -> None:
        upto, length, text = len(self.state.events), self.state.length(), self.state.text()
        self.schedule.checked(length)
        self._check = asyncio.create_task(self._judge(upto, length, text),
                                          name="guardproxy-window")
        self._check.add_done_callback(self._interrupt)

    def _interrupt(self, _: object) -> None:
        if self._upstream is not None:
            self._upstream.interrupt()

    async def _judge(self, upto: int, length: int, text: str) -> tuple[Outcome, int, int]:
        return await self.checks.judge_response(text), upto, length

    async def _window_checked(self, result: tuple[Outcome, int, int]) -> bool:
        """Act on a window's verdict; True when it ended the stream."""
        outcome, upto, covered = result
        if outcome.action is Action.BLOCK:
            await self._finish([outcome])
            return True
        self._last = (outcome, covered)
        if self.mode == "window":
            await self._write(self.state.release(upto))
        return False

    async def _final_outcomes(self) -> list[Outcome]:
        """The check of the complete answer (a window check may already be it)."""
        last = self._last
        if last is not None and len(self.state.choices) <= 1 and last[1] == self.state.length():
            return [last[0]]
        return await self.checks.check_response(self.state.texts())

    async def _finish(self, outcomes: list[Outcome]) -> None:
        """End the stream after a final check, or a window check that failed."""
        record, state = self.checks.record, self.state
        record.output = outcomes
        record.removed_fields = state.removed.count
        blocked = None
        if strictest(outcomes) is Action.BLOCK:
            blocked = self.checks.policy.block.text_for(worst(outcomes).error_code)
        elif self.mode == "async" and len(state.choices) <= 1:
            self._last = (outcomes[0], state.length())  # the final check passed
        ending = self.checks.ending()
        record.usage = state.usage_for(ending.usage)
        await self._write(state.ending(self.checks.annotation(), ending, blocked=blocked)
                          + state.done)

    async def _end_with_error(self, exc: BaseException) -> None:
        """After the first byte the status is sent: the error goes in-band, with the
        verdict inside it, then the trailing chunk if asked for, then [DONE].  The error
        is the proxy's own: an upstream's words come only made safe."""
        record, state = self.checks.record, self.state
        record.output = [Outcome.not_checked("the upstream stream failed")]
        record.removed_fields = state.removed.count
        moderation, ending = self.checks.annotation(), self.checks.ending()
        record.usage = state.usage_for(ending.usage)
        error = stream_error(exc)
        await self._write(state.failure(error, ending, moderation, record.usage) + state.done)

    async def _write(self, data: bytes) -> None:
        if data:
            await self.response.write(data)
            self.checks.record.mark_first_byte()  # of the answer, not of the headers
