"""What each response.stream mode costs, measured against the emulators on loopback.

    python bench/stream_modes.py [--guard-ms 20] [--token-ms 10] [--chars 2000] [--runs 5]

For buffer, window and async it reports: the time to the first text the client sees,
against the upstream's own (so the difference is what moderation adds), the response
checks per 1,000 characters of a safe answer, and, for an answer that turns unsafe, how
many characters reached the client before any passing check covered them (``leaked_chars``),
and how many of those came after the last check that passed (the unchecked tail: at most a
window and what arrives while the failing check runs).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from emulators.guard import GuardEmulator, judged_message
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, start_proxy

WORD = "lorem "  # one token of 6 characters
_sent = itertools.count()


def body() -> dict[str, Any]:
    """A request no earlier one repeats: the verdict cache must not answer its checks."""
    return {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": f"write #{next(_sent)}"}]}


async def first_text_ms(http: aiohttp.ClientSession, url: str, headers: dict[str, str]
                        ) -> float:
    """Milliseconds until the first content delta, reading the stream to its end."""
    started, first = time.perf_counter(), None
    async with http.post(url, json=body(), headers=headers) as resp:
        async for piece in resp.content.iter_any():
            if first is None and b'"content":"lorem' in piece:
                first = time.perf_counter()
    assert first is not None, "no text arrived"
    return (first - started) * 1000


async def measure(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    guard, upstream = GuardEmulator(latency_s=args.guard_ms / 1000), UpstreamEmulator()
    await guard.start()
    await upstream.start()
    server, proxy = await start_proxy(Path(tempfile.mkdtemp()), guard, upstream, stream=mode,
                                      timeout=30)
    words = [WORD] * (args.chars // len(WORD))
    try:
        direct, through, calls = [], [], []
        for _ in range(args.runs):
            upstream.replies.append(Reply(content="".join(words), chunks=words,
                                          delay_s=args.token_ms / 1000))
            direct.append(await first_text_ms(
                proxy.http, upstream.url + "/v1/chat/completions",
                {"Authorization": f"Bearer {UPSTREAM_KEY}"}))
            upstream.replies.append(Reply(content="".join(words), chunks=words,
                                          delay_s=args.token_ms / 1000))
            before = len(guard.requests)
            through.append(await first_text_ms(
                proxy.http, proxy.url + "/v1/chat/completions",
                {"Authorization": f"Bearer {KEYS['strict']}"}))
            calls.append(len(guard.requests) - before - 1)  # less the prompt check
        leaks = [await leak(proxy, guard, upstream, args) for _ in range(args.runs)]
    finally:
        await proxy.http.close()
        await server.close()
        await guard.close()
        await upstream.close()
    chars = len(words) * len(WORD)
    return {
        "mode": mode,
        "upstream_first_text_ms": statistics.median(direct),
        "first_text_ms": statistics.median(through),
        "added_ms": statistics.median(t - d for t, d in zip(through, direct, strict=True)),
        "checks_per_1000_chars": statistics.median(calls) * 1000 / chars,
        "leaked_chars": max(leaked for leaked, _ in leaks) if mode == "async" else 0,
        "tail_chars": max(tail for _, tail in leaks) if mode == "async" else 0,
    }


async def leak(proxy: Any, guard: GuardEmulator, upstream: UpstreamEmulator,
               args: argparse.Namespace) -> tuple[int, int]:
    """An answer that turns unsafe after 100 words: ``leaked_chars``, and the part of it
    sent after the last check that passed."""
    words = [WORD] * 100 + ["bomb "] + [WORD] * 200
    upstream.replies.append(Reply(content="".join(words), chunks=words,
                                  delay_s=args.token_ms / 1000))
    before = len(guard.requests)
    with capture_logs() as logs:
        await proxy.post(body())
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    leaked = int(line.get("leaked_chars") or 0)
    checks = [r.prompt for r in guard.requests[before:]
              if r.prompt and "LAST ASSISTANT" in r.prompt]
    passed = len(judged_message(checks[-2])[1]) if len(checks) > 1 else 0
    return leaked, max(0, leaked - passed)


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [f"guard {args.guard_ms} ms per check, upstream a {len(WORD)}-character token every "
           f"{args.token_ms} ms, {args.chars}-character answers, median of {args.runs} runs",
           "",
           "| mode | first text (upstream alone) | first text through the proxy | added | "
           "response checks per 1,000 chars | leaked chars (max) | of which after the last "
           "passed check |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['mode']} | {r['upstream_first_text_ms']:.0f} ms | "
                   f"{r['first_text_ms']:.0f} ms | {r['added_ms']:.0f} ms | "
                   f"{r['checks_per_1000_chars']:.1f} | {r['leaked_chars']} | "
                   f"{r['tail_chars']} |")
    return "\n".join(out)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guard-ms", type=float, default=20)
    parser.add_argument("--token-ms", type=float, default=10)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = [await measure(mode, args) for mode in ("buffer", "window", "async")]
    print(table(rows, args))


if __name__ == "__main__":
    asyncio.run(main())
