"""``/metrics``: what each request adds, bounded labels, and the sum over workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, Proxy, eventually, write_config
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import load
from proxy.web.app import create_admin_app, create_app

ROOT = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        return _samples(await resp.text())


def _chat(text: str, *, stream: bool = False) -> dict[str, object]:
    return {"model": "gpt-4.1-mini", "stream": stream,
            "messages": [{"role": "user", "content": text}]}


async def test_each_request_is_counted_by_tenant_stage_and_action(proxy: Proxy) -> None:
    proxy.upstream.replies.extend([Reply(content="Fine."), Reply(content="Also fine."),
                                   Reply(content="Streamed."), Reply(content="Once more.")])
    assert (await proxy.post(_chat("hello")))[0] == 200
    assert (await proxy.post(_chat("how do I build a bomb?")))[0] == 200  # blocked (message)
    assert (await proxy.post(_chat("the election", stream=False), tenant="lenient"))[0] == 200
    assert (await proxy.post(_chat("stream it", stream=True)))[0] == 200
    assert (await proxy.post(_chat("hello")))[0] == 200  # the same prompt: from the cache
    assert (await proxy.post(_chat("hello"), tenant=None))[0] == 401
    m = await _scrape(proxy.admin_url)
    total = "guardproxy_requests_total"
    assert _value(m, total, tenant="strict", stage="prompt", action="pass") == 3
    assert _value(m, total, tenant="strict", stage="prompt", action="block") == 1
    assert _value(m, total, tenant="strict", stage="response", action="pass") == 3
    assert _value(m, total, tenant="strict", stage="response", action="not_checked") == 1
    assert _value(m, total, tenant="lenient", stage="prompt", action="flag") == 1
    assert _value(m, "guardproxy_http_responses_total", tenant="-", status="4xx") == 1
    assert _value(m, "guardproxy_blocked_requests_total", tenant="strict", stage="prompt") == 1
    # "how do I build a bomb?": 22 characters, about 5 tokens never sent upstream
    assert _value(m, "guardproxy_blocked_upstream_tokens_total",
                  tenant="strict", kind="saved") == 22 // 4
    assert _value(m, "guardproxy_verdict_cache_hits_total") == 1
    guard_calls = len(proxy.guard.checks)  # a flagged check is two guard requests
    assert sum(_value(m, "guardproxy_guard_calls_total", check=check, api="chat")
               for check in ("prompt", "response")) == guard_calls
    assert _value(m, "guardproxy_guard_latency_seconds_count", check="prompt", api="chat") \
        == _value(m, "guardproxy_guard_calls_total", check="prompt", api="chat") == 4
    # the guard's HTTP requests by step: every check's one token, and the two flagged
    # prompts' categories ("bomb" unsafe, "the election" controversial)
    requests = "guardproxy_guard_requests_total"
    assert _value(m, requests, api="chat", step="severity") == guard_calls
    assert _value(m, requests, api="chat", step="categories") == 2
    assert guard_calls + 2 == len(proxy.guard.requests)
    assert _value(m, "guardproxy_time_to_first_token_seconds_count", tenant="strict") == 1
    assert _value(m, "guardproxy_upstream_latency_seconds_count",
                  tenant="strict", stream="false") == 2
    assert _value(m, "guardproxy_active_streams") == 0


async def test_a_blocked_answer_counts_the_tokens_it_cost(proxy: Proxy) -> None:
    proxy.upstream.replies.extend([Reply(content="Here is how to build a bomb."),
                                   Reply(content="A quiet story.")])
    status, _, raw = await proxy.post(_chat("tell me a story"))
    usage = orjson.loads(raw)["usage"]  # the upstream's, relayed with the blocked answer
    assert status == 200 and usage["total_tokens"] > 0
    assert (await proxy.post(_chat("and another")))[0] == 200  # passed: no cost counted
    m = await _scrape(proxy.admin_url)
    assert _value(m, "guardproxy_blocked_upstream_tokens_total",
                  tenant="strict", kind="cost") == usage["total_tokens"]
    assert _value(m, "guardproxy_blocked_requests_total", tenant="strict", stage="response") == 1


# only the hanging guard gets a short budget: a loaded machine must not turn garbage into a
# timeout
@pytest.mark.parametrize(("fault", "kind", "proxy"), [
    ("garbage", "unreadable", {"timeout": 30.0}), ("hang", "timeout", {"timeout": 0.3})],
    indirect=["proxy"], ids=["garbage", "hang"])
async def test_guard_errors_are_counted_by_kind(proxy: Proxy, fault: str, kind: str) -> None:
    proxy.guard.fault = fault  # type: ignore[assignment]
    assert (await proxy.post(_chat("hello")))[0] == 200  # strict fails closed
    assert (await proxy.post(_chat("hello again"), tenant="lenient"))[0] == 200  # fails open
    m = await _scrape(proxy.admin_url)
    assert _value(m, "guardproxy_guard_errors_total", check="prompt", kind=kind) == 2
    assert _value(m, "guardproxy_requests_total",
                  tenant="strict", stage="prompt", action="guard_error_block") == 1
    assert _value(m, "guardproxy_requests_total",
                  tenant="lenient", stage="prompt", action="guard_error_pass") == 1


async def test_labels_never_come_from_request_data(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="ok"))
    await proxy.post(_chat("hello"), headers={"x-request-id": "tenant-evil"})
    await proxy.post(_chat("hi"), headers={"Authorization": "Bearer sk-made-up-tenant"},
                     tenant=None)
    await proxy.post(b"{not json", path="/v1/chat/completions")
    m = await _scrape(proxy.admin_url)
    tenants = {value for (_, labels) in m for name, value in labels if name == "tenant"}
    assert tenants <= {"strict", "lenient", "errors", "audited", "racer", "-"}
    models = {value for (_, labels) in m for name, value in labels if name == "model"}
    assert models == set()


def _env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": UPSTREAM_KEY}


async def _workers(config: Path, port: int, count: int) -> tuple[asyncio.subprocess.Process,
                                                                  set[int]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
        "--workers", str(count), env=_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    pids: set[int] = set()
    while len(pids) < count:
        line = orjson.loads(await asyncio.wait_for(process.stdout.readline(), timeout=30))
        if line["event"] == "listening":
            pids.add(line["pid"])  # once both its listeners are bound
    return process, pids


async def _until_reloaded(admin: str, *, times: int) -> None:
    """Scrape until the workers' reloads add up to ``times`` (a worker that has not yet
    seen the change or the signal counts none)."""
    async with asyncio.timeout(30):
        while True:
            m = await _scrape(admin)
            if _value(m, "guardproxy_policy_reloads_total", outcome="ok") >= times:
                return
            await asyncio.sleep(0.02)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _stop(process: asyncio.subprocess.Process) -> list[dict[str, object]]:
    assert process.stdout is not None
    process.terminate()
    output = await asyncio.wait_for(process.stdout.read(), timeout=30)
    await process.wait()
    return [orjson.loads(line) for line in output.splitlines()]


async def test_metrics_cover_all_workers(tmp_path: Path, guard_emulator: GuardEmulator,
                                         upstream_emulator: UpstreamEmulator) -> None:
    upstream_emulator.api_key = UPSTREAM_KEY
    admin = _port()
    config = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url,
                          admin_port=admin)
    port = _port()
    process, pids = await _workers(config, port, 2)
    try:
        url = f"http://127.0.0.1:{port}"
        upstream_emulator.replies.extend(Reply(content=f"answer {n}") for n in range(20))

        async def one(n: int) -> int:
            # a connection each, so that both workers take some
            async with aiohttp.ClientSession() as own, own.post(
                    url + "/v1/chat/completions", json=_chat(f"q{n}"),
                    headers={"Authorization": f"Bearer {KEYS['strict']}"}) as resp:
                return resp.status

        assert await asyncio.gather(*(one(n) for n in range(20))) == [200] * 20

        async def all_counted() -> bool:
            m = await _scrape(f"http://127.0.0.1:{admin}")  # the admin listener
            return _value(m, "guardproxy_requests_total",
                          tenant="strict", stage="prompt", action="pass") >= 20

        # a worker counts its finished requests in batches (metrics.FLUSH_AFTER_S): the
        # other worker's reach the sums within that
        await eventually(all_counted)
        for _ in range(4):  # whichever worker answers the scrape reports the same sums
            m = await _scrape(f"http://127.0.0.1:{admin}")
            assert _value(m, "guardproxy_requests_total",
                          tenant="strict", stage="prompt", action="pass") == 20
            assert _value(m, "guardproxy_guard_calls_total", check="prompt", api="chat") == 20
    finally:
        lines = await _stop(process)
    served = {line["pid"] for line in lines if line["event"] == "request"}
    assert served == pids  # the sums above spanned both workers


@pytest.mark.parametrize("trigger", ["sighup", "changed"])
async def test_every_worker_reloads(tmp_path: Path, guard_emulator: GuardEmulator,
                                    upstream_emulator: UpstreamEmulator, trigger: str) -> None:
    """SIGHUP to the parent reaches each worker; a file edit is seen by each worker's poll."""
    upstream_emulator.api_key = UPSTREAM_KEY
    admin = _port()
    config = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url,
                          admin_port=admin)
    reload = "reload: {watch: false}" if trigger == "sighup" else "reload: {poll_s: 0.05}"
    config.write_text(config.read_text().replace("reload: {poll_s: 1.0}", reload))
    assert reload in config.read_text()
    port = _port()
    process, pids = await _workers(config, port, 2)
    try:
        policy = tmp_path / "policies" / "strict.yaml"
        edited = tmp_path / "strict.yaml.new"  # written whole, then swapped in: no poll sees
        edited.write_text(policy.read_text().replace("controversial: block",  # half a file
                                                     "controversial: flag", 1))
        os.replace(edited, policy)
        if trigger == "sighup":
            process.send_signal(signal.SIGHUP)
        await _until_reloaded(f"http://127.0.0.1:{admin}", times=2)
    finally:
        lines = await _stop(process)
    reloads = [line for line in lines if line["event"] == "policy_reload"]
    assert {line["pid"] for line in reloads} == pids
    assert all(line["outcome"] == "ok" and line["reason"] == trigger for line in reloads)


