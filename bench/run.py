"""guardproxy throughput and latency benchmark, one command:

    python bench/run.py [--duration 15] [--warmup 3] [--connections 32] [--quick]

Starts the fast emulators (bench/fast_servers.py), then, for non-streamed and streamed chat
completions, ``/v1/responses`` and ``/v1/messages``, each system under test in a fresh
process: the minimal pass-through baseline with one guard hop, (chat only) with two guard
hops, guardproxy (prompt and response checked), and (chat only) guardproxy with
``--workers 2``.  wrk drives each at ``--connections`` (throughput) and at one connection
(unloaded latency; not for the 2 workers).  The load generator and the emulators are pinned
to one CPU, the system under test to another; the 2 workers need both, so they share the
load's.  Every API's answer carries the same tokens, and the baseline relays each API's
answer as it came, so each API's guardproxy/baseline ratio compares what that API costs in
guardproxy with chat's.  ``--modes audit`` (not in the default) instead runs non-streamed chat
with every 10th prompt blocked on guardproxy with its audit trail off and on (SQLite), and
reports their ratio and what the trail wrote.

Prints markdown tables and writes bench/results/latest.json.  Exits non-zero when a server
does not start, a sanity request fails, or wrk sees errors or non-2xx responses.
Standard library only: any Python >= 3.11 runs it; the servers run on ``--python``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "chat.lua"
KEY = "sk-bench-0123456789"
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
TICK = os.sysconf("SC_CLK_TCK")
#: a pinned CPU busier than its bench processes by more than this (percent) is flagged
OTHER_CPU_WARN = 15.0


class BenchError(Exception):
    """A failure that makes the run invalid."""


@dataclass(frozen=True)
class Mode:
    """What the load asks for: an API, streamed or not."""

    key: str  # --modes name, and the key of the mode in latest.json
    label: str  # in the tables
    stream: bool
    api: str  # chat | responses | messages (chat.lua's BENCH_API)
    path: str
    #: every BLOCKED_EVERY-th prompt carries the fast guard's unsafe marker (``audit``:
    #: guardproxy with its audit trail off and on, nothing else)
    mix: bool = False


MODES = (Mode("non-stream", "non-stream", False, "chat", CHAT),
         Mode("stream", "stream", True, "chat", CHAT),
         Mode("responses", "non-stream (responses)", False, "responses", RESPONSES),
         Mode("responses-stream", "stream (responses)", True, "responses", RESPONSES),
         Mode("messages", "non-stream (messages)", False, "messages", MESSAGES),
         Mode("messages-stream", "stream (messages)", True, "messages", MESSAGES),
         Mode("audit", "non-stream, 10 % blocked", False, "chat", CHAT, mix=True))
#: the other APIs, each beside chat (``_apis``)
OTHER_APIS = ("responses", "messages")
MODE = {mode.key: mode for mode in MODES}
#: a mix blocks every BLOCKED_EVERY-th prompt (the fast guard's unsafe marker)
BLOCKED_EVERY = 10
#: the ``audit`` mode's target: rps with the audit trail on / rps with it off
AUDIT_TARGET = 0.95
#: wrk script of a mix (written to the run's temp folder): chat.lua's requests, every
#: BLOCKED_EVERY-th with "weather" replaced by "bombing" (same length, so the
#: Content-Length wrk.format computed still holds), which the fast guard judges unsafe
MIX_LUA = """\
dofile({chat})
local chat_request = request
local sent = 0
function request()
  sent = sent + 1
  local req = chat_request()
  if sent % {every} == 0 then
    req = string.gsub(req, "weather", "bombing", 1)
  end
  return req
end
"""


# -- processes and pinning ---------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    load: str | None  # CPU list for wrk and the emulators (taskset -c), None: not pinned
    sut: str | None  # CPU list for the system under test
    note: str
    #: both CPUs (load + SUT), for a multi-process system under test (proxy2): its workers
    #: need both cores, so they share the load's CPU
    both: str | None = None


def plan_pinning() -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None:
        return Pinning(None, None, "WARNING: taskset not found, nothing pinned")
    if len(cpus) < 2:
        return Pinning(None, None, f"WARNING: only CPU {cpus} available, nothing pinned")
    load, sut = str(cpus[0]), str(cpus[1])
    return Pinning(load, sut, f"wrk + emulators on CPU {load}, system under test on CPU {sut} "
                   f"(proxy2: its workers on CPUs {load},{sut})", both=f"{load},{sut}")


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 5.0
                 ) -> tuple[int, Mapping[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    admin_port: int | None = None  # guardproxy's admin listener (/metrics), when enabled
    audit_db: Path | None = None  # guardproxy's audit trail, when on

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.proc.returncode}:\n"
                             + self.tail())

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def children(self) -> list[int]:
        """Every process below this one (``serve --workers N``: the workers)."""
        return descendants(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            children = self.children()
            self.proc.send_signal(signal.SIGTERM)  # guardproxy's supervisor stops its workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in children:  # a worker left behind by a killed supervisor
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def start_server(name: str, argv: list[str], port: int, ready: str, logs: Path,
                 *, stdout_null: bool = False, timeout: float = 20.0) -> Server:
    log = logs / f"{name}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL if stdout_null else err, stderr=err,
                                cwd=ROOT)
    server = Server(name, port, proc, log)
    deadline = time.monotonic() + timeout
    while True:
        server.alive()
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(port, "GET", ready, timeout=1.0)[0] == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise BenchError(f"{name} did not answer GET {ready} within {timeout:.0f}s:\n"
                             + server.tail())
        time.sleep(0.05)


# -- measurements ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    """The children of a process, their children, and so on (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        out += kids
        todo += kids
    return sorted(out)


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on a port (SO_REUSEPORT: one per worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            nums = [int(v) for v in values]
            idle = nums[3] + nums[4]  # idle + iowait
            out[name[3:]] = (sum(nums[:8]) - idle, sum(nums[:8]))
    return out


def busy_percent(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                 cpu: str | None) -> float | None:
    if cpu is None or cpu not in before:
        return None
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else None


def wait_quiet(pinning: Pinning, *, limit_s: float, threshold: float = 10.0) -> float | None:
    """Wait until the pinned CPUs are idle (other jobs on the machine skew every figure).

    Returns the busiest pinned CPU's last sampled load (percent), None when not pinned."""
    cpus = [c for c in (pinning.load, pinning.sut) if c is not None]
    if not cpus:
        return None
    deadline = time.monotonic() + limit_s
    while True:
        before = cpu_times()
        time.sleep(0.5)
        after = cpu_times()
        busiest = max(busy_percent(before, after, c) or 0.0 for c in cpus)
        if busiest < threshold or time.monotonic() > deadline:
            if busiest >= threshold:
                print(f"# WARNING: pinned CPUs still {busiest:.0f} % busy before the run "
                      "(another job on this machine?)", file=sys.stderr)
            return busiest


def counters(port: int) -> dict[str, int]:
    status, _, body = http_request(port, "GET", "/stats")
    if status != 200:
        raise BenchError(f"GET /stats on port {port} answered {status}")
    requests: dict[str, int] = json.loads(body)["requests"]
    return requests


def calls(before: dict[str, int], after: dict[str, int], paths: tuple[str, ...]) -> int:
    return sum(after.get(p, 0) - before.get(p, 0) for p in paths)


@dataclass
class Wrk:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p75_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # wrk's own CPU time
    output: str = ""
    #: a mix: every blocked_every-th request is refused (HTTP 400, ``block.style: error``);
    #: up to ``connections`` requests still in flight at the end blur the expected count
    blocked_every: int = 0
    connections: int = 0

    @property
    def errors(self) -> list[str]:
        out = [f"{self.non_2xx} non-2xx/3xx responses"] if self.non_2xx else []
        if self.blocked_every:
            low = self.requests // self.blocked_every - self.connections
            high = (self.requests + self.connections) // self.blocked_every + 1
            out = [] if low <= self.non_2xx <= high else [
                f"{self.non_2xx} non-2xx/3xx responses of {self.requests}, expected "
                f"{max(low, 0)}..{high} (every {self.blocked_every}th prompt blocked)"]
        out += [f"{n} socket {kind} errors" for kind, n in self.socket_errors.items() if n]
        if self.requests == 0:
            out.append("no request completed")
        return out


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise BenchError(f"unreadable wrk time {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Wrk:
    result = Wrk(output=output)
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)\s*$", output, re.M)
        if match is None:
            raise BenchError(f"wrk printed no {pct}% latency:\n{output}")
        setattr(result, f"p{pct}_ms", _ms(match.group(1)))
    match = re.search(r"^\s+(\d+) requests in (\S+),", output, re.M)
    if match is None:
        raise BenchError(f"wrk printed no request count:\n{output}")
    result.requests, result.seconds = int(match.group(1)), _ms(match.group(2)) / 1000
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    result.rps = float(match.group(1)) if match else 0.0
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result.non_2xx = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      output)
    if match:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                        map(int, match.groups()), strict=True))
    return result


