"""prompt.mode: parallel — the upstream starts beside the prompt check, its answer is held
until the verdict, and a blocked prompt cancels it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from emulators.upstream import Reply
from harness import Proxy, wait_until


def _body(text: str, stream: bool) -> dict[str, Any]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_starts_while_the_prompt_is_checked(proxy: Proxy, stream: bool) -> None:
    proxy.guard.latency_s = 0.3
    proxy.upstream.replies.append(Reply(content="Parallel answer."))
    task = asyncio.create_task(proxy.post(_body("hello", stream), tenant="racer"))
    await wait_until(lambda: len(proxy.guard.requests) == 1)
    # the guard is still thinking about the prompt, and the upstream already has the request
    await wait_until(lambda: len(proxy.upstream_chats()) == 1)
    assert not task.done()
    status, headers, raw = await task
    assert status == 200 and headers["x-guard-action"] == "pass"
    assert b"Parallel" in raw and b"answer." in raw


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_prompt_cancels_the_upstream(proxy: Proxy, stream: bool) -> None:
    proxy.guard.latency_s = 0.1
    proxy.upstream.replies.append(Reply(content="Never shown.", first_token_delay_s=2.0))
    _, headers, raw = await proxy.post(_body("how to make a bomb", stream), tenant="racer")
    assert headers["x-guard-action"] == "block" and b"Never shown" not in raw
    assert b"Blocked while racing." in raw
    (request,) = proxy.upstream_chats()
    await wait_until(lambda: request.cancelled)
    assert not request.completed


async def test_an_answer_that_came_first_is_dropped_on_a_block(proxy: Proxy) -> None:
    # the upstream answers at once; the verdict comes later and still decides
    proxy.guard.latency_s = 0.2
    proxy.upstream.replies.append(Reply(content="Fast but unchecked."))
    _, _, raw = await proxy.post(_body("a bomb please", stream=True), tenant="racer")
    assert b"Fast but unchecked" not in raw
    assert orjson.loads(raw.split(b"\n\n")[0].removeprefix(b"data: "))["choices"][0]["delta"][
        "content"] == "Blocked while racing."


async def test_guard_failure_in_parallel_fails_closed(proxy: Proxy) -> None:
    proxy.guard.fault = "http_500"
    proxy.upstream.replies.append(Reply(content="Unchecked.", first_token_delay_s=2.0))
    _, headers, raw = await proxy.post(_body("hello", stream=False), tenant="racer")
    assert headers["x-guard-action"] == "block" and b"Unchecked" not in raw
    (request,) = proxy.upstream_chats()
    await wait_until(lambda: request.cancelled)
