"""Soak: guardproxy under load with faults injected on both sides, then cross-checked.

    python bench/soak.py [--requests 10000] [--concurrency 200] [--seed 1]

Starts a guard (SGLang's chat API) and an upstream (OpenAI chat completions) on loopback,
built on ``fast_servers.HTTPProtocol`` with faults, and ``guardproxy serve`` as a
subprocess with three tenants: ``closed`` (``on_guard_error: block``), ``open`` (``pass``)
and ``gone`` (fail-closed, its upstream a port nothing listens on).  Every request carries a
unique marker and its fate in its prompt, so the servers know what to do and the
cross-check knows what the client must get:

- 5 % guard faults, on the prompt or the response check: HTTP 500, a hang past the guard's
  timeout, unreadable output, a connection reset mid-answer;
- 5 % upstream faults: HTTP 500, a reset before the answer, an answer cut mid-way, and the
  ``gone`` tenant's refused connections;
- 5 % unsafe prompts; half the requests streamed (``response.stream: window``).

After a warm-up round at full concurrency, the proxy's open file descriptors
(``/proc/<pid>/fd``), threads and RSS are read once the servers closed their idle
connections; again after the measured round.  Checks: every upstream request had a prompt
check that passed (or failed, for the fail-open tenant); every client got a well-formed
answer (a chat completion, an SSE stream ending in ``data: [DONE]``, or an OpenAI error
body) of the kind its injected fate calls for; one log line per request, each guard fault
named in it; no fd or thread more than before; RSS within 10 % of the warm-up's.  Prints a
table and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import os
import random
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
from fast_servers import HTTPProtocol, Segments, Upstream, http_response

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MARKER = re.compile(r"soak-[a-z]+-\d+")
ABORT = b"\0abort"  # a segment that aborts the connection instead of being written
GUARD_FAULTS = ("500", "hang", "garbage", "reset")
UPSTREAM_FAULTS = ("500", "reset", "cut")
KIND_OF = {"500": "http_error", "hang": "timeout", "garbage": "unreadable", "reset": "connection"}
KEYS = {"closed": "sk-soak-closed", "open": "sk-soak-open", "gone": "sk-soak-gone"}


# -- the servers ---------------------------------------------------------------------------


class FaultProtocol(HTTPProtocol):
    """``HTTPProtocol`` whose answers may abort the connection (an ``ABORT`` segment)."""

    live: ClassVar[set[FaultProtocol]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        FaultProtocol.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        FaultProtocol.live.discard(self)

    def _answer(self, segments: Segments) -> None:
        if any(data is ABORT for _, data in segments) and not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._delayed(segments))
            return
        super()._answer(segments)

    def _write(self, data: bytes) -> None:
        if data is ABORT:
            if self.transport is not None:
                self.transport.abort()
            return
        super()._write(data)

    @classmethod
    def close_all(cls) -> None:
        """What a server's keep-alive timeout does to idle connections."""
        for protocol in list(cls.live):
            if protocol.transport is not None:
                protocol.transport.close()


def _directive(text: str, name: str) -> str | None:
    found = re.search(rf"\b{name}=([a-z0-9:]+)", text)
    return found.group(1) if found else None


@dataclass
class GuardRecord:
    marker: str
    check: str  # prompt | response
    outcome: str  # safe | unsafe | fault:<kind>


class SoakGuard:
    """Qwen3Guard-Gen over the chat API: ``Unsafe`` for "bomb", faults on request.  A request
    that hands over the answer's start (``continue_final_message``) gets the one token after
    ``Safety:``, or a flagged verdict's category; ``records`` has one entry per check."""

    def __init__(self, hang_s: float) -> None:
        self.hang_s = hang_s
        self.records: list[GuardRecord] = []
        self.answers = {v: _chat_answer(v) for v in (
            "Safety: Safe\nCategories: None", "Safety: Safe\nCategories: None\nRefusal: No",
            "Safety: Unsafe\nCategories: Violent", "I think it's fine", " Safe", " Unsafe",
            " Violent")}

    def __call__(self, method: str, target: str, body: bytes) -> Segments:
        if method == "GET":
            return [(0.0, http_response(200, b"{}"))]
        request = orjson.loads(body)
        messages = request["messages"]
        # guard.decoding one_token: a final assistant message is the answer's start
        start = messages.pop()["content"] if request.get("continue_final_message") else ""
        check = "response" if any(m["role"] == "assistant" for m in messages) else "prompt"
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        if start not in ("", "Safety:"):  # a flagged check continued: its categories
            return [(0.0, self.answers[" Violent"])]
        marker = MARKER.search(prompt)
        fault = _directive(prompt, "gfault")
        kind = fault.split(":")[1] if fault and fault.startswith(check) else None
        outcome = f"fault:{kind}" if kind else ("unsafe" if "bomb" in prompt else "safe")
        self.records.append(GuardRecord(marker.group(0) if marker else "", check, outcome))
        return self._segments(kind, check, outcome, one_token=bool(start))

    def _segments(self, kind: str | None, check: str, outcome: str, *, one_token: bool
                  ) -> Segments:
        if kind == "500":
            return [(0.0, http_response(500, b'{"object":"error","message":"CUDA error"}'))]
        if kind == "hang":
            return [(self.hang_s, self.answers["I think it's fine"])]
        if kind == "garbage":
            return [(0.0, self.answers["I think it's fine"])]
        if one_token:
            verdict = " Unsafe" if outcome == "unsafe" else " Safe"
        else:
            verdict = "Safety: Unsafe\nCategories: Violent" if outcome == "unsafe" else (
                "Safety: Safe\nCategories: None"
                + ("\nRefusal: No" if check == "response" else ""))
        answer = self.answers[verdict]
        if kind == "reset":
            return [(1e-6, answer[: len(answer) - 20]), (0.0, ABORT)]
        return [(0.0, answer)]