def run_wrk(port: int, *, connections: int, seconds: float, mode: Mode,
            cpu: str | None, script: Path = LUA) -> Wrk:
    argv = pinned(cpu, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                        "--latency", "--timeout", "10s", "-s", str(script),
                        f"http://127.0.0.1:{port}{mode.path}"])
    env = {**os.environ, "BENCH_STREAM": "1" if mode.stream else "0", "BENCH_API": mode.api,
           "BENCH_KEY": KEY,
           "BENCH_RUN": uuid.uuid4().hex[:8]}  # prompts unique across runs, not only within
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    result.cpu_s = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    if mode.mix:
        result.blocked_every, result.connections = BLOCKED_EVERY, connections
    return result


def mix_script(folder: Path) -> Path:
    """The wrk script of a mix, written once into the run's temp folder."""
    path = folder / "mix.lua"
    if not path.exists():
        path.write_text(MIX_LUA.format(chat=json.dumps(str(LUA)), every=BLOCKED_EVERY))
    return path


# -- systems under test ------------------------------------------------------------------


POLICY = """\
tenant: bench
keys: [{digest}]
upstream: local
apis: {{chat: local, responses: local, messages: local}}
prompt: {{check: true, unsafe: block, controversial: block}}
response: {{check: true, unsafe: block, controversial: block, stream: window}}
on_guard_error: block
block: {{style: error, message: "blocked by the bench policy"}}
log_content: false
"""

SERVER_CONFIG = """\
listen: {{host: 127.0.0.1, port: {port}}}
policies: policies
guard: {{url: "http://127.0.0.1:{guard}", model: Qwen/Qwen3Guard-Gen-0.6B, api: {api}, \
timeout_s: 10}}
upstreams:
  local: {{url: "http://127.0.0.1:{upstream}/v1", timeout_s: 60}}
log: {{level: info}}
{admin}
"""


def write_proxy_config(root: Path, *, port: int, guard: int, upstream: int, api: str,
                       admin_port: int | None = None, audit_db: Path | None = None) -> Path:
    """The bench's config; with ``admin_port`` the admin listener (``/metrics``) on it,
    with ``audit_db`` an audit trail in that SQLite file."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    (root / "policies" / "bench.yaml").write_text(POLICY.format(digest=digest))
    path = root / "proxy.yaml"
    admin = "admin: false" if admin_port is None else \
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}"
    if audit_db is not None:
        admin += f"\naudit: {{url: {json.dumps(f'sqlite:///{audit_db}')}}}"
    path.write_text(SERVER_CONFIG.format(port=port, guard=guard, upstream=upstream, api=api,
                                         admin=admin))
    return path


@dataclass(frozen=True)
class System:
    key: str  # baseline1 | baseline2 | floor | proxy | proxy2 | proxy-audit
    label: str
    #: guardproxy ``serve --workers N``; N > 1 runs on both CPUs (shared with the load)
    workers: int = 1
    #: guardproxy with ``audit.url`` set (a SQLite file in the run's temp folder)
    audit: bool = False

    @property
    def guardproxy(self) -> bool:
        return self.key.startswith("proxy")


#: the systems every API runs on (proxy2 and baseline2 run chat only)
CHAT_ONLY = ("baseline1", "proxy")
SYSTEMS = (System("baseline1", "baseline, 1 guard hop"),
           System("baseline2", "baseline, 2 guard hops"),
           System("proxy", "guardproxy, prompt + response checked"),
           System("proxy2", "guardproxy, 2 workers (CPUs 0+1, shared with the load)",
                  workers=2),
           System("floor", "guardproxy's I/O alone (bench/floor.py), no moderation"))
#: the ``audit`` mode's pair, whatever --systems says: guardproxy with its audit trail off
#: and on, the admin listener (/metrics) on in both
AUDIT_OFF = System("proxy", "guardproxy, audit trail off")
AUDIT_ON = System("proxy-audit", "guardproxy, audit trail on (SQLite)", audit=True)


@dataclass
class Env:
    args: argparse.Namespace
    pinning: Pinning
    logs: Path
    upstream: Server
    guard: Server
    proxy_config: Path | None = None

    def bench_server(self, python: str, script: str, port: int) -> list[str]:
        """The command of one of bench/'s own servers (``baseline.server_arguments``),
        listening on ``port`` in front of these emulators."""
        return [python, str(BENCH / script), "--port", str(port),
                "--guard", f"http://127.0.0.1:{self.guard.port}",
                "--upstream", f"http://127.0.0.1:{self.upstream.port}/v1"]

    def start(self, system: System, mode: Mode | None = None) -> Server:
        """``system`` in a fresh process; for a mix (``mode.mix``) guardproxy's admin
        listener is on, and with ``system.audit`` its audit trail, in a new SQLite file."""
        port = free_port()
        python = self.args.python
        admin_port = free_port() if mode is not None and mode.mix else None
        audit_db = None
        if system.audit:
            audit_db = Path(tempfile.mkdtemp(prefix="audit-", dir=self.logs)) / "audit.db"
        if system.guardproxy:
            self.proxy_config = write_proxy_config(
                self.logs / "proxy", port=port, guard=self.guard.port,
                upstream=self.upstream.port, api=self.args.guard_api,
                admin_port=admin_port, audit_db=audit_db)
            check = subprocess.run([python, "-m", "proxy", "check", "-c",
                                    str(self.proxy_config)], cwd=ROOT, capture_output=True,
                                   text=True, check=False)
            if check.returncode != 0:
                raise BenchError(f"guardproxy check rejected the bench config:\n"
                                 f"{check.stdout}{check.stderr}")
            argv = [python, "-m", "proxy", "serve", "-c", str(self.proxy_config)]
            if system.workers > 1:
                argv += ["--workers", str(system.workers)]
            ready = "/healthz"
        elif system.key == "floor":
            argv = self.bench_server(python, "floor.py", port)
            ready = "/healthz"
        else:
            guards = "2" if system.key == "baseline2" else "1"
            argv = [*self.bench_server(python, "baseline.py", port),
                    "--guards", guards, "--loop", self.args.baseline_loop]
            ready = "/healthz"
        # the harness runs on the load CPU only, and children inherit that: a multi-process
        # system is given both CPUs explicitly
        cpus = self.pinning.sut if system.workers == 1 else self.pinning.both
        server = start_server(system.key, pinned(cpus, argv), port, ready, self.logs,
                              stdout_null=system.guardproxy)
        server.admin_port, server.audit_db = admin_port, audit_db
        if system.workers > 1:  # /healthz answered by one worker: wait for all of them
            deadline = time.monotonic() + 20
            while listening_sockets(port) < system.workers:
                server.alive()
                if time.monotonic() > deadline:
                    server.stop()
                    raise BenchError(f"{system.key}: {listening_sockets(port)} of "
                                     f"{system.workers} workers listening after 20 s:\n"
                                     + server.tail())
                time.sleep(0.05)
        return server

    def script(self, mode: Mode) -> Path:
        """The wrk script of ``mode``."""
        return mix_script(self.logs) if mode.mix else LUA


def sanity(server: Server, system: str, mode: Mode, *, chunks: int) -> None:
    """One request before the load: a complete, moderated (for the proxy) 200 answer."""
    prompt = f"sanity check {time.time_ns()}"
    payload: dict[str, Any] = {"model": "bench-model", "stream": mode.stream}
    if mode.api == "responses":
        payload["input"] = prompt
    else:
        payload["messages"] = [{"role": "user", "content": prompt}]
    if mode.api == "messages":
        payload["max_tokens"] = 256
    status, headers, raw = http_request(server.port, "POST", mode.path,
                                        json.dumps(payload).encode(), {
        "Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}, timeout=30)
    what = f"{system} ({mode.key}) sanity request"
    if status != 200:
        raise BenchError(f"{what}: HTTP {status}: {raw[:500]!r}")
    text = raw.decode()
    if mode.api != "chat":
        check = API_SANITY[mode.api, mode.stream]
        moderation = check(text, what, "tok " * chunks)
    elif mode.stream:
        if not text.rstrip().endswith("data: [DONE]") or text.count("tok ") < 1:
            raise BenchError(f"{what}: incomplete stream: {text[-300:]!r}")
        events = [json.loads(line[6:]) for line in text.splitlines()
                  if line.startswith("data: {")]
        moderation = next((e["moderation"] for e in events if "moderation" in e), None)
    else:
        moderation = json.loads(text).get("moderation")
    if not system.startswith("proxy"):
        return
    if headers.get("x-guard-action") != "pass" or not isinstance(moderation, dict):
        raise BenchError(f"{what}: not moderated as expected: {text[-500:]!r}")
    for stage in ("input", "output"):  # chat's results, or (Responses) one result
        if moderation.get(stage, {}).get("type") not in ("moderation_results",
                                                         "moderation_result"):
            raise BenchError(f"{what}: {stage} not checked: {moderation.get(stage)!r}")


def blocked_sanity(server: Server, system: str, mode: Mode) -> None:
    """One prompt with the fast guard's unsafe marker before a mix: refused with HTTP 400
    (``block.style: error``), ``content_filter``."""
    payload = {"model": "bench-model", "stream": False, "messages": [
        {"role": "user", "content": f"sanity check {time.time_ns()}: the bombing"}]}
    status, headers, raw = http_request(server.port, "POST", mode.path,
                                        json.dumps(payload).encode(), {
        "Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}, timeout=30)
    if status != 400 or headers.get("x-guard-action") != "block" \
            or b"content_filter" not in raw:
        raise BenchError(f"{system} ({mode.key}) blocked sanity request: HTTP {status}, "
                         f"x-guard-action {headers.get('x-guard-action')!r}: {raw[:500]!r}")


#: the event types of a streamed Responses answer with one message, in order (the deltas
#: collapsed into one)
RESPONSES_EVENTS = ("response.created", "response.in_progress", "response.output_item.added",
                    "response.content_part.added", "response.output_text.delta",
                    "response.output_text.done", "response.content_part.done",
                    "response.output_item.done", "response.completed")
#: the same for a streamed Messages answer with one text block (``ping`` left out: the
#: upstream sends one, guardproxy none)
MESSAGES_EVENTS = ("message_start", "content_block_start", "content_block_delta",
                   "content_block_stop", "message_delta", "message_stop")


def named_events(text: str, what: str) -> list[dict[str, Any]]:
    """The events of an ``event:`` + ``data:`` stream (no ``[DONE]``), each one's ``event:``
    line naming its ``type``."""
    if "[DONE]" in text:
        raise BenchError(f"{what}: this API's streams end without [DONE]: {text[-300:]!r}")
    events = []
    for block in text.strip().split("\n\n"):
        lines = {name: value for name, _, value in
                 (line.partition(": ") for line in block.splitlines())}
        try:
            event = json.loads(lines["data"])
        except (KeyError, ValueError) as exc:
            raise BenchError(f"{what}: unreadable event {block[:300]!r}") from exc
        if lines.get("event") != event.get("type"):
            raise BenchError(f"{what}: event {lines.get('event')!r} carries "
                             f"{event.get('type')!r}")
        events.append(event)
    return events


def _in_order(events: list[dict[str, Any]], expected: tuple[str, ...], what: str) -> None:
    kinds = [e["type"] for e in events if e["type"] != "ping"]
    collapsed = tuple(k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1])
    if collapsed != expected:
        raise BenchError(f"{what}: events {collapsed}, expected {expected}")


def _answered(streamed: str | None, final: str, expected: str, what: str) -> None:
    if (streamed is not None and streamed != expected) or final != expected:
        raise BenchError(f"{what}: incomplete answer: "
                         f"{'-' if streamed is None else len(streamed)} characters streamed, "
                         f"{len(final)} in the answer, {len(expected)} sent by the upstream")


def response_text(response: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for item in response.get("output") or []
                   for part in item.get("content") or [])


def responses_sanity(text: str, what: str, expected: str) -> Any:
    """Checks a streamed Responses answer (sequence numbers from 0, the expected event
    types in order, the deltas adding up to the upstream's tokens and to the text of
    ``response.completed``); returns the final response's ``moderation``."""
    events = named_events(text, what)
    _in_order(events, RESPONSES_EVENTS, what)
    if [e.get("sequence_number") for e in events] != list(range(len(events))):
        raise BenchError(f"{what}: sequence numbers are not 0..{len(events) - 1}")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    response = events[-1]["response"]
    _answered(deltas, response_text(response), expected, what)
    if response.get("status") != "completed" or not response.get("usage"):
        raise BenchError(f"{what}: status {response.get('status')!r}, usage "
                         f"{response.get('usage')!r}")
    return response.get("moderation")


