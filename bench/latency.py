"""Latency hiding and many streams, measured against the emulators on loopback.

    python bench/latency.py ttft    [--guard-ms 50] [--upstream-ttft-ms 200] [--runs 5]
    python bench/latency.py streams [--streams 1000] [--hold-s 10]

``ttft``: time to the first token for ``prompt.mode: sequential`` and ``parallel`` (the
upstream starts while the prompt is checked), streamed in ``async`` mode so the first
token is not held for a window.  ``streams``: the proxy (``guardproxy serve``, its own
process) holds N concurrent slow streams; the report is its RSS before and while they
run, and the difference per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from emulators.guard import GuardEmulator  # noqa: E402
from emulators.upstream import Reply, UpstreamEmulator  # noqa: E402
from harness import KEYS, UPSTREAM_KEY, start_proxy, write_config  # noqa: E402

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def first_token_ms(http: aiohttp.ClientSession, url: str, tenant: str) -> float:
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    async with http.post(url, json=BODY, headers=headers) as resp:
        async for piece in resp.content.iter_any():
            if b'"content":"Answer' in piece:
                return (time.perf_counter() - started) * 1000
    raise AssertionError("no token arrived")


async def ttft(args: argparse.Namespace) -> None:
    guard, upstream = GuardEmulator(latency_s=args.guard_ms / 1000), UpstreamEmulator()
    await guard.start()
    await upstream.start()
    server, proxy = await start_proxy(Path(tempfile.mkdtemp()), guard, upstream, stream="async")
    results: dict[str, list[float]] = {"strict": [], "racer": []}
    try:
        for run in range(args.runs):
            for tenant in results:
                upstream.replies.append(Reply(content=f"Answer number {run}.",
                                              first_token_delay_s=args.upstream_ttft_ms / 1000))
                results[tenant].append(await first_token_ms(
                    proxy.http, proxy.url + "/v1/chat/completions", tenant))
    finally:
        await proxy.http.close()
        await server.close()
        await guard.close()
        await upstream.close()
    print(f"guard {args.guard_ms:.0f} ms per check, upstream first token after "
          f"{args.upstream_ttft_ms:.0f} ms, median of {args.runs} runs\n")
    print("| prompt.mode | time to first token |\n| --- | ---: |")
    for tenant, mode in (("strict", "sequential"), ("racer", "parallel")):
        print(f"| {mode} | {statistics.median(results[tenant]):.0f} ms |")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def hold_stream(http: aiohttp.ClientSession, url: str, opened: list[int],
                      all_open: asyncio.Event, count: int) -> int:
    headers = {"Authorization": f"Bearer {KEYS['strict']}"}
    async with http.post(url, json=BODY, headers=headers) as resp:
        opened.append(resp.status)
        if len(opened) >= count:
            all_open.set()
        return len(await resp.read())


async def streams(args: argparse.Namespace) -> None:
    guard, upstream = GuardEmulator(), UpstreamEmulator()
    await guard.start()
    await upstream.start()
    upstream.api_key = UPSTREAM_KEY
    config = write_config(Path(tempfile.mkdtemp()), guard=guard.url, upstream=upstream.url,
                          stream="async", timeout=30)
    port = free_port()
    env = {**os.environ, "UPSTREAM_KEY": UPSTREAM_KEY, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.sleep(1.5)
        await report_streams(args, process.pid, port, upstream)
    finally:
        process.terminate()
        await process.wait()
        await guard.close()
        await upstream.close()


async def report_streams(args: argparse.Namespace, pid: int, port: int,
                         upstream: UpstreamEmulator) -> None:
    tokens = 10
    for _ in range(args.streams):
        upstream.replies.append(Reply(content="tok " * tokens, chunks=["tok "] * tokens,
                                      delay_s=args.hold_s / tokens))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as http:
        await hold_stream(http, url, [], asyncio.Event(), 1)  # warm the proxy up
        before, opened, all_open = rss_kb(pid), [], asyncio.Event()
        tasks = [asyncio.create_task(hold_stream(http, url, opened, all_open, args.streams))
                 for _ in range(args.streams)]
        await all_open.wait()
        await asyncio.sleep(args.hold_s / 3)
        during = rss_kb(pid)
        sizes = await asyncio.gather(*tasks)
    ok = sum(1 for status in opened if status == 200)
    print(f"| concurrent streams | RSS before | RSS with them open | per stream |\n"
          f"| ---: | ---: | ---: | ---: |\n"
          f"| {ok} of {args.streams} | {before / 1024:.1f} MiB | {during / 1024:.1f} MiB | "
          f"{(during - before) / args.streams:.1f} KiB |")
    assert ok == args.streams and all(size > 0 for size in sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("ttft")
    one.add_argument("--guard-ms", type=float, default=50)
    one.add_argument("--upstream-ttft-ms", type=float, default=200)
    one.add_argument("--runs", type=int, default=5)
    many = commands.add_parser("streams")
    many.add_argument("--streams", type=int, default=1000)
    many.add_argument("--hold-s", type=float, default=10)
    args = parser.parse_args()
    asyncio.run(ttft(args) if args.command == "ttft" else streams(args))


if __name__ == "__main__":
    main()