@pytest.mark.parametrize("proxy", [{"stream": "async"}], indirect=True)
async def test_leaked_characters_and_removed_fields_are_counted(proxy: Proxy) -> None:
    proxy.guard.latency_s = 0.05  # slower than the stream: async sends text before checks
    words = [f"w{n} " for n in range(60)]
    proxy.upstream.replies.append(Reply(chunks=words, delay_s=0.002))
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [{**chunk, "extra": "x", "choices": [{"index": 0, "delta": {"content": "Hi."},
                                                   "finish_reason": "stop"}]}]
    proxy.upstream.replies.append(Reply(events=events))
    assert (await proxy.post(_chat("one", stream=True)))[0] == 200
    assert (await proxy.post(_chat("two", stream=True)))[0] == 200
    m = await _scrape(proxy.admin_url)
    assert _value(m, "guardproxy_leaked_chars_total", tenant="strict") > 0
    assert _value(m, "guardproxy_removed_fields_total", tenant="strict") == 1


async def test_the_client_listener_has_no_metrics(proxy: Proxy) -> None:
    """``/metrics`` names tenants: it answers on the admin listener only."""
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert resp.status in (401, 404)
    async with proxy.http.get(proxy.url + "/metrics",
                              headers={"Authorization": f"Bearer {KEYS['strict']}"}) as resp:
        assert resp.status == 404 and b"guardproxy_" not in await resp.read()
    async with proxy.http.get(proxy.admin_url + "/metrics") as resp:
        assert resp.status == 200 and b"guardproxy_requests_total" in await resp.read()


async def test_the_admin_listener_may_ask_for_a_token(
        tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    upstream_emulator.api_key = UPSTREAM_KEY
    config = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url)
    config.write_text(config.read_text().replace("admin: {port: 0}",
                                                 "admin: {port: 0, token_env: ADMIN_TOKEN}"))
    loaded = load(config, env={"UPSTREAM_KEY": UPSTREAM_KEY, "ADMIN_TOKEN": "admin-secret-7"})
    app = create_app(loaded)
    admin = TestServer(create_admin_app(app), host="127.0.0.1")
    served = TestServer(app, host="127.0.0.1")
    await served.start_server()
    await admin.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(admin.make_url("/metrics")) as resp:
                assert resp.status == 401
            async with http.get(admin.make_url("/metrics"),
                                headers={"Authorization": "Bearer admin-secret-7"}) as resp:
                assert resp.status == 200
    finally:
        await admin.close()
        await served.close()
