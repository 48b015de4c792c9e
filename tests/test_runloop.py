"""``proxy.clients.runloop``: asyncio's running loop, ``wait`` and ``timeout``, without
the system call each lookup costs on Python 3.11 — and with asyncio's own behaviour."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from proxy.clients import runloop
from proxy.clients.runloop import running_loop, settled, timeout


def test_the_running_loop_is_asyncios_in_each_of_two_loops_of_one_thread() -> None:
    async def both() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return running_loop(), asyncio.get_running_loop()

    for _ in range(2):  # the second loop is not mistaken for the first, which stopped
        found, actual = asyncio.run(both())
        assert found is actual


def test_outside_a_loop_there_is_none() -> None:
    async def nothing() -> None:
        running_loop()

    asyncio.run(nothing())  # one was found and cached, and has stopped since
    with pytest.raises(RuntimeError):
        running_loop()


async def test_the_loop_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    running_loop()
    asked: list[int] = []
    monkeypatch.setattr(runloop.asyncio, "get_running_loop",
                        lambda: asked.append(1) or asyncio.get_event_loop())
    for _ in range(10):
        running_loop()
    assert asked == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_forgets_the_loop() -> None:
    async def find() -> None:
        running_loop()

    asyncio.run(find())
    assert runloop._found.loop is not None  # the parent keeps what it found
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"none" if getattr(runloop._found, "loop", None) is None else b"kept")
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    assert said == b"none"


async def test_settled_waits_without_taking_the_result_or_the_exception() -> None:
    gate = asyncio.Event()

    async def fails() -> None:
        await gate.wait()
        raise ValueError("the task's own")

    task = asyncio.create_task(fails())
    waiting = asyncio.create_task(settled(task))
    await asyncio.sleep(0)
    assert not waiting.done()
    gate.set()
    await waiting  # no exception here
    with pytest.raises(ValueError, match="the task's own"):
        task.result()


async def test_a_cancelled_settled_leaves_the_task_running() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(gate.wait())
    waiting = asyncio.create_task(settled(task))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not task.cancelled() and not task.done()
    gate.set()
    assert await task is True


async def test_timeout_raises_timeout_error_when_the_delay_passes() -> None:
    never = asyncio.Event()
    with pytest.raises(TimeoutError):
        async with timeout(0.01):
            await never.wait()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # its cancel taken back


async def test_timeout_lets_a_block_that_ends_in_time_go_on() -> None:
    async with timeout(30):
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # no cancellation left pending on the task


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    entered = asyncio.Event()

    async def inside() -> None:
        async with timeout(30):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(inside())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11's")
async def test_both_timeouts_end_a_nested_wait_alike() -> None:
    """Ours inside asyncio's and asyncio's inside ours: each block's own expiry raises
    TimeoutError at its own level, the outer one unaffected."""
    never = asyncio.Event()
    async with asyncio.timeout(30):
        with pytest.raises(TimeoutError):
            async with timeout(0.01):
                await never.wait()
    async with timeout(30):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await never.wait()
