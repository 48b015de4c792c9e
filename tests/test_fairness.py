"""One tenant cannot take the whole guard: a request's guard calls run at most
``guard.max_concurrency_per_request`` at a time, a tenant's at most
``limits.guard_concurrency``; a call that waits past ``limits.guard_wait_s`` is refused
with a 429 (never served unchecked, even by a fail-open tenant)."""

from __future__ import annotations

import asyncio

import orjson
from emulators.upstream import Reply
from harness import Proxy, wait_until
from structlog.testing import capture_logs


def _chat_calls(proxy: Proxy) -> int:
    return len([r for r in proxy.guard.requests if r.path == "/v1/chat/completions"])


async def test_a_request_has_at_most_eight_guard_calls_in_flight(proxy: Proxy) -> None:
    proxy.guard.latency_s = 0.6  # far longer than the checks below take to look
    turns = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n}"}
             for n in range(41)]  # scope: all judges 40 earlier turns and the last
    proxy.upstream.replies.append(Reply(content="ok"))
    task = asyncio.create_task(proxy.post({"model": "m", "messages": turns}, tenant="thorough"))
    await wait_until(lambda: _chat_calls(proxy) >= 8)
    await asyncio.sleep(0.1)  # well within the guard's latency: no call has finished yet
    assert _chat_calls(proxy) == 8
    status, _, _ = await task
    assert status == 200 and _chat_calls(proxy) == 41 + 1  # every turn, then the answer


async def test_a_tenant_over_its_share_waits_then_gets_a_429(proxy: Proxy) -> None:
    proxy.guard.latency_s = 1.0  # one call holds the tenant's only slot for 1 s
    proxy.upstream.replies.extend([Reply(content="ok"), Reply(content="ok")])
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    with capture_logs() as logs:
        first = asyncio.create_task(proxy.post(body, tenant="limited"))
        await wait_until(lambda: _chat_calls(proxy) == 1)
        status, headers, raw = await proxy.post(body, tenant="limited")
        await first
    assert status == 429 and headers["Retry-After"] == "1"
    error = orjson.loads(raw)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert len(proxy.upstream_chats()) == 1  # the refused request went nowhere
    lines = [entry for entry in logs if entry["event"] == "request"]
    refused = next(line for line in lines if line["status"] == 429)
    assert refused["code"] == "rate_limit_exceeded" and refused["guard_waits"] == 1
    # another tenant is not held up by this one's share
    proxy.upstream.replies.append(Reply(content="ok"))
    assert (await proxy.post(body, tenant="strict"))[0] == 200