def response_sanity(text: str, what: str, expected: str) -> Any:
    """A whole Responses answer: completed, the upstream's text, usage."""
    response = json.loads(text)
    _answered(None, response_text(response), expected, what)
    if response.get("status") != "completed" or not response.get("usage"):
        raise BenchError(f"{what}: status {response.get('status')!r}")
    return response.get("moderation")


def messages_sanity(text: str, what: str, expected: str) -> Any:
    """A streamed Messages answer: the expected event types in order, the text deltas
    adding up to the upstream's tokens, ``message_delta`` with ``end_turn`` and the usage;
    returns the ``moderation`` of ``message_delta``."""
    events = named_events(text, what)
    _in_order(events, MESSAGES_EVENTS, what)
    deltas = "".join(e["delta"].get("text", "") for e in events
                     if e["type"] == "content_block_delta")
    _answered(deltas, deltas, expected, what)
    (ending,) = [e for e in events if e["type"] == "message_delta"]
    if ending["delta"].get("stop_reason") != "end_turn" or not ending.get("usage"):
        raise BenchError(f"{what}: message_delta {ending!r}")
    return ending.get("moderation")


def message_sanity(text: str, what: str, expected: str) -> Any:
    """A whole Messages answer: ``end_turn``, the upstream's text, usage."""
    message = json.loads(text)
    final = "".join(block.get("text", "") for block in message.get("content") or [])
    _answered(None, final, expected, what)
    if message.get("stop_reason") != "end_turn" or not message.get("usage"):
        raise BenchError(f"{what}: stop_reason {message.get('stop_reason')!r}")
    return message.get("moderation")


#: (api, stream) -> the check of a sanity answer, returning its ``moderation``
API_SANITY = {("responses", True): responses_sanity, ("responses", False): response_sanity,
              ("messages", True): messages_sanity, ("messages", False): message_sanity}


@dataclass
class Row:
    system: str
    label: str
    mode: str  # Mode.key
    api: str  # chat | responses | messages
    stream: bool
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    guard_calls_per_request: float
    upstream_calls_per_request: float
    sut_cpu_percent: float  # of one core, during the measured run
    sut_cpu_ms_per_request: float
    load_cpu_percent: float | None  # CPU running wrk + emulators, whole-core busy
    sut_core_percent: float | None  # CPU running the system under test, whole-core busy
    wrk_cpu_percent: float
    guard_cpu_percent: float
    upstream_cpu_percent: float
    peak_rss_mib: float | None = None
    #: busy % of the pinned CPUs not explained by the processes of the bench: other jobs
    #: on the machine (and softirq work not charged to a process); high values = skewed run
    other_load_cpu_percent: float | None = None
    other_sut_cpu_percent: float | None = None
    idle_before_percent: float | None = None  # busiest pinned CPU just before the run
    attempts: int = 1
    proxy_code: str = ""  # proxy_fingerprint() when the process under test started
    rps_runs: list[float] = field(default_factory=list)  # each round's rps (--repeat)
    #: CPUs (taskset -c) of the system under test; for proxy2 both, so its
    #: other_load_cpu_percent covers both CPUs and other_sut_cpu_percent is None
    sut_cpus: str | None = None
    #: proxy2: per process of the tree (supervisor, workers, ...): pid, cmd, CPU %, peak RSS
    sut_processes: list[dict[str, Any]] = field(default_factory=list)
    round: int = 1  # of --repeat
    #: the c=32 slices this row merges (``merge_slices``): rps, seconds, CPU per request
    slices: list[dict[str, float]] = field(default_factory=list)
    #: proxy-audit: what its trail holds after the run (``audit_round``)
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def disturbance(self) -> float:
        return max(self.other_load_cpu_percent or 0.0, self.other_sut_cpu_percent or 0.0)
    errors: list[str] = field(default_factory=list)
    wrk: dict[str, float] = field(default_factory=dict)


