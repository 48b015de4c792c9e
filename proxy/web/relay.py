"""Streams a moderated answer from the upstream to the client.

One task reads the upstream's SSE into the request's ``StreamState`` and, between reads,
starts the window checks its ledger calls for, one at a time, in a task of their own
whose end interrupts the wait for the upstream.  The relay decides nothing: it feeds
what it reads, runs the checks the ledger asks for, hands their outcomes back, and
writes what the state then releases (``proxy.core.ledger`` says what may go out in each
mode, and when the final check over the whole answer is needed).  A stream that breaks
in any way after its first byte ends with an in-band error event and ``[DONE]``, never
a second status line.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from proxy.clients.http1 import StreamedAnswer
from proxy.core.ledger import Ticket
from proxy.core.policy import Outcome
from proxy.core.protocol import stream_error
from proxy.core.sse import SSEDecoder
from proxy.errors import HTTPFormatError, SSEError, StreamFault
from proxy.pipeline import Checks

logger = structlog.get_logger("guardproxy")

#: At most this much of a streamed answer is held back waiting for a check (the whole
#: answer in buffer mode): past it, the stream ends with an in-band error.
MAX_HELD_BYTES = 16 * 1024 * 1024
_UPSTREAM_ERRORS = (StreamFault, SSEError, HTTPFormatError, TimeoutError)


class StreamRelay:
    def __init__(self, *, response: web.StreamResponse, checks: Checks,
                 secrets: tuple[str, ...] = ()) -> None:
        self.response = response
        self.checks = checks
        self.state = checks.stream_state(secrets)
        reader = checks.api.reader
        self.reader = reader(secrets) if reader is not None else None
        self.read_to_end = False  # the upstream's [DONE] arrived
        self._upstream: StreamedAnswer | None = None
        self._check: asyncio.Task[tuple[Ticket, list[Outcome]]] | None = None
        checks.record.stream_mode = self.state.ledger.mode
        if self.state.ledger.mode == "async":
            checks.record.leaked_chars = 0

    async def run(self, upstream: StreamedAnswer) -> None:
        try:
            try:
                if not await self._relay(upstream):
                    await self._final()
            except _UPSTREAM_ERRORS as exc:
                await self._end_with_error(exc)
            except (ConnectionResetError, asyncio.CancelledError):
                self.state.ledger.abandon()
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
        decoder, state = SSEDecoder(), self.state
        while True:
            data = await upstream.read_some()
            if await self._check_ended():
                return True
            if data is None:
                continue
            events = decoder.feed_data(data) if data else [e.data for e in decoder.close()]
            self.read_to_end = state.feed_events(events, self.reader)
            if state.held > MAX_HELD_BYTES:
                raise StreamFault(f"the answer held back for moderation exceeds "
                                  f"{MAX_HELD_BYTES} bytes")
            if self.read_to_end:
                break
            if not data:
                if not state.finished():
                    raise StreamFault("upstream stream ended before it finished")
                break
            await self._write(state.drain())
            if self._check is None and state.check_due():
                self._start_check()
        if self._check is not None:  # the last window, before the final check
            await asyncio.wait([self._check])
            return await self._check_ended()
        return False

    async def _check_ended(self) -> bool:
        """Hand a finished window check to the ledger; True when it ended the stream."""
        check = self._check
        if check is None or not check.done():
            return False
        self._check = None
        ticket, outcomes = check.result()
        if self.state.ledger.complete(ticket, outcomes):
            await self._finish()
            return True
        await self._write(self.state.drain())
        return False

    def _start_check(self) -> None:
        ticket, texts = self.state.start_check()
        self._check = asyncio.create_task(self._judge(ticket, texts), name="guardproxy-window")
        self._check.add_done_callback(self._interrupt)

    def _interrupt(self, _: object) -> None:
        if self._upstream is not None:
            self._upstream.interrupt()

    async def _judge(self, ticket: Ticket, texts: list[str]) -> tuple[Ticket, list[Outcome]]:
        return ticket, await self.checks.judge_texts(texts)

    async def _final(self) -> None:
        """The final check over the whole answer, when the ledger asks for one."""
        final = self.state.final_check()
        if final is not None:
            ticket, texts = final
            self.state.ledger.complete(ticket, await self.checks.check_response(texts))
        await self._finish()

    async def _finish(self) -> None:
        """End the stream: its rest or its blocked ending, the verdict on the last chunk."""
        record, state = self.checks.record, self.state
        record.output = state.verdict()
        record.removed_fields = state.removed.count
        record.released_chars = state.ledger.released_chars
        if state.ledger.mode == "async":
            record.leaked_chars = state.ledger.leaked
        ending = self.checks.ending()
        record.usage = state.usage_for(ending.usage)
        await self._write_last(state.ending(self.checks.annotation(), ending,
                                            self.checks.policy.block) + state.done)

    async def _end_with_error(self, exc: BaseException) -> None:
        """After the first byte the status is sent: the error goes in-band, with the
        verdict inside it, then the trailing chunk if asked for, then [DONE].  The error
        is the proxy's own: an upstream's words come only made safe."""
        record, state = self.checks.record, self.state
        record.output = [Outcome.not_checked("the upstream stream failed")]
        record.removed_fields = state.removed.count
        record.released_chars = state.ledger.released_chars
        if state.ledger.mode == "async":
            record.leaked_chars = state.ledger.leaked
        moderation, ending = self.checks.annotation(), self.checks.ending()
        record.usage = state.usage_for(ending.usage)
        error = stream_error(exc)
        record.failed(error["code"], exc)
        await self._write_last(state.failure(error, ending, moderation, record.usage)
                               + state.done)

    async def _write(self, data: bytes) -> None:
        if data:
            await self.response.write(data)
            self.checks.record.mark_first_byte()  # of the answer, not of the headers

    async def _write_last(self, data: bytes) -> None:
        """The stream's last bytes and the end of its body, in one write."""
        await self.response.write_eof(data)
        if data:
            self.checks.record.mark_first_byte()