def _chat_answer(text: str) -> bytes:
    return http_response(200, orjson.dumps({
        "id": "guard-soak", "object": "chat.completion", "created": int(time.time()),
        "model": "Qwen/Qwen3Guard-Gen-0.6B",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": "stop"}]}))


@dataclass
class UpstreamRecord:
    marker: str
    stream: bool
    fault: str | None


class SoakUpstream(Upstream):
    """``fast_servers.Upstream`` (20-token answers) with faults on request."""

    def __init__(self) -> None:
        super().__init__(chunks=20, ttft_s=0.0, token_s=0.0)
        self.records: list[UpstreamRecord] = []

    def __call__(self, method: str, target: str, body: bytes) -> Segments:
        if method != "POST":
            return super().__call__(method, target, body)
        request = orjson.loads(body)
        prompt = request["messages"][-1]["content"]
        marker, fault = MARKER.search(prompt), _directive(prompt, "ufault")
        stream = request.get("stream") is True
        self.records.append(UpstreamRecord(marker.group(0) if marker else "", stream, fault))
        if fault == "500":
            return [(0.0, http_response(500, orjson.dumps({"error": {
                "message": "upstream overloaded", "type": "server_error", "param": None,
                "code": None}})))]
        if fault == "reset":
            return [(1e-6, ABORT)]
        whole = self.chat.whole if stream else self.chat_whole
        if fault == "cut":
            return [(1e-6, whole[: len(whole) // 2]), (0.0, ABORT)]
        return super().__call__(method, target, body)


async def _listen(handler: Any) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FaultProtocol(handler), "127.0.0.1", 0,
                                      backlog=1024)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


# -- the proxy -------------------------------------------------------------------------------

SERVER = """\
listen: {{host: 127.0.0.1, port: {port}}}
policies: policies
guard: {{url: "http://127.0.0.1:{guard}", api: chat, timeout_s: {timeout}, cache_size: 0}}
upstreams:
  local: {{url: "http://127.0.0.1:{upstream}/v1", timeout_s: 5}}
  gone: {{url: "http://127.0.0.1:{gone}/v1", timeout_s: 5}}
log: {{level: info}}
admin: false
"""
POLICY = """\
tenant: {name}
keys: ["sha256:{digest}"]
upstream: {upstream}
response: {{stream: window}}
on_guard_error: {on_error}
block: {{style: message, message: "Blocked by the soak policy."}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(root: Path, *, port: int, guard: int, upstream: int, timeout: float) -> Path:
    (root / "policies").mkdir()
    tenants = {"closed": ("local", "block"), "open": ("local", "pass"), "gone": ("gone", "block")}
    for name, (upstream_name, on_error) in tenants.items():
        digest = hashlib.sha256(KEYS[name].encode()).hexdigest()
        (root / "policies" / f"{name}.yaml").write_text(POLICY.format(
            name=name, digest=digest, upstream=upstream_name, on_error=on_error))
    path = root / "proxy.yaml"
    path.write_text(SERVER.format(port=port, guard=guard, upstream=upstream, gone=_free_port(),
                                  timeout=timeout))
    return path


async def start_proxy(config: Path, port: int, log: Path, python: str
                      ) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            python, "-m", "proxy", "serve", "-c", str(config), env=env, stdout=out,
            stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(30):
        while True:
            if process.returncode is not None:
                raise SystemExit(f"guardproxy exited with {process.returncode}; see {log}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return process
            await asyncio.sleep(0.05)


# -- the requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One request and what it must come to."""

    marker: str
    tenant: str
    stream: bool
    unsafe: bool = False
    gfault: str | None = None  # "<check>:<kind>"
    ufault: str | None = None  # a kind, or "refused" for the gone tenant

    def prompt(self) -> str:
        parts = [self.marker, "please tell me a story"]
        if self.unsafe:
            parts.append("about a bomb")
        if self.gfault:
            parts.append(f"gfault={self.gfault}")
        if self.ufault and self.ufault != "refused":
            parts.append(f"ufault={self.ufault}")
        return " ".join(parts)

    def expected(self) -> str:
        """The outcome the client must see."""
        closed = self.tenant != "open"
        if self.unsafe:
            return "blocked"
        if self.gfault and self.gfault.startswith("prompt") and closed:
            return "blocked"
        if self.ufault in ("refused", "reset") or (self.ufault == "cut" and not self.stream):
            return "http-502"
        if self.ufault == "cut":
            return "stream-error"
        if self.ufault == "500":
            return "http-502"  # an upstream 500 is the proxy's 502
        if self.gfault and self.gfault.startswith("response") and closed:
            return "blocked"
        return "answered"

    def reaches_upstream(self) -> bool:
        prompt_fault = bool(self.gfault and self.gfault.startswith("prompt"))
        blocked = self.unsafe or (prompt_fault and self.tenant != "open")
        return not blocked and self.tenant != "gone"


def make_specs(count: int, prefix: str, rng: random.Random) -> list[Spec]:
    specs = []
    for n in range(count):
        stream, tenant = rng.random() < 0.5, rng.choice(("closed", "open"))
        marker, roll = f"soak-{prefix}-{n}", rng.random()
        if roll < 0.05:
            check = rng.choice(("prompt", "response"))
            specs.append(Spec(marker, tenant, stream,
                              gfault=f"{check}:{rng.choice(GUARD_FAULTS)}"))
        elif roll < 0.06:
            specs.append(Spec(marker, "gone", stream, ufault="refused"))
        elif roll < 0.10:
            specs.append(Spec(marker, tenant, stream, ufault=rng.choice(UPSTREAM_FAULTS)))
        else:
            specs.append(Spec(marker, tenant, stream, unsafe=roll > 0.95))
    return specs


def classify(status: int, raw: bytes, stream: bool) -> str:
    """The outcome of one answer, or ``malformed: ...``."""
    try:
        if status != 200:
            error = orjson.loads(raw)["error"]
            if not isinstance(error, dict) or not {"message", "type"} <= error.keys():
                return "malformed: error body"
            return f"http-{status}"
        return _classify_stream(raw) if stream else _classify_whole(raw)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        return f"malformed: {exc!r}"


def _classify_whole(raw: bytes) -> str:
    body = orjson.loads(raw)
    choice = body["choices"][0]
    if not isinstance(body["moderation"], dict) or not isinstance(choice["message"], dict):
        return "malformed: completion"
    return "blocked" if choice["finish_reason"] == "content_filter" else "answered"


def _classify_stream(raw: bytes) -> str:
    if not raw.endswith(b"data: [DONE]\n\n") or raw.count(b"data: [DONE]") != 1:
        return "malformed: no [DONE] at the end"
    events = [orjson.loads(b.removeprefix(b"data: ")) for b in raw.split(b"\n\n")[:-2]]
    errors = [event["error"] for event in events if "error" in event]
    if errors:  # the verdict inside the error
        return "stream-error" if "moderation" in errors[0] else "malformed: no verdict in error"
    # no trailing chunk was asked for: the verdict rides on the last chunk, with choices
    if "moderation" not in events[-1] or not all(e["choices"] for e in events):
        return "malformed: no verdict on the last chunk"
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    return "blocked" if finishes == ["content_filter"] else "answered"


@dataclass
class Round:
    outcomes: dict[str, str] = field(default_factory=dict)  # marker -> outcome
    seconds: float = 0.0


async def run_round(url: str, specs: list[Spec], concurrency: int) -> Round:
    result, queue = Round(), iter(specs)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(_worker(http, url, queue, result) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def _worker(http: aiohttp.ClientSession, url: str, queue: Iterator[Spec],
                  result: Round) -> None:
    for spec in queue:
        body = {"model": "soak-model", "stream": spec.stream,
                "messages": [{"role": "user", "content": spec.prompt()}]}
        headers = {"Authorization": f"Bearer {KEYS[spec.tenant]}", "x-request-id": spec.marker}
        try:
            async with http.post(url + "/v1/chat/completions", data=orjson.dumps(body),
                                 headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.outcomes[spec.marker] = f"malformed: client error {exc!r}"
            continue
        result.outcomes[spec.marker] = classify(status, raw, spec.stream)


# -- the cross-checks --------------------------------------------------------------------------


@dataclass
class Resources:
    fds: int
    threads: int
    rss_kib: int


def resources(pid: int) -> Resources:
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return Resources(fds=len(os.listdir(f"/proc/{pid}/fd")),
                     threads=int(status["Threads"].strip()),
                     rss_kib=int(status["VmRSS"].split()[0]))


async def settle(seconds: float) -> None:
    """Hung answers finish, the servers drop idle connections, the proxy closes its side."""
    await asyncio.sleep(seconds)
    FaultProtocol.close_all()
    await asyncio.sleep(seconds)


def check_outcomes(specs: list[Spec], round_: Round) -> list[str]:
    problems = []
    for spec in specs:
        got = round_.outcomes.get(spec.marker, "malformed: no answer")
        if got != spec.expected():
            problems.append(f"{spec.marker} ({spec}): expected {spec.expected()}, got {got}")
    return problems


def check_upstream(specs: list[Spec], guard: SoakGuard, upstream: SoakUpstream) -> list[str]:
    """Every upstream request had a passing (or failed-open) prompt check, and only those."""
    by_marker = {spec.marker: spec for spec in specs}
    prompt_checks: dict[str, list[str]] = collections.defaultdict(list)
    for check in guard.records:
        if check.check == "prompt":
            prompt_checks[check.marker].append(check.outcome)
    problems = []
    seen = set()
    for record in upstream.records:
        spec, checks = by_marker.get(record.marker), prompt_checks.get(record.marker, [])
        passed = "safe" in checks or (spec is not None and spec.tenant == "open"
                                      and any(c.startswith("fault:") for c in checks))
        if spec is None or not passed or "unsafe" in checks:
            problems.append(f"upstream got {record.marker} after prompt checks {checks}")
        seen.add(record.marker)
    missing = [s.marker for s in specs if s.reaches_upstream() and s.marker not in seen]
    problems += [f"{marker} never reached the upstream" for marker in missing]
    return problems


def read_log(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "request":
                lines.append(entry)
    return lines


def check_log(specs: list[Spec], lines: list[dict[str, Any]]) -> tuple[list[str], Any]:
    """One line per request; the guard faults each stage's line names, by kind."""
    problems = []
    if len(lines) != len(specs):
        problems.append(f"{len(lines)} request log lines for {len(specs)} requests")
    logged: collections.Counter[str] = collections.Counter()
    for line in lines:
        for stage in ("input", "output"):
            entry = line.get(stage) or {}
            if entry.get("error") == "guard_unavailable":
                logged[f"{stage}:{entry.get('kind')}"] += 1
    injected: collections.Counter[str] = collections.Counter()
    for spec in specs:
        if spec.gfault:  # never beside an upstream fault: a response fault is always reached
            check, kind = spec.gfault.split(":")
            injected[f"{'input' if check == 'prompt' else 'output'}:{KIND_OF[kind]}"] += 1
    if logged != injected:
        problems.append(f"guard faults logged {dict(logged)} != injected {dict(injected)}")
    return problems, logged


def check_resources(before: Resources, after: Resources) -> list[str]:
    problems = []
    if after.fds > before.fds:
        problems.append(f"open fds grew from {before.fds} to {after.fds}")
    if after.threads > before.threads:
        problems.append(f"threads grew from {before.threads} to {after.threads}")
    if after.rss_kib > before.rss_kib * 1.10:
        problems.append(f"RSS grew from {before.rss_kib} KiB to {after.rss_kib} KiB (> 10 %)")
    return problems


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Servers:
    guard: SoakGuard
    upstream: SoakUpstream
    guard_port: int
    upstream_port: int
    closers: list[asyncio.Server]


async def start_servers(hang_s: float) -> Servers:
    guard, upstream = SoakGuard(hang_s), SoakUpstream()
    guard_server, guard_port = await _listen(guard)
    upstream_server, upstream_port = await _listen(upstream)
    return Servers(guard, upstream, guard_port, upstream_port, [guard_server, upstream_server])


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    servers = await start_servers(hang_s=args.guard_timeout * 2)
    with tempfile.TemporaryDirectory() as tmp:
        port, log = _free_port(), Path(tmp) / "proxy.log"
        config = write_config(Path(tmp), port=port, guard=servers.guard_port,
                              upstream=servers.upstream_port, timeout=args.guard_timeout)
        process = await start_proxy(config, port, log, args.python)
        try:
            report = await _measure(args, rng, servers, process.pid, f"http://127.0.0.1:{port}")
        finally:
            process.terminate()
            await process.wait()
        report.log_lines = read_log(log)
    for server in servers.closers:
        server.close()
    return report.finish(servers)


@dataclass
class Report:
    warm: list[Spec]
    specs: list[Spec]
    main: Round
    before: Resources
    after: Resources
    log_lines: list[dict[str, Any]] = field(default_factory=list)

    def finish(self, servers: Servers) -> int:
        markers = {s.marker for s in self.specs}
        lines = [line for line in self.log_lines if line["request_id"] in markers]
        problems = (check_outcomes(self.specs, self.main)
                    + check_upstream(self.warm + self.specs, servers.guard, servers.upstream)
                    + check_resources(self.before, self.after))
        if len(self.log_lines) != len(self.warm) + len(self.specs):
            problems.append(f"{len(self.log_lines)} request log lines for "
                            f"{len(self.warm) + len(self.specs)} requests")
        log_problems, logged = check_log(self.specs, lines)
        problems += log_problems
        self.print(servers, logged, problems)
        return 1 if problems else 0

    def print(self, servers: Servers, logged: Any, problems: list[str]) -> None:
        outcomes = collections.Counter(self.main.outcomes.values())
        rows = [("requests (warm-up + measured)", f"{len(self.warm)} + {len(self.specs)}"),
                ("measured round", f"{self.main.seconds:.1f} s, "
                 f"{len(self.specs) / self.main.seconds:,.0f} req/s")]
        rows += [(f"client outcome {k}", str(v)) for k, v in sorted(outcomes.items())]
        rows += _fault_rows(self.specs)
        rows += [(f"log: guard fault {k}", str(v)) for k, v in sorted(logged.items())]
        rows += [("guard calls / upstream calls (both rounds)",
                  f"{len(servers.guard.records)} / {len(servers.upstream.records)}"),
                 ("re-sent after a reset or cut: guard / upstream", _resent(servers)),
                 ("proxy open fds before / after", f"{self.before.fds} / {self.after.fds}"),
                 ("proxy threads before / after", f"{self.before.threads} / {self.after.threads}"),
                 ("proxy RSS before / after (MiB)", f"{self.before.rss_kib / 1024:.1f} / "
                  f"{self.after.rss_kib / 1024:.1f} "
                  f"({(self.after.rss_kib / self.before.rss_kib - 1) * 100:+.1f} %)"),
                 ("violations", str(len(problems)))]
        width = max(len(name) for name, _ in rows)
        print(f"| {'what'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
        for name, value in rows:
            print(f"| {name.ljust(width)} | {value} |")
        for problem in problems[:20]:
            print("VIOLATION:", problem)


def _resent(servers: Servers) -> str:
    """Requests a server saw more than once (the proxy sent them again), and the most."""
    guard = collections.Counter((r.marker, r.check) for r in servers.guard.records
                                if r.check == "prompt" or r.outcome.startswith("fault:"))
    upstream = collections.Counter(r.marker for r in servers.upstream.records)
    parts = []
    for seen in (guard, upstream):
        extra = sum(n - 1 for n in seen.values())
        parts.append(f"{extra} (at most {max(seen.values(), default=1)}x one request)")
    return " / ".join(parts)


def _fault_rows(specs: list[Spec]) -> list[tuple[str, str]]:
    injected: collections.Counter[str] = collections.Counter()
    for spec in specs:
        if spec.gfault:
            injected[f"injected guard {spec.gfault}"] += 1
        if spec.ufault:
            injected[f"injected upstream {spec.ufault}"] += 1
        if spec.unsafe:
            injected["unsafe prompts"] += 1
    return [(k, str(v)) for k, v in sorted(injected.items())]


async def _measure(args: argparse.Namespace, rng: random.Random, servers: Servers, pid: int,
                   url: str) -> Report:
    warm = make_specs(max(args.requests // 5, args.concurrency * 2), "warm", rng)
    await run_round(url, warm, args.concurrency)
    await settle(args.settle)
    before = resources(pid)
    specs = make_specs(args.requests, "main", rng)
    main = await run_round(url, specs, args.concurrency)
    await settle(args.settle)
    return Report(warm, specs, main, before, resources(pid))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--guard-timeout", type=float, default=0.5,
                        help="the proxy's guard.timeout_s; hung guard answers take twice this")
    parser.add_argument("--settle", type=float, default=1.5,
                        help="seconds to wait after a round, before and after idle connections "
                             "are closed")
    parser.add_argument("--python", default=sys.executable, help="runs guardproxy serve")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