GUARD_PATHS = ("/v1/chat/completions", "/generate")
UPSTREAM_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")


def measure(env: Env, port: int, system: System, *, mode: Mode, connections: int,
            seconds: float, warmup: float, sut: Server | None) -> Row:
    """Warm-up, then a measured wrk run, with counters and CPU times around it.

    A run during which other processes took more than OTHER_CPU_WARN percent of a pinned
    CPU is repeated (``--retries``); the least disturbed attempt is kept."""
    wait_quiet(env.pinning, limit_s=env.args.quiet_wait)
    non_2xx = 0  # over every run against this process (a mix: the prompts it blocked)
    if warmup > 0:
        warm = run_wrk(port, connections=connections, seconds=warmup, mode=mode,
                       cpu=env.pinning.load, script=env.script(mode))
        if warm.errors:
            raise BenchError(f"{system.key} warm-up: {', '.join(warm.errors)}")
        non_2xx += warm.non_2xx
    best: Row | None = None
    errors: list[str] = []
    for attempt in range(1, env.args.retries + 2):
        row = measured_run(env, port, system, mode=mode, connections=connections,
                           seconds=seconds, sut=sut)
        row.attempts = attempt
        errors += row.errors
        non_2xx += int(row.wrk["non_2xx"])
        if best is None or row.disturbance < best.disturbance:
            best = row
        if row.disturbance <= OTHER_CPU_WARN:
            break
        print(f"#   {system.key}: {row.disturbance:.0f} % of a pinned CPU went to other "
              f"processes, measuring again", file=sys.stderr)
    assert best is not None
    best.errors = errors
    best.wrk["non_2xx_all_runs"] = non_2xx
    return best


def measured_run(env: Env, port: int, system: System, *, mode: Mode, connections: int,
                 seconds: float, sut: Server | None) -> Row:
    idle_before = wait_quiet(env.pinning, limit_s=env.args.quiet_wait)
    time.sleep(0.2)  # let stragglers of the warm-up finish before the counters are read
    procs = {"guard": env.guard.pid, "upstream": env.upstream.pid}
    tree: list[int] = []  # proxy2: the supervisor's children (workers), counted as the SUT
    if sut is not None:
        procs["sut"] = sut.pid
        tree = sut.children() if system.workers > 1 else []
    g0, u0 = counters(env.guard.port), counters(env.upstream.port)
    cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    tree0 = {pid: cpu_seconds(pid) for pid in tree}
    stat0 = cpu_times()
    result = run_wrk(port, connections=connections, seconds=seconds, mode=mode,
                     cpu=env.pinning.load, script=env.script(mode))
    stat1 = cpu_times()
    cpu1 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    tree1 = {pid: cpu_seconds(pid) for pid in tree}
    time.sleep(0.2)
    g1, u1 = counters(env.guard.port), counters(env.upstream.port)
    if sut is not None:
        sut.alive()
    n = max(result.requests, 1)
    wall = result.seconds or seconds

    def pct(name: str) -> float:
        return 100.0 * (cpu1[name] - cpu0[name]) / wall if name in cpu1 else 0.0

    if tree and sut is not None:  # the supervisor's own CPU (next to nothing) plus every worker's
        tree0[sut.pid], tree1[sut.pid] = cpu0["sut"], cpu1["sut"]
        cpu0["sut"], cpu1["sut"] = sum(tree0.values()), sum(tree1.values())
    sut_cpu = cpu1["sut"] - cpu0["sut"] if "sut" in cpu1 else 0.0
    load_busy = busy_percent(stat0, stat1, env.pinning.load)
    sut_busy = busy_percent(stat0, stat1, env.pinning.sut)
    wrk_pct = 100.0 * result.cpu_s / wall
    bench_load = wrk_pct + pct("guard") + pct("upstream")
    other_load = None if load_busy is None else load_busy - bench_load
    other_sut = None if sut_busy is None else sut_busy - pct("sut")
    processes: list[dict[str, Any]] = []
    if tree and sut is not None:
        # the workers share CPU 0 with the load: only both CPUs together can be accounted
        other_load = None if load_busy is None or sut_busy is None \
            else load_busy + sut_busy - bench_load - pct("sut")
        other_sut = None
        processes = [{"pid": pid, "role": "supervisor" if pid == sut.pid else "child",
                      "cmd": _cmdline(pid),
                      "cpu_percent": 100.0 * (tree1[pid] - tree0[pid]) / wall,
                      "peak_rss_mib": peak_rss_kib(pid) / 1024} for pid in [sut.pid, *tree]]
    peak_rss = None
    if sut is not None:
        # proxy2: the sum over the supervisor's children (the supervisor itself is in
        # sut_processes)
        peak_rss = sum(peak_rss_kib(pid) for pid in tree) / 1024 if tree \
            else peak_rss_kib(sut.pid) / 1024
    return Row(
        system=system.key, label=system.label, mode=mode.key, api=mode.api,
        stream=mode.stream, connections=connections,
        rps=result.rps, p50_ms=result.p50_ms, p99_ms=result.p99_ms, requests=result.requests,
        guard_calls_per_request=calls(g0, g1, GUARD_PATHS) / n,
        upstream_calls_per_request=calls(u0, u1, UPSTREAM_PATHS) / n,
        sut_cpu_percent=pct("sut"), sut_cpu_ms_per_request=1000 * sut_cpu / n,
        load_cpu_percent=load_busy, sut_core_percent=sut_busy, wrk_cpu_percent=wrk_pct,
        guard_cpu_percent=pct("guard"), upstream_cpu_percent=pct("upstream"),
        peak_rss_mib=peak_rss, other_load_cpu_percent=other_load,
        other_sut_cpu_percent=other_sut,
        sut_cpus=(env.pinning.both if system.workers > 1 else env.pinning.sut)
        if sut is not None else env.pinning.load, sut_processes=processes,
        idle_before_percent=idle_before,
        errors=result.errors,
        wrk={"p75_ms": result.p75_ms, "p90_ms": result.p90_ms, "seconds": result.seconds,
             **{f"socket_{k}": v for k, v in result.socket_errors.items()},
             "non_2xx": result.non_2xx},
    )


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return "?"


# -- report ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def throughput_table(rows: list[Row], ratios: dict[str, dict[str, float]]) -> str:
    out = ["| system | mode | rps | p50 | p99 | guard calls/req | upstream calls/req | "
           "SUT CPU/req | SUT CPU | load CPU busy | peak RSS | proxy/base 1-hop | "
           "proxy/base 2-hop | 2 workers/1 |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
           "| ---: | ---: |"]
    for r in rows:
        ratio = ratios.get(r.mode, {}) if r.system == "proxy" else {}
        scaling = ratios.get(r.mode, {}).get("proxy2/proxy") if r.system == "proxy2" else None
        out.append(
            f"| {r.label} | {MODE[r.mode].label} | {_rps(r)} | {r.p50_ms:.2f} ms | "
            f"{r.p99_ms:.2f} ms | "
            f"{r.guard_calls_per_request:.2f} | {r.upstream_calls_per_request:.2f} | "
            f"{r.sut_cpu_ms_per_request:.3f} ms | {r.sut_cpu_percent:.0f} % | "
            f"{fmt(r.load_cpu_percent, '.0f', ' %')} | {fmt(r.peak_rss_mib, '.1f', ' MiB')} | "
            f"{fmt(ratio.get('baseline1'), '.2f')} | {fmt(ratio.get('baseline2'), '.2f')} | "
            f"{fmt(scaling, '.2f')} |")
    return "\n".join(out)


