"""The running event loop, found without a system call.

On Python 3.11 ``asyncio.get_running_loop()`` — and with it ``asyncio.create_task`` and
``asyncio.wait`` — checks the process id each time, a ``getpid`` system call, which costs
more than the rest of the lookup by far; ``asyncio.timeout`` makes three.  A streamed
answer's relay needs the loop a few times a request: ``running_loop`` asks asyncio once per
loop and thread, and ``timeout`` is ``asyncio.timeout`` on it.  A thread runs one
loop at a time, so a loop this thread found, while it still runs, is the one running; a
forked child forgets it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

_found = threading.local()


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``: the loop running in this thread (RuntimeError when
    none is)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_found, "loop", None)
    if loop is None or not loop.is_running():
        loop = _found.loop = asyncio.get_running_loop()
    return loop


async def settled(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, taking neither its result nor its exception
    (``asyncio.wait([task])``); a cancelled wait leaves the task running."""
    if task.done():
        return
    waiter = running_loop().create_future()

    def wake(_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        task.remove_done_callback(wake)


def timeout(delay: float) -> Timeout:
    """``async with timeout(delay)``: ``asyncio.timeout(delay)``, the loop found once."""
    return Timeout(delay)


class Timeout:
    """What ``timeout`` returns.  The same contract as asyncio's: when ``delay`` seconds
    pass inside the block, the task is cancelled and the block raises ``TimeoutError``; a
    cancellation from outside stays one (the task's ``cancelling()`` count tells them
    apart)."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._expired = False
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Timeout:
        loop = running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("timeout() should be used inside a task")
        self._task, self._cancelling = task, task.cancelling()
        self._timer = loop.call_later(self._delay, self._expire)
        return self

    def _expire(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self._expired = True
        self._timer = None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        trace: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # an expired timer cancelled the task once: take that back, whatever ended the block
        if (self._expired and self._task is not None
                and self._task.uncancel() <= self._cancelling
                and kind is asyncio.CancelledError):
            raise TimeoutError from exc


def _forget() -> None:
    _found.loop = None


os.register_at_fork(after_in_child=_forget)