def _rps(row: Row) -> str:
    if len(row.rps_runs) < 2:
        return f"{row.rps:,.0f}"
    return f"{row.rps:,.0f} ({min(row.rps_runs):,.0f}..{max(row.rps_runs):,.0f})"


def latency_table(latency: dict[str, Any]) -> str:
    out = ["| mode | upstream direct p50 | guard direct p50 | guard calls/req | "
           "baseline 1-hop p50 | baseline 2-hop p50 | guardproxy p50 | guardproxy p99 | "
           "proxy added p50 |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, m in latency.items():
        out.append(
            f"| {MODE[mode].label} | {m['upstream_p50_ms']:.3f} ms | {m['guard_p50_ms']:.3f} ms | "
            f"{m['guard_calls_per_request']:.2f} | {fmt(m.get('baseline1_p50_ms'), '.3f', ' ms')}"
            f" | {fmt(m.get('baseline2_p50_ms'), '.3f', ' ms')} | {m['proxy_p50_ms']:.3f} ms | "
            f"{m['proxy_p99_ms']:.3f} ms | {m['added_p50_ms']:.3f} ms |")
    return "\n".join(out)


def proxy_fingerprint() -> str:
    """A digest of proxy/**/*.py: other people edit the proxy, maybe during a run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_state() -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "dirty_paths": git("status", "--porcelain", "--", "proxy").splitlines()}


# -- main --------------------------------------------------------------------------------


def default_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 s measured, 1 s warm-up (overrides both)")
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="upstream time to 1st token")
    parser.add_argument("--token-ms", type=float, default=0.0, help="upstream time per token")
    parser.add_argument("--guard-ms", type=float, default=0.0, help="guard latency per verdict")
    parser.add_argument("--guard-api", choices=("chat", "generate"), default="chat",
                        help="guardproxy's guard.api (the baseline always uses chat)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="seconds to wait, before each run, for the pinned CPUs to idle")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-measure a run disturbed by other processes up to this often")
    parser.add_argument("--baseline-loop", choices=("auto", "uvloop", "asyncio"),
                        default="auto", help="the baseline's event loop (auto: uvloop when "
                        "installed, as guardproxy does)")
    parser.add_argument("--slices", type=int, default=3,
                        help="c=32 runs of a round, per system, interleaved: each of "
                        "--duration / --slices seconds (see bench/README.md, Noise)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all runs; rows report medians (and the rps range)")
    parser.add_argument("--systems", default="baseline1,baseline2,proxy,proxy2",
                        help="comma-separated subset of baseline1, baseline2, proxy, proxy2 "
                        "(guardproxy serve --workers 2, on both CPUs), and floor (not by "
                        "default: guardproxy's I/O alone, bench/floor.py, whole chat only)")
    parser.add_argument("--modes", default=",".join(m.key for m in MODES if not m.mix),
                        help="comma-separated subset of non-stream, stream (chat completions), "
                        "responses, responses-stream (/v1/responses), messages, "
                        "messages-stream (/v1/messages); the other APIs run on baseline1 and "
                        "proxy only; audit (not in the default): non-streamed chat with every "
                        f"{BLOCKED_EVERY}th prompt blocked, on guardproxy with its audit trail "
                        "off and on (whatever --systems says), at --connections only")
    parser.add_argument("--no-latency", action="store_true", help="skip the c=1 runs")
    parser.add_argument("--python", default=default_python(),
                        help="interpreter for the servers (default: the repo's .venv)")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    args = parser.parse_args(argv)
    unknown = set(args.systems.split(",")) - {s.key for s in SYSTEMS}
    if unknown:
        parser.error(f"unknown --systems {', '.join(sorted(unknown))}")
    unknown = set(args.modes.split(",")) - set(MODE)
    if unknown:
        parser.error(f"unknown --modes {', '.join(sorted(unknown))}")
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    if args.slices < 1 or args.duration / args.slices < 1:
        parser.error("--slices must be at least 1 and leave at least 1 s per slice")
    return args


@contextlib.contextmanager
def emulators(args: argparse.Namespace, pinning: Pinning, logs: Path) -> Iterator[Env]:
    fast = [args.python, str(BENCH / "fast_servers.py")]
    up_port, guard_port = free_port(), free_port()
    upstream = start_server("upstream", pinned(pinning.load, [
        *fast, "upstream", "--port", str(up_port), "--chunks", str(args.chunks),
        "--ttft-ms", str(args.ttft_ms), "--token-ms", str(args.token_ms)]),
        up_port, "/v1/models", logs)
    try:
        guard = start_server("guard", pinned(pinning.load, [
            *fast, "guard", "--port", str(guard_port), "--guard-ms", str(args.guard_ms)]),
            guard_port, "/health", logs)
        try:
            yield Env(args=args, pinning=pinning, logs=logs, upstream=upstream, guard=guard)
        finally:
            guard.stop()
    finally:
        upstream.stop()


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found on PATH")
    pinning = plan_pinning()
    print(f"# pinning: {pinning.note}", file=sys.stderr)
    if pinning.load is not None:
        os.sched_setaffinity(0, {int(pinning.load)})  # this harness stays off the SUT's CPU
    started = time.time()
    git_before = git_state()
    uvloop = subprocess.run([args.python, "-c", "import uvloop"], capture_output=True,
                            check=False).returncode == 0
    python_facts = interpreter(args.python)
    rows: list[Row] = []
    c1: list[Row] = []
    direct_runs: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="guardproxy-bench-") as tmp, \
            emulators(args, pinning, Path(tmp)) as env:
        modes = [m for m in MODES if m.key in args.modes.split(",")]
        first = next((m for m in modes if not m.mix), None)  # runs the guard directly
        for repeat in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"# round {repeat} of {args.repeat}", file=sys.stderr)
            for mode in modes:
                if mode.mix:
                    audit_round(env, mode, rows, repeat)
                else:
                    one_round(env, mode, rows, c1, direct_runs, guard=mode == first,
                              round_=repeat)
    codes = sorted({r.proxy_code for r in [*rows, *c1]})
    audit, audit_errors = audit_report(rows, args.connections)
    runs = rows
    rows, c1 = combine(rows), combine(c1)
    direct = {f"{r.system}/{r.mode}": r for r in combine(direct_runs)}
    ratios = _ratios(runs, rows)
    by_round = {mode: {base: round_ratios(runs, mode, base) for base in bases
                       if base.startswith("baseline")} for mode, bases in ratios.items()}
    apis = _apis(rows, ratios)
    latency = _latency(c1, direct)
    errors = [f"{r.system} {r.mode} c={r.connections}: {e}"
              for r in [*rows, *c1, *direct.values()] for e in r.errors] + audit_errors
    warnings = [
        f"{r.system} {r.mode} c={r.connections}: "
        f"{other:.0f} % of the {where} CPU went to processes outside the bench"
        for r in [*rows, *c1, *direct.values()]
        for where, other in (("load", r.other_load_cpu_percent),
                             ("SUT", r.other_sut_cpu_percent))
        if other is not None and other > OTHER_CPU_WARN]
    git_after = git_state()
    if len(codes) > 1 or git_after != git_before:
        warnings.append(f"proxy/ changed during the run (git {git_before['commit'][:8]} -> "
                        f"{git_after['commit'][:8]}, proxy/**/*.py digests {', '.join(codes)}): "
                        "rows may measure different code")
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "pinning": asdict(pinning),
        "machine": {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "python": args.python,
                    "interpreter": python_facts, "wrk": _wrk_version()},
        "git": {"before": git_before, "after": git_after},
        "event_loop": {"uvloop_installed": uvloop, "baseline": args.baseline_loop,
                       "guardproxy": "uvloop when installed (proxy/cli.py)"},
        "throughput": [asdict(r) for r in rows],
        "ratios": ratios,
        "round_ratios": by_round,
        "apis": apis,
        "audit": audit,
        "latency_c1": latency,
        "latency_c1_runs": [asdict(r) for r in [*c1, *direct.values()]],
        "errors": errors,
        "warnings": warnings,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{pinning.note}; wrk -t1 -c{args.connections}, {args.warmup:g} s warm-up, "
          f"{args.duration:g} s measured; streams (every API) of {args.chunks} chunks "
          f"(ttft {args.ttft_ms:g} ms, {args.token_ms:g} ms/token); guard {args.guard_ms:g} ms, "
          f"guardproxy guard.api {args.guard_api}; uvloop "
          f"{'installed' if uvloop else 'not installed'}, baseline loop {args.baseline_loop}; "
          f"proxy/ at {git_before['commit'][:8]}"
          f"{' + uncommitted changes' if git_before['dirty_paths'] else ''}; "
          f"{interpreter_note(python_facts)}\n")
    print(throughput_table(rows, ratios))
    if args.repeat > 1:
        print("\nRound by round, guardproxy / baseline (the table's ratio is their median): "
              + "; ".join(f"{mode} vs {base}: " + ", ".join(f"{x:.2f}" for x in values)
                          for mode, bases in by_round.items() for base, values in bases.items()
                          if values))
    scaling = {mode: r["proxy2/proxy"] for mode, r in ratios.items() if "proxy2/proxy" in r}
    if scaling:
        print(f"\nWorker scaling (proxy2 rps / proxy rps; proxy2's 2 workers run on CPUs "
              f"{pinning.both or 'unpinned'}, sharing CPU {pinning.load or '-'} with wrk and the "
              "emulators, so 2.0 is out of reach): "
              + ", ".join(f"{mode} {value:.2f}" for mode, value in scaling.items()))
    if any(key.startswith("proxy/baseline1 ") and " chat " not in key for key in apis):
        print("\n" + apis_line(apis))
    if audit:
        print(f"\nAudit trail cost (`audit`: non-streamed chat, every {BLOCKED_EVERY}th prompt "
              "blocked, guardproxy with its trail off and on, SQLite; each round both, in fresh "
              "processes):\n")
        print(audit_table(audit))
        print(f"\naudit on/off: {audit['ratio_median_of_rounds']:.3f} (median of the rounds; "
              f"of the median rps {audit['ratio_of_median_rps']:.3f}), target >= "
              f"{AUDIT_TARGET:.2f}: {'met' if audit['met'] else 'MISSED'}")
    if latency:
        print("\nUnloaded latency (wrk -t1 -c1); proxy added p50 = guardproxy p50 - "
              "(guard calls/req * guard p50 + upstream p50)\n")
        print(latency_table(latency))
    if warnings:
        print("\nWARNINGS (figures of these runs are skewed):\n"
              + "\n".join(f"- {w}" for w in warnings))
    print(f"\nJSON: {args.output}")
    if errors:
        print("\nFAILED:\n" + "\n".join(f"- {e}" for e in errors), file=sys.stderr)
        return 1
    return 0


def slice_order(systems: list[System], slices: int, round_: int) -> list[System]:
    """The c=32 runs of one round: every system ``slices`` times, forwards then backwards
    (A B, B A, A B, ...), starting backwards on even rounds, so that a drift of the
    machine over the round falls on every system alike."""
    order = systems if round_ % 2 else systems[::-1]
    return [s for i in range(slices) for s in (order if i % 2 == 0 else order[::-1])]


def one_round(env: Env, mode: Mode, rows: list[Row], c1: list[Row], direct: list[Row],
              *, guard: bool, round_: int = 1) -> None:
    """Every system in one mode, each in a fresh process, all up at once; their c=32 runs
    interleaved in ``--slices`` slices (``slice_order``), then each one's c=1 run; then
    the direct c=1 runs (the guard's only with ``guard``: its answer does not depend on
    the mode).  ``/v1/responses`` and ``/v1/messages`` are not run on proxy2 nor on the
    2-hop baseline: worker scaling and a second guard hop do not depend on the API."""
    args = env.args
    systems = [s for s in SYSTEMS if s.key in args.systems.split(",")
               and (mode.api == "chat" or s.key in CHAT_ONLY)
               and (s.key != "floor" or not mode.stream)]  # whole chat answers only
    servers: dict[str, tuple[Server, str]] = {}
    try:
        for system in systems:
            code = proxy_fingerprint()
            servers[system.key] = env.start(system), code
            sanity(servers[system.key][0], system.key, mode, chunks=args.chunks)
        parts: dict[str, list[Row]] = {system.key: [] for system in systems}
        for system in slice_order(systems, args.slices, round_):
            server = servers[system.key][0]
            print(f"# {system.key} {mode.key}: c={args.connections}, slice "
                  f"{len(parts[system.key]) + 1} of {args.slices} …", file=sys.stderr)
            parts[system.key].append(measure(
                env, server.port, system, mode=mode, connections=args.connections,
                seconds=args.duration / args.slices, sut=server,
                warmup=0.0 if parts[system.key] else args.warmup))
        for system in systems:
            row = merge_slices(parts[system.key])
            row.proxy_code, row.round = servers[system.key][1], round_
            rows.append(row)
            _progress(row)
        # proxy2 at c=1: one connection reaches one worker, as for proxy; skipped
        for system in [] if args.no_latency else [s for s in systems if s.workers == 1]:
            server, code = servers[system.key]
            row = measure(env, server.port, system, mode=mode, connections=1,
                          seconds=args.duration, warmup=min(args.warmup, 1.0), sut=server)
            row.proxy_code, row.round = code, round_
            c1.append(row)
            _progress(row)
    finally:
        for server, _ in servers.values():
            server.stop()
    if args.no_latency:
        return
    for name, port in (("upstream", env.upstream.port), ("guard", env.guard.port)):
        if name == "guard" and not guard:
            continue
        # the guard speaks chat whatever the mode: it is sent a chat request
        load = mode if name == "upstream" else replace(MODE["non-stream"], key=mode.key)
        row = measure(env, port, System(name, f"{name} direct"), mode=load,
                      connections=1, seconds=args.duration, warmup=min(args.warmup, 1.0),
                      sut=None)
        direct.append(row)
        _progress(row)


def _weighted(parts: list[Row], field_: str, weights: list[float]) -> float | None:
    values = [(getattr(r, field_), w) for r, w in zip(parts, weights, strict=True)
              if getattr(r, field_) is not None]
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if values and total else None


def merge_slices(parts: list[Row]) -> Row:
    """One system's slices of one round as one run: rps, the requests and the CPU per
    request over all of them (time- and request-weighted), the slices' median p50, p99,
    p75 and p90 (wrk reports no histogram to merge), the largest peak RSS and
    disturbance, every error."""
    if len(parts) == 1:
        return parts[0]
    seconds = [r.wrk["seconds"] or r.requests / max(r.rps, 1e-9) for r in parts]
    requests = [float(r.requests) for r in parts]
    merged = replace(parts[-1], rps=sum(requests) / sum(seconds), requests=int(sum(requests)),
                     p50_ms=statistics.median(r.p50_ms for r in parts),
                     p99_ms=statistics.median(r.p99_ms for r in parts),
                     attempts=max(r.attempts for r in parts),
                     errors=[e for r in parts for e in r.errors])
    for name in ("guard_calls_per_request", "upstream_calls_per_request",
                 "sut_cpu_ms_per_request"):
        setattr(merged, name, _weighted(parts, name, requests))
    for name in ("sut_cpu_percent", "load_cpu_percent", "sut_core_percent", "wrk_cpu_percent",
                 "guard_cpu_percent", "upstream_cpu_percent"):
        setattr(merged, name, _weighted(parts, name, seconds))
    for name in ("peak_rss_mib", "other_load_cpu_percent", "other_sut_cpu_percent",
                 "idle_before_percent"):
        values = [getattr(r, name) for r in parts if getattr(r, name) is not None]
        setattr(merged, name, max(values) if values else None)
    merged.wrk = {**{key: statistics.median(r.wrk[key] for r in parts)
                     for key in ("p75_ms", "p90_ms")},
                  **{key: sum(r.wrk.get(key, 0) for r in parts)
                     for key in {k for r in parts for k in r.wrk} - {"p75_ms", "p90_ms"}}}
    merged.slices = [{"rps": r.rps, "seconds": s, "sut_cpu_ms_per_request":
                      r.sut_cpu_ms_per_request} for r, s in zip(parts, seconds, strict=True)]
    return merged


def audit_round(env: Env, mode: Mode, rows: list[Row], round_: int) -> None:
    """The audit trail's cost: the mix on guardproxy with its trail off and on, each in a
    fresh process, at --connections only (no c=1 runs).  The order alternates over the
    rounds, so a drift of the machine favours neither.  After the run with the trail on,
    what it holds: the decisions in its SQLite file (read once the proxy stopped, which
    writes what is queued first), the written and dropped counts of its /metrics."""
    args = env.args
    for system in (AUDIT_OFF, AUDIT_ON) if round_ % 2 else (AUDIT_ON, AUDIT_OFF):
        code = proxy_fingerprint()
        verdicts = unsafe_verdicts(env.guard.port)
        server = env.start(system, mode)
        metrics: dict[str, Any] = {}
        try:
            sanity(server, system.key, mode, chunks=args.chunks)
            blocked_sanity(server, system.key, mode)
            print(f"# {system.key} {mode.key}: c={args.connections} …", file=sys.stderr)
            row = measure(env, server.port, system, mode=mode,
                          connections=args.connections, seconds=args.duration,
                          warmup=args.warmup, sut=server)
            if system.audit:
                time.sleep(0.5)  # the writer's last batch
                metrics = audit_metrics(server)
        finally:
            server.stop()
        row.proxy_code, row.round = code, round_
        if system.audit and server.audit_db is not None:
            row.audit = {
                # the prompts the guard judged unsafe while this process ran: its blocks
                "unsafe_verdicts": unsafe_verdicts(env.guard.port) - verdicts,
                # the blocked sanity request, then every refusal wrk received (a refusal
                # still in flight when a wrk run ends is blocked but not received)
                "blocked_answers": 1 + int(row.wrk["non_2xx_all_runs"]),
                **audit_trail(server.audit_db), **metrics}
        rows.append(row)
        _progress(row)
        if row.audit:
            print(f"#   trail: {row.audit['decisions']} decisions written "
                  f"({row.audit['blocks']} prompt blocks for {row.audit['unsafe_verdicts']} "
                  f"unsafe verdicts, {row.audit['client_gone']} clients gone at run ends), "
                  f"dropped {fmt(row.audit.get('dropped'))}", file=sys.stderr)


def unsafe_verdicts(port: int) -> int:
    """The fast guard's count of verdicts that began "Unsafe"."""
    status, _, body = http_request(port, "GET", "/stats")
    if status != 200:
        raise BenchError(f"GET /stats on port {port} answered {status}")
    count: int = json.loads(body)["unsafe_verdicts"]
    return count


def audit_metrics(server: Server) -> dict[str, Any]:
    """``guardproxy_audit_written_total`` and ``guardproxy_audit_dropped_total`` (every
    reason) from the admin listener's /metrics; empty when it cannot be read."""
    if server.admin_port is None:
        return {}
    try:
        status, _, body = http_request(server.admin_port, "GET", "/metrics")
    except (OSError, http.client.HTTPException) as exc:
        return {"metrics_error": repr(exc)}
    if status != 200:
        return {"metrics_error": f"HTTP {status}"}
    written, dropped = 0.0, 0.0
    reasons: dict[str, float] = {}
    for line in body.decode().splitlines():
        match = re.fullmatch(r"(guardproxy_audit_(?:written|dropped)_total)(\{[^}]*\})? (\S+)",
                             line)
        if match is None:
            continue
        value = float(match.group(3))
        if "written" in match.group(1):
            written += value
        else:
            dropped += value
            reason = re.search(r'reason="([^"]*)"', match.group(2) or "")
            reasons[reason.group(1) if reason else ""] = value
    return {"metrics_written": written, "dropped": dropped, "dropped_by_reason": reasons}


#: a mix's blocked prompt, as the trail records it (stage action severity status); its
#: client may have gone before the answer (499) at the end of a wrk run
BLOCK_KINDS = ("prompt block unsafe 400", "prompt block unsafe 499")
#: a request whose client went away before its prompt was judged: wrk closes its
#: connections at the end of a run with requests in flight (HTTP 499, no check recorded)
GONE_KIND = "request rejected - 499"


def audit_trail(db: Path) -> dict[str, Any]:
    """What the trail's SQLite file holds: its decisions, by stage, action, severity and
    status."""
    if not db.exists():
        return {"decisions": 0, "by_kind": {}, "trail_error": f"{db} does not exist"}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        kinds = conn.execute("SELECT stage, action, severity, status, COUNT(*) FROM decisions "
                             "GROUP BY stage, action, severity, status").fetchall()
    by_kind = {f"{stage} {action} {severity or '-'} {status}": n
               for stage, action, severity, status, n in kinds}
    return {"decisions": sum(by_kind.values()),
            "blocks": sum(by_kind.get(kind, 0) for kind in BLOCK_KINDS),
            "client_gone": by_kind.get(GONE_KIND, 0), "by_kind": by_kind}


def audit_report(runs: list[Row], connections: int) -> tuple[dict[str, Any], list[str]]:
    """Each round's rps with the audit trail off and on, their ratio, and what the trail
    holds; the errors of a trail that lost or misrecorded decisions (it would look cheap)."""
    rounds, errors = [], []
    for number in sorted({r.round for r in runs if MODE[r.mode].mix}):
        by = {r.system: r for r in runs if MODE[r.mode].mix and r.round == number}
        off, on = by.get(AUDIT_OFF.key), by.get(AUDIT_ON.key)
        if off is None or on is None:
            continue
        trail = on.audit
        rounds.append({
            "round": number, "order": "off, on" if number % 2 else "on, off",
            "rps_off": off.rps, "rps_on": on.rps, "ratio": on.rps / off.rps if off.rps else 0.0,
            "sut_cpu_ms_per_request_off": off.sut_cpu_ms_per_request,
            "sut_cpu_ms_per_request_on": on.sut_cpu_ms_per_request, **trail})
        where = f"proxy-audit round {number}"
        # every prompt the guard judged unsafe is a block in the trail, unless its client
        # went away while the guard judged it: a wrk run's end (warm-up and measured run)
        # cuts at most one request per connection, and a request that ends unanswered is
        # no decision
        blocks, cut = trail.get("blocks", 0), 2 * connections
        if not blocks <= trail.get("unsafe_verdicts", -1) <= blocks + cut:
            errors.append(f"{where}: {blocks} prompt blocks in the trail for "
                          f"{trail.get('unsafe_verdicts')} prompts the guard judged unsafe "
                          f"(at most {cut} may have been cut by wrk's ends)")
        others = {k: n for k, n in trail.get("by_kind", {}).items()
                  if k not in BLOCK_KINDS}  # a client that left is no decision
        if others:
            errors.append(f"{where}: decisions other than prompt blocks: {others}")
        if trail.get("dropped") is None:
            errors.append(f"{where}: no audit counts from /metrics "
                          f"({trail.get('metrics_error', 'not found')})")
        elif trail["dropped"]:
            errors.append(f"{where}: the trail dropped {trail['dropped']:.0f} decisions "
                          f"{trail.get('dropped_by_reason')}")
        for key in ("trail_error",):
            if key in trail:
                errors.append(f"{where}: {trail[key]}")
    if not rounds:
        return {}, errors
    off = statistics.median(r["rps_off"] for r in rounds)
    on = statistics.median(r["rps_on"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    return {"target": AUDIT_TARGET, "ratio_median_of_rounds": ratio,
            "ratio_of_median_rps": on / off if off else 0.0,
            "met": ratio >= AUDIT_TARGET, "rounds": rounds}, errors


def audit_table(audit: dict[str, Any]) -> str:
    out = ["| round | order | rps audit off | rps audit on | on/off | SUT CPU/req off | "
           "SUT CPU/req on | unsafe verdicts (guard) | blocks in SQLite | blocked answers (wrk) "
           "| client gone (499) in SQLite | written (/metrics) | dropped (/metrics) |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
           "| ---: |"]
    for r in audit["rounds"]:
        out.append(
            f"| {r['round']} | {r['order']} | {r['rps_off']:,.0f} | {r['rps_on']:,.0f} | "
            f"{r['ratio']:.3f} | {r['sut_cpu_ms_per_request_off']:.3f} ms | "
            f"{r['sut_cpu_ms_per_request_on']:.3f} ms | {r.get('unsafe_verdicts', '-')} | "
            f"{r.get('blocks', '-')} | {r.get('blocked_answers', '-')} | "
            f"{r.get('client_gone', '-')} | "
            f"{fmt(r.get('metrics_written'))} | {fmt(r.get('dropped'))} |")
    rounds = audit["rounds"]
    if len(rounds) > 1:
        out.append(
            f"| median | | {statistics.median(r['rps_off'] for r in rounds):,.0f} | "
            f"{statistics.median(r['rps_on'] for r in rounds):,.0f} | "
            f"{audit['ratio_median_of_rounds']:.3f} | "
            f"{statistics.median(r['sut_cpu_ms_per_request_off'] for r in rounds):.3f} ms | "
            f"{statistics.median(r['sut_cpu_ms_per_request_on'] for r in rounds):.3f} ms | "
            f"| | | | | |")
    return "\n".join(out)


def combine(runs: list[Row]) -> list[Row]:
    """One row per (system, mode, connections) over ``--repeat`` rounds: medians of rps,
    p50, p99 and CPU per request, the largest peak RSS, all errors, every round's rps."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in runs:
        groups.setdefault((row.system, row.mode, row.connections), []).append(row)
    out = []
    for group in groups.values():
        middle = statistics.median(r.rps for r in group)
        rss = [r.peak_rss_mib for r in group if r.peak_rss_mib is not None]
        out.append(replace(
            min(group, key=lambda r: abs(r.rps - middle)), rps=middle,
            rps_runs=[r.rps for r in group],
            p50_ms=statistics.median(r.p50_ms for r in group),
            p99_ms=statistics.median(r.p99_ms for r in group),
            sut_cpu_ms_per_request=statistics.median(r.sut_cpu_ms_per_request for r in group),
            peak_rss_mib=max(rss) if rss else None,
            errors=[e for r in group for e in r.errors]))
    return out


def _progress(row: Row) -> None:
    print(f"#   {row.system} {row.mode} c={row.connections}: "
          f"{row.rps:,.0f} rps, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, "
          f"other CPU load/SUT {fmt(row.other_load_cpu_percent)}/"
          f"{fmt(row.other_sut_cpu_percent)} %"
          + (f"  ERRORS: {', '.join(row.errors)}" if row.errors else ""), file=sys.stderr)


def _ratios(runs: list[Row], rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per mode, guardproxy over each baseline: the median over the rounds of each round's
    ratio (the two measured in the same interleaved slices, ``one_round``), and proxy2
    and proxy-audit over proxy, of the median rps (``rows``, ``combine``d)."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        by = {r.system: r.rps for r in rows if r.mode == mode.key}
        if by.get("proxy"):
            ratios = out[mode.key] = {
                base: statistics.median(pairs) for base in ("baseline1", "baseline2")
                if (pairs := round_ratios(runs, mode.key, base))}
            if "proxy2" in by:  # worker scaling: 2 processes on both CPUs / 1 on one
                ratios["proxy2/proxy"] = by["proxy2"] / by["proxy"]
            if "proxy-audit" in by:  # the audit trail on / off (of the median rps)
                ratios["proxy-audit/proxy"] = by["proxy-audit"] / by["proxy"]
    return out


def round_ratios(runs: list[Row], mode: str, base: str) -> list[float]:
    """Each round's guardproxy rps over ``base``'s, in ``mode`` (``runs``: the rounds' rows
    at --connections, before ``combine``)."""
    by = {(r.system, r.round): r.rps for r in runs if r.mode == mode}
    return [by["proxy", n] / by[base, n] for system, n in sorted(by)
            if system == base and by.get(("proxy", n)) and by[base, n]]


def _apis(rows: list[Row], ratios: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each API beside chat, whole and streamed: each one's guardproxy/baseline 1-hop ratio
    (``proxy/baseline1 <api> <kind>``), and each system's rps for the API over its chat rps
    (``<system> <api>/chat <kind>``; the baseline's should be near 1: the emulators and the
    relay do about the same work for every API)."""
    out: dict[str, float] = {}
    for api in ("chat", *OTHER_APIS):
        for kind, stream in (("whole", False), ("stream", True)):
            mode = _mode_of(api, stream)
            if "baseline1" in ratios.get(mode, {}):
                out[f"proxy/baseline1 {api} {kind}"] = ratios[mode]["baseline1"]
            if api == "chat":
                continue
            for system in ("baseline1", "proxy"):
                by = {r.mode: r.rps for r in rows if r.system == system}
                chat = by.get(_mode_of("chat", stream))
                if chat and mode in by:
                    out[f"{system} {api}/chat {kind}"] = by[mode] / chat
    return out


def apis_line(apis: dict[str, float]) -> str:
    """Each API's ratio to its own 1-hop baseline beside chat's, whole and streamed."""
    parts = []
    for kind in ("whole", "stream"):
        ratios = ", ".join(f"{api} {fmt(apis.get(f'proxy/baseline1 {api} {kind}'), '.2f')}"
                           for api in ("chat", *OTHER_APIS))
        parts.append(f"{kind}: {ratios}")
    return ("APIs, guardproxy / baseline 1-hop of the same API (targets: whole >= 0.60, "
            "stream >= 0.50): " + "; ".join(parts))


def _mode_of(api: str, stream: bool) -> str:
    return next(m.key for m in MODES if m.api == api and m.stream == stream and not m.mix)


def _latency(c1: list[Row], direct: dict[str, Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    guard = next((row for key, row in direct.items() if key.startswith("guard/")), None)
    for mode in MODES:
        by = {r.system: r for r in c1 if r.mode == mode.key}
        upstream, proxy = direct.get(f"upstream/{mode.key}"), by.get("proxy")
        if guard is None or upstream is None or proxy is None:
            continue
        hops = proxy.guard_calls_per_request
        out[mode.key] = {
            "upstream_p50_ms": upstream.p50_ms, "guard_p50_ms": guard.p50_ms,
            "guard_calls_per_request": hops,
            "baseline1_p50_ms": by["baseline1"].p50_ms if "baseline1" in by else None,
            "baseline2_p50_ms": by["baseline2"].p50_ms if "baseline2" in by else None,
            "proxy_p50_ms": proxy.p50_ms, "proxy_p99_ms": proxy.p99_ms,
            "added_p50_ms": proxy.p50_ms - (hops * guard.p50_ms + upstream.p50_ms),
            "added_p50_ms_2_hops": proxy.p50_ms - (2 * guard.p50_ms + upstream.p50_ms),
        }
    return out


#: What the servers' interpreter is and how it was built: every system's rps depends on it
#: (see "Interpreter" in bench/README.md).
_INTERPRETER_PROBE = """
import json, sys, sysconfig
config = sysconfig.get_config_var("CONFIG_ARGS") or ""
with open("/proc/self/maps") as maps:
    shared = any("libpython" in line for line in maps)
print(json.dumps({"version": sys.version.split()[0], "base": sys._base_executable,
                  "libpython_shared": shared,
                  "configured_optimizations": "--enable-optimizations" in config,
                  "configured_lto": "--with-lto" in config}))
"""


def interpreter(python: str) -> dict[str, Any]:
    """The servers' interpreter: its version, the executable behind a venv, whether its
    libpython is a shared library in the process, and whether its configure options name
    PGO (``--enable-optimizations``) and LTO (``--with-lto``) (Debian's packages are built
    with both without naming them there)."""
    done = subprocess.run([python, "-c", _INTERPRETER_PROBE], capture_output=True,
                          text=True, check=False)
    try:
        return cast(dict[str, Any], json.loads(done.stdout))
    except ValueError:
        return {"error": (done.stderr or done.stdout).strip()[-300:]}


def interpreter_note(facts: dict[str, Any]) -> str:
    if "error" in facts:
        return f"interpreter unknown ({facts['error']})"
    named = ", ".join(f"{option} {'yes' if facts[key] else 'no'}" for option, key in (
        ("--enable-optimizations", "configured_optimizations"),
        ("--with-lto", "configured_lto")))
    return (f"servers on Python {facts['version']} ({facts['base']}; libpython "
            f"{'shared' if facts['libpython_shared'] else 'in the executable'}; "
            f"configure: {named})")


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
