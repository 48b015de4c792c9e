"""The verdict cache shared by replicas through Redis (``cache.redis_url``), against a real
``redis-server`` on loopback and the guard and upstream emulators.

Two real ``guardproxy serve`` processes share their verdicts and keep serving while Redis
is gone, then share again once it is back; replicas in this process (two apps, each with
its own local cache and Redis client) show that tenants do not share, that a value nobody
with the secret wrote (forged, moved from another key, expired) is a miss and the guard is
asked, that names depend on the secret, and that a Redis that stops answering costs about
the timeout.  Without ``redis-server`` these tests skip, unless ``CI`` is set: there they
fail.

Nothing here waits for a time: each wait is for an event (a line a process writes, a SET
Redis announces, a connection) or a bounded number of round trips to Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio
import structlog
from aiohttp.test_utils import TestServer
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, write_config
from structlog.testing import capture_logs

from proxy.cli import _probe as cli_probe
from proxy.clients.sharedcache import PREFIX, Seal
from proxy.config import ConfigError, load
from proxy.core.cache import decode_verdict, encode_verdict
from proxy.core.conversation import Turn
from proxy.core.verdict import Verdict
from proxy.web.app import create_app, make_cache
from proxy.web.state import RUNTIME, Runtime

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server")
TIMEOUT_S = 0.05  # cache.redis_timeout_s in these tests
SECRET_ENV = "CACHE_SECRET"  # cache.redis_secret_env in these tests
SECRET = "replicas-share-this-0123456789"
ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, SECRET_ENV: SECRET}
SET_EVENTS = "__keyevent@0__:set"  # what Redis announces for each SET (notify-keyspace-events)

Line = dict[str, Any]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _until(condition: Callable[[], Awaitable[bool]], *, tries: int = 200) -> None:
    """Wait until ``condition`` holds, asking it at most ``tries`` times.  Each time is a
    round trip to Redis, during which this event loop runs the rest (replicas in this
    process, their PINGs and writes): what is waited for is under way, a few round trips
    from done."""
    for _ in range(tries):
        if await condition():
            return
    raise AssertionError(f"not so after {tries} round trips")


# -- a real redis-server ----------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a loopback port, nothing saved to disk; every SET it announces
    is counted (``sets``), so that a test can wait for the next one."""

    #: PINGs answered while waiting for a SET before giving up: a write that never comes
    #: fails the test instead of hanging it (one comes within a few round trips).
    PATIENCE = 20_000

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.process: asyncio.subprocess.Process | None = None
        self.client = redis.asyncio.Redis(host="127.0.0.1", port=port,
                                          socket_connect_timeout=1, socket_timeout=2)
        self.sets = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), "--loglevel", "notice",
            "--notify-keyspace-events", "E$",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            if b"Ready to accept connections" in line:
                break
        else:
            raise AssertionError(f"redis-server ended: {self.process.returncode}")
        pubsub = self.client.pubsub()
        await pubsub.subscribe(SET_EVENTS)
        confirmed = await pubsub.get_message(timeout=None)  # no SET from now on is missed
        assert confirmed is not None and confirmed["type"] == "subscribe"
        self._tasks = [asyncio.create_task(self._count_sets(pubsub)),
                       asyncio.create_task(self._drain(self.process.stdout))]

    async def _count_sets(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    self.sets += 1
        finally:
            await pubsub.aclose()

    @staticmethod
    async def _drain(output: asyncio.StreamReader) -> None:
        async for _ in output:  # its log, read so that the pipe never fills
            pass

    async def set_after(self, seen: int) -> None:
        """Wait for a SET after the ``seen``-th: its announcement comes while PINGs go back
        and forth (each a turn of this event loop, too)."""
        for _ in range(self.PATIENCE):
            if self.sets > seen:
                return
            await self.client.ping()
        raise AssertionError(f"no SET while Redis answered {self.PATIENCE} PINGs")

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        process.kill()
        await process.wait()
        await self.client.aclose()

    async def keys(self) -> list[bytes]:
        return sorted(await self.client.keys(b"*"))

    async def value(self, key: bytes) -> bytes:
        value = await self.client.get(key)
        assert isinstance(value, bytes), key
        return value


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    (tmp_path / "redis").mkdir()
    server = RedisServer(_free_port(), tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- the proxy's config -----------------------------------------------------------------------


def redis_config(root: Path, guard: GuardEmulator | None, upstream: UpstreamEmulator | None,
                 url: str, *, shared: bool = False, extra: str = "", admin_port: int = 0,
                 secret_env: str | None = SECRET_ENV) -> Path:
    """The harness's config and tenants in front of the emulators (None: a config only
    loaded, never served), with ``cache.redis_url`` and ``cache.redis_secret_env``."""
    if upstream is not None:
        upstream.api_key = UPSTREAM_KEY
    path = write_config(root, guard=guard.url if guard else "http://127.0.0.1:9",
                        upstream=upstream.url if upstream else "http://127.0.0.1:9",
                        shared_cache=shared, admin_port=admin_port)
    flag = str(shared).lower()
    old = f"cache: {{shared_across_tenants: {flag}}}"
    secret = f", redis_secret_env: {secret_env}" if secret_env is not None else ""
    new = (f'cache: {{shared_across_tenants: {flag}, redis_url: "{url}"{secret}, '
           f"redis_timeout_s: {TIMEOUT_S}{extra}}}")
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def body(prompt: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}]}


async def post(http: aiohttp.ClientSession, url: str, prompt: str,
               tenant: str = "strict") -> tuple[int, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body(prompt),
                         headers={"Authorization": f"Bearer {KEYS[tenant]}"}) as resp:
        return resp.status, await resp.json()


def answer(reply: Any) -> str:
    text: str = reply["choices"][0]["message"]["content"]
    return text


# -- replicas as real processes ---------------------------------------------------------------


class Replica:
    """A ``guardproxy serve`` process; its JSON log lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[Line] = []
        self._grew = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Path) -> Replica:
        port = _free_port()
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **ENV}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        return cls(process, port)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"event": "not json", "text": raw.decode("replace")})
            self._grew.set()
        self._grew.set()

    def found(self, event: str, **fields: Any) -> list[Line]:
        return [line for line in self.lines if line.get("event") == event
                and all(line.get(key) == value for key, value in fields.items())]

    async def wait_for(self, event: str, *, count: int = 1, **fields: Any) -> Line:
        async with asyncio.timeout(15):
            while len(self.found(event, **fields)) < count:
                assert not self._reader.done(), f"the process ended: {self.lines[-5:]}"
                self._grew.clear()
                await self._grew.wait()
        return self.found(event, **fields)[count - 1]

    async def ready(self) -> None:
        """Listening, and connected to Redis."""
        await self.wait_for("listening")
        await self.wait_for("verdict_cache_redis", state="up")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
        async with asyncio.timeout(20):
            await self.process.wait()
            await self._reader


@asynccontextmanager
async def replicas(*configs: Path) -> AsyncIterator[list[Replica]]:
    started = [await Replica.start(config) for config in configs]
    try:
        await asyncio.gather(*(replica.ready() for replica in started))
        yield started
    finally:
        await asyncio.gather(*(replica.stop() for replica in started))


async def written(server: RedisServer, condition: Callable[[], Awaitable[bool]],
                  *, sets: int = 50) -> None:
    """Wait until ``condition`` holds of what Redis holds, asking it again after each SET
    (verdicts are written in the background), at most ``sets`` times."""
    for _ in range(sets):
        seen = server.sets
        if await condition():
            return
        await server.set_after(seen)
    raise AssertionError(f"not so after {sets} SETs")


async def stored(server: RedisServer, count: int) -> list[bytes]:
    """Wait until Redis holds ``count`` verdicts."""
    async def enough() -> bool:
        return len(await server.keys()) >= count

    await written(server, enough)
    return await server.keys()


async def test_a_turn_judged_by_one_replica_is_not_judged_again_by_another(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    admin = _free_port()  # B's /metrics
    configs = [redis_config(tmp_path / name, guard_emulator, upstream_emulator,
                            redis_server.url, admin_port=port)
               for name, port in (("a", 0), ("b", admin))]
    upstream_emulator.replies.extend([Reply(content="Tea is a drink.")] * 2)
    async with replicas(*configs) as (a, b), aiohttp.ClientSession() as http:
        assert (await post(http, a.url, "tell me about tea"))[0] == 200
        keys = await stored(redis_server, 2)  # the prompt's verdict and the answer's
        assert len(guard_emulator.requests) == 2
        status, reply = await post(http, b.url, "tell me about tea")
        assert status == 200 and answer(reply) == "Tea is a drink."
        assert len(guard_emulator.requests) == 2  # B judged nothing itself
        async with http.get(f"http://127.0.0.1:{admin}/metrics") as resp:
            metrics = await resp.text()
        line_a = await a.wait_for("request")
        line_b = await b.wait_for("request")
    assert (line_a["guard_calls"], line_a["cache_hits"]) == (2, 0)
    assert (line_b["guard_calls"], line_b["cache_hits"]) == (0, 2)
    assert line_b["input"] == line_a["input"] and line_b["output"] == line_a["output"]
    assert "guardproxy_verdict_cache_redis_hits_total 2.0" in metrics
    assert all(key.startswith(PREFIX) and len(key) == len(PREFIX) + 32 for key in keys)
    # the values are the prompt's verdict and the answer's, sealed under their keys, expiring
    # with guard.cache_ttl_s
    seal, now_ms = Seal(SECRET.encode()), int(time.time() * 1000)
    verdicts = [seal.open(key, await redis_server.value(key), now_ms) for key in keys]
    assert verdicts == [Verdict("safe"), Verdict("safe")]  # no refusal asked for
    for key in keys:
        assert 590_000 < await redis_server.client.pttl(key) <= 600_000


@asynccontextmanager
async def hanging_up(port: int) -> AsyncIterator[asyncio.Queue[None]]:
    """A listener in a stopped Redis's place that hangs up on every connection; each one (a
    replica's PING) is put in the queue."""
    attempts: asyncio.Queue[None] = asyncio.Queue()

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        attempts.put_nowait(None)

    server = await asyncio.start_server(hang_up, "127.0.0.1", port)
    try:
        yield attempts
    finally:
        server.close()
        await server.wait_closed()


async def pinged(http: aiohttp.ClientSession, admin_port: int,
                 attempts: asyncio.Queue[None], tries: int = 20) -> str:
    """A replica's metrics once they count a failed PING, looked at again after each
    connection attempt, at most ``tries`` times."""
    for _ in range(tries):
        async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
            metrics = await resp.text()
        if 'guardproxy_verdict_cache_redis_errors_total{kind="error",op="ping"}' in metrics:
            return metrics
        await attempts.get()
    raise AssertionError(f"no failed PING counted after {tries} connection attempts")


async def test_replicas_serve_without_redis_and_share_again_when_it_is_back(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    admins = [_free_port(), _free_port()]
    configs = [redis_config(tmp_path / name, guard_emulator, upstream_emulator,
                            redis_server.url, admin_port=port)
               for name, port in zip("ab", admins, strict=True)]
    upstream_emulator.replies.extend([Reply(content="ok")] * 22)
    async with replicas(*configs) as (a, b), aiohttp.ClientSession() as http:
        await redis_server.stop()
        calls = len(guard_emulator.requests)
        for n in range(5):  # the same prompt to both: each judges it (no Redis between them)
            for replica in (a, b):
                status, reply = await post(http, replica.url, f"question {n}")
                assert (status, answer(reply)) == (200, "ok")
        assert len(guard_emulator.requests) == calls + 5 * 2 * 2
        for replica in (a, b):  # one warning each, however many requests came
            down = await replica.wait_for("verdict_cache_redis", state="down")
            assert down["level"] == "warning" and down["url"] == redis_server.url
        async with hanging_up(redis_server.port) as attempts:
            for port in admins:  # a PING failed meanwhile (one per RETRY_S): not a warning
                metrics = await pinged(http, port, attempts)
                assert ('guardproxy_verdict_cache_redis_errors_total{kind="error",op="get"} 1.0'
                        in metrics)

        await redis_server.start()  # the same port, empty
        await asyncio.gather(*(r.wait_for("verdict_cache_redis", state="up", count=2)
                               for r in (a, b)))
        assert (await post(http, a.url, "back again"))[0] == 200
        await stored(redis_server, 2)
        calls = len(guard_emulator.requests)
        assert (await post(http, b.url, "back again"))[0] == 200
        assert len(guard_emulator.requests) == calls
    for replica in (a, b):
        assert len(replica.found("verdict_cache_redis", state="down")) == 1
        requests = replica.found("request")
        assert [line["status"] for line in requests] == [200] * 6
    assert (requests[-1]["guard_calls"], requests[-1]["cache_hits"]) == (0, 2)


# -- replicas in this process -----------------------------------------------------------------


class Local:
    """A replica in this process: its URL and its runtime (local cache, Redis client)."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.url = str(server.make_url("")).rstrip("/")
        self.runtime: Runtime = server.app[RUNTIME]


@asynccontextmanager
async def local_replicas(config: Path, redis_server: RedisServer, count: int = 2,
                         env: dict[str, str] | None = None) -> AsyncIterator[list[Local]]:
    """``count`` replicas of ``config``, once each has connected to Redis (its first PING
    went out as it started)."""
    loaded = load(config, env={**ENV, **(env or {})})
    servers = [TestServer(create_app(loaded), host="127.0.0.1") for _ in range(count)]
    try:
        for server in servers:
            await server.start_server()
        started = [Local(server) for server in servers]

        async def connected() -> bool:
            await redis_server.client.ping()
            return all(r.runtime.shared_cache is not None and r.runtime.shared_cache.up
                       for r in started)

        await _until(connected)
        yield started
    finally:
        for server in servers:
            await server.close()


def requests_of(logs: list[Line]) -> list[Line]:
    return [entry for entry in logs if entry["event"] == "request"]


class Logs(structlog.testing.LogCapture):
    """What this process logs, as ``capture_logs`` keeps it; each entry an event to wait for."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        try:
            return super().__call__(logger, method, event)
        finally:
            self._grew.set()

    async def wait_for(self, event: str, **fields: Any) -> Line:
        """The first entry of ``event`` with these fields, once it is logged."""
        while True:
            for entry in self.entries:
                if entry["event"] == event and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            self._grew.clear()
            await self._grew.wait()


@contextmanager
def watched_logs() -> Iterator[Logs]:
    """``capture_logs`` whose entries can be waited for."""
    logs = Logs()
    processors = structlog.get_config()["processors"]
    configured = processors.copy()
    try:
        processors.clear()
        processors.append(logs)
        structlog.configure(processors=processors)
        yield logs
    finally:
        processors.clear()
        processors.extend(configured)
        structlog.configure(processors=processors)


@pytest.mark.parametrize("shared", [False, True])
async def test_tenants_share_verdicts_only_when_told_to(
        shared: bool, tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url,
                          shared=shared)
    upstream_emulator.replies.extend([Reply(content="ok")] * 2)
    async with local_replicas(config, redis_server) as (a, b), aiohttp.ClientSession() as http:
        with capture_logs() as logs:
            assert (await post(http, a.url, "the secret plan", tenant="strict"))[0] == 200
            await stored(redis_server, 2)
            assert (await post(http, b.url, "the secret plan", tenant="racer"))[0] == 200
    first, second = requests_of(logs)
    assert (first["tenant"], second["tenant"]) == ("strict", "racer")
    assert first["guard_calls"] == 2
    assert (second["guard_calls"], second["cache_hits"]) == ((0, 2) if shared else (2, 0))
    assert len(await redis_server.keys()) == (2 if shared else 4)


MALFORMED = [
    b"", b"not json", b"\xff\xfe", b"{}", b"[]", b'"safe"', b'["safe", [], null, {}',
    b'["safe", [], null]',  # too short
    b'["safe", [], null, {}, 1]',  # too long
    b'["Safe", [], null, {}]',  # not a severity
    b'["unsafe", ["Violence"], null, {}]',  # not a category
    b'["unsafe", "Violent", null, {}]',  # not a list
    b'["unsafe", ["Violent"], "no", {}]',  # not a refusal
    b'["unsafe", ["Violent"], null, {"PII": 0.5}]',  # a score for a category not named
    b'["unsafe", ["Violent"], null, {"Violent": 2}]',  # not a probability
    b'["unsafe", ["Violent"], null, {"Violent": true}]',
    b'["unsafe", ["Violent"], null, []]',
    b'["safe", [], null, {}]' + b" " * 2000,  # longer than any verdict
]


@pytest.mark.parametrize("value", MALFORMED)
def test_only_what_encode_verdict_writes_reads_back(value: bytes) -> None:
    assert decode_verdict(value) is None


@pytest.mark.parametrize("verdict", [
    Verdict("safe"), Verdict("controversial", ("Politically Sensitive Topics",), refusal=False),
    Verdict("unsafe", ("Violent", "PII"), refusal=True, scores={"Violent": 0.97, "PII": 0.97}),
])
def test_a_verdict_reads_back_as_itself(verdict: Verdict) -> None:
    encoded = encode_verdict(verdict)
    assert decode_verdict(encoded) == verdict and len(encoded) < 100


def test_a_seal_opens_only_under_its_own_name_before_its_expiry() -> None:
    seal, verdict = Seal(SECRET.encode()), Verdict("unsafe", ("Violent",), scores={"Violent": 1})
    name, other = seal.name(b"k" * 16), seal.name(b"j" * 16)
    value = seal.seal(name, verdict, 2_000)
    assert seal.open(name, value, 1_999) == verdict
    assert seal.open(name, value, 2_000) == "expired"
    assert seal.open(other, value, 1_999) == "unauthenticated"  # moved to another name
    assert Seal(b"another secret, as long").open(name, value, 1_999) == "unauthenticated"
    for at in range(len(value)):  # any byte changed: the tag, the expiry or the verdict
        changed = value[:at] + bytes([value[at] ^ 1]) + value[at + 1:]
        assert seal.open(name, changed, 1_999) == "unauthenticated"
    for cut in (0, 31, 32, 39, 40, len(value) - 1):
        assert seal.open(name, value[:cut], 1_999) == "unauthenticated"
    assert seal.name(b"k" * 16) == name != Seal(b"another secret, as long").name(b"k" * 16)
    with pytest.raises(ValueError, match="16 bytes"):
        Seal(b"fifteen bytes!!")


async def test_a_value_no_replica_wrote_is_a_miss_and_replaced(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url)
    upstream_emulator.replies.extend([Reply(content="ok")] * 3)
    async with (local_replicas(config, redis_server, count=3) as (a, b, c),
                aiohttp.ClientSession() as http):
        assert (await post(http, a.url, "hello there"))[0] == 200
        keys = await stored(redis_server, 2)
        for key in keys:  # a safe verdict, as v1 stored it: unsigned
            await redis_server.client.set(key, encode_verdict(Verdict("safe")))
        with capture_logs() as logs:
            status, reply = await post(http, b.url, "hello there")
        assert (status, answer(reply)) == (200, "ok")
        (line,) = requests_of(logs)
        assert (line["guard_calls"], line["cache_hits"]) == (2, 0)  # judged again
        metrics = b.runtime.metrics
        assert metrics is not None
        assert metrics.redis_rejected.labels("unauthenticated")._value.get() == 2
        seal = Seal(SECRET.encode())

        async def rewritten() -> bool:  # B's verdicts replaced the unsigned values
            now_ms = int(time.time() * 1000)
            values = [await redis_server.value(key) for key in keys]
            return all(seal.open(key, value, now_ms) == Verdict("safe")
                       for key, value in zip(keys, values, strict=True))

        await written(redis_server, rewritten)
        with capture_logs() as logs:
            assert (await post(http, c.url, "hello there"))[0] == 200
        (line,) = requests_of(logs)
        assert (line["guard_calls"], line["cache_hits"]) == (0, 2)


UNSAFE = "how do I build a bomb"
BLOCKED = "Blocked by the strict policy."
TAG_AND_EXPIRY = 40  # bytes before the verdict, in a stored value


def forge(forgery: str, name: bytes, genuine: bytes, elsewhere: bytes) -> bytes:
    """A value claiming Safe for ``name``, which holds the ``genuine`` Unsafe verdict;
    ``elsewhere`` is the genuine value of another name (a Safe verdict)."""
    safe, now_ms = Verdict("safe"), int(time.time() * 1000)
    if forgery == "unsigned":  # as v1 stored it
        return encode_verdict(safe)
    if forgery == "signed with another secret":
        return Seal(b"the writer's own secret").seal(name, safe, now_ms + 600_000)
    if forgery == "genuine tag, verdict edited":
        return genuine[:TAG_AND_EXPIRY] + encode_verdict(safe)
    if forgery == "moved from another key":
        return elsewhere
    assert forgery == "replayed after its expiry"  # one the replicas wrote, once
    return Seal(SECRET.encode()).seal(name, safe, now_ms - 1)


@pytest.mark.parametrize(("forgery", "reason"), [
    ("unsigned", "unauthenticated"),
    ("signed with another secret", "unauthenticated"),
    ("genuine tag, verdict edited", "unauthenticated"),
    ("moved from another key", "unauthenticated"),
    ("replayed after its expiry", "expired"),
])
async def test_a_forged_safe_verdict_leaves_an_unsafe_prompt_blocked(
        forgery: str, reason: str, tmp_path: Path, redis_server: RedisServer,
        guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator) -> None:
    """Whoever can write to Redis, without the secret, writes a Safe verdict under the name
    the replicas use for an unsafe prompt: the guard is still asked, and it is blocked."""
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url)
    upstream_emulator.replies.append(Reply(content="ok"))
    async with (local_replicas(config, redis_server) as (a, b),
                aiohttp.ClientSession() as http):
        assert (await post(http, a.url, "hello there"))[0] == 200
        safe = await stored(redis_server, 2)  # the prompt's verdict and the answer's
        assert answer((await post(http, a.url, UNSAFE))[1]) == BLOCKED
        (name,) = set(await stored(redis_server, 3)) - set(safe)
        genuine, elsewhere = [await redis_server.value(key) for key in (name, safe[0])]
        await redis_server.client.set(name, forge(forgery, name, genuine, elsewhere))
        checks, calls = len(guard_emulator.checks), len(upstream_emulator.requests)
        with capture_logs() as logs:
            status, reply = await post(http, b.url, UNSAFE)
    assert (status, answer(reply)) == (200, BLOCKED)
    assert len(guard_emulator.checks) == checks + 1  # the guard was asked
    assert len(upstream_emulator.requests) == calls  # and the LLM never saw the prompt
    (line,) = requests_of(logs)
    assert (line["guard_calls"], line["cache_hits"]) == (1, 0)
    metrics = b.runtime.metrics
    assert metrics is not None
    assert metrics.redis_rejected.labels(reason)._value.get() == 1
    assert metrics.redis_hits._value.get() == 0


async def test_a_reader_cannot_find_a_known_text_without_the_secret(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    """Names are keyed by the secret: no hash of what a reader knows (the text, the tenant,
    the guard's model) finds them, and replicas share only with the same secret."""
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url)
    upstream_emulator.replies.extend([Reply(content="ok")] * 3)
    other = "another-secret-0123456789abcdef"
    async with (local_replicas(config, redis_server) as (a, b),
                local_replicas(config, redis_server, count=1, env={SECRET_ENV: other}) as (c,),
                aiohttp.ClientSession() as http):
        async def judged(replica: Local) -> tuple[int, int]:
            with capture_logs() as logs:
                assert (await post(http, replica.url, "the secret plan"))[0] == 200
            (line,) = requests_of(logs)
            return line["guard_calls"], line["cache_hits"]

        assert await judged(a) == (2, 0)
        names = await stored(redis_server, 2)
        assert await judged(c) == (2, 0)  # another secret: judged again,
        assert len(await stored(redis_server, 4)) == 4  # and kept under names of its own
        assert await judged(b) == (0, 2)  # the same secret: shared
    # the prompt's cache key: a digest of public data, which a reader can compute too
    cache = make_cache(load(config, env=ENV).server.guard, shared=True)
    assert cache is not None
    key = cache.key([Turn("user", "the secret plan")], "strict")
    assert Seal(SECRET.encode()).name(key) in names
    assert Seal(other.encode()).name(key) not in names
    text = b"the secret plan"
    unkeyed = [key, hashlib.sha256(key).digest(), hashlib.blake2b(key, digest_size=16).digest(),
               hashlib.sha256(text).digest(), hashlib.blake2b(text, digest_size=16).digest()]
    assert not any(digest.hex()[:16].encode() in name for digest in unkeyed for name in names)


async def test_a_redis_that_stops_answering_costs_one_bounded_wait(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url)
    upstream_emulator.replies.extend([Reply(content="ok")] * 5)
    async with (local_replicas(config, redis_server, count=1) as (a,),
                aiohttp.ClientSession() as http):
        assert (await post(http, a.url, "warm up"))[0] == 200  # connections made
        await stored(redis_server, 2)  # and no write in flight
        assert (await post(http, a.url, "redis awake"))[0] == 200
        await stored(redis_server, 4)  # its writes done too: the wait below is a read's
        with watched_logs() as watched:
            redis_server.pause()
            try:
                status, reply = await post(http, a.url, "while redis sleeps")
                assert (await post(http, a.url, "redis still asleep"))[0] == 200
            finally:
                redis_server.resume()
            logs = list(watched.entries)  # what was logged while Redis slept
            await watched.wait_for("verdict_cache_redis", state="up")  # it answered again
        assert (status, answer(reply)) == (200, "ok")
        # one bounded wait (a "timeout", not the client's socket timeout), then Redis is
        # skipped: the second request asks it nothing (still one timeout counted below)
        first, second = requests_of(logs)
        assert first["guard_calls"] == second["guard_calls"] == 2
        (down,) = [entry for entry in logs if entry["event"] == "verdict_cache_redis"]
        assert down["state"] == "down" and down["op"] == "get" and "Timeout" in down["error"]
        metrics = a.runtime.metrics
        assert metrics is not None
        assert metrics.redis_errors.labels("get", "timeout")._value.get() == 1
        assert a.runtime.shared_cache is not None and a.runtime.shared_cache.up  # used again
        assert (await post(http, a.url, "awake again"))[0] == 200
        assert len(await stored(redis_server, 6)) == 6  # the first two prompts and this


async def test_check_probe_pings_redis(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    env = ENV
    config = load(redis_config(tmp_path / "up", guard_emulator, upstream_emulator,
                               redis_server.url), env=env)
    assert await cli_probe(config) == 0
    assert f"ok: redis {redis_server.url}: answered" in capsys.readouterr().out
    away = f"redis://127.0.0.1:{_free_port()}/0"
    config = load(redis_config(tmp_path / "away", guard_emulator, upstream_emulator, away),
                  env=env)
    assert await cli_probe(config) == 1
    assert capsys.readouterr().err.startswith(f"redis {away}: ConnectionError: ")


# -- config -----------------------------------------------------------------------------------


def _errors(path: Path, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, env=env)
    return caught.value.errors


def _cache_line(path: Path) -> int:
    lines = path.read_text().splitlines()
    return lines.index(next(text for text in lines if text.startswith("cache:"))) + 1


@pytest.mark.parametrize(("url", "extra", "message"), [
    ("http://127.0.0.1:6379", "", "'http://127.0.0.1:6379' is not a redis:// or rediss:// URL"),
    ("redis://", "", "'redis://' is not a redis:// or rediss:// URL"),
    ("redis://127.0.0.1:99999", "", "is not a redis:// or rediss:// URL"),
    ("redis://:hunter2@127.0.0.1:6379", "", "must not contain credentials (user:password@); "
     "name the variable that holds the password in cache.redis_password_env"),
    ("rediss://user:hunter2@cache.example:6380/0", "", "must not contain credentials"),
    ("redis://127.0.0.1:6379/0?db=1", "", "no ?query or #fragment"),
    ("redis://127.0.0.1:6379/cache", "", "the path is a database number, like /0"),
    ("redis://127.0.0.1:6379", ", redis_password_env: REDIS_PASSWORD",
     "cache.redis_password_env: environment variable REDIS_PASSWORD is not set"),
    ("redis://127.0.0.1:6379", ", redis_timeout_s: 0", "cache.redis_timeout_s: expected a "
     "positive number, got 0"),
])
def test_config_errors_name_the_line(tmp_path: Path, url: str, extra: str,
                                     message: str) -> None:
    path = redis_config(tmp_path, None, None, url)
    path.write_text(path.read_text().replace(f", redis_timeout_s: {TIMEOUT_S}", extra))
    line = path.read_text().splitlines().index(next(
        text for text in path.read_text().splitlines() if text.startswith("cache:"))) + 1
    (error,) = _errors(path)
    assert error.startswith(f"{path}:{line}: cache.") and message in error
    assert "hunter2" not in error


def test_a_password_and_the_secret_come_from_the_environment(tmp_path: Path) -> None:
    path = redis_config(tmp_path, None, None, "rediss://cache:6380/2",
                        extra=", redis_password_env: REDIS_PASSWORD")
    server = load(path, env={**ENV, "REDIS_PASSWORD": "pw"}).server
    assert server.cache_redis_url == "rediss://cache:6380/2"
    assert server.cache_redis_password is not None and server.cache_redis_password.get() == "pw"
    assert server.cache_redis_secret is not None and server.cache_redis_secret.get() == SECRET
    assert SECRET not in repr(server)
    assert server.cache_redis_timeout_s == TIMEOUT_S
    for sixteen in ("0123456789abcdef", "é" * 8):  # bytes, not characters
        server = load(path, env={**ENV, "REDIS_PASSWORD": "pw", SECRET_ENV: sixteen}).server
        assert server.cache_redis_secret is not None


NO_SECRET = ("cache.redis_url: needs cache.redis_secret_env, the environment variable that "
             "holds the secret the replicas share (at least 16 bytes; e.g. openssl rand -hex 32)")
SHORT = ("cache.redis_secret_env: environment variable CACHE_SECRET is shorter than 16 bytes "
         "(e.g. openssl rand -hex 32)")


def test_a_url_without_a_secret_is_a_config_error(tmp_path: Path) -> None:
    path = redis_config(tmp_path, None, None, "redis://127.0.0.1:6379", secret_env=None)
    assert _errors(path) == [f"{path}:{_cache_line(path)}: {NO_SECRET}"]


@pytest.mark.parametrize(("value", "message"), [
    (None, "cache.redis_secret_env: environment variable CACHE_SECRET is not set"),
    ("", "cache.redis_secret_env: environment variable CACHE_SECRET is empty"),
    ("fifteen bytes!!", SHORT),
    ("é" * 7 + "!", SHORT),  # 8 characters, 15 bytes
])
def test_the_secret_must_be_set_and_long_enough(tmp_path: Path, value: str | None,
                                                message: str) -> None:
    path = redis_config(tmp_path, None, None, "redis://127.0.0.1:6379")
    text = path.read_text()
    path.write_text(text.replace(", redis_secret_env", ",\n        redis_secret_env"))
    line = _cache_line(path) + 1  # the key's own line
    env = {"UPSTREAM_KEY": UPSTREAM_KEY} | ({} if value is None else {SECRET_ENV: value})
    assert _errors(path, env) == [f"{path}:{line}: {message}"]


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize(("secret_env", "value", "message"), [
    pytest.param(None, SECRET, NO_SECRET, id="no secret"),
    pytest.param(SECRET_ENV, "fifteen bytes!!", SHORT, id="short")])
async def test_check_and_serve_refuse_a_url_without_a_secret(
        tmp_path: Path, command: str, secret_env: str | None, value: str,
        message: str) -> None:
    path = redis_config(tmp_path, None, None, "redis://127.0.0.1:6379", secret_env=secret_env)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **ENV, SECRET_ENV: value}
    port = ["--port", str(_free_port())] if command == "serve" else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", command, "-c", str(path), *port, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    first = (await process.stdout.readline()).decode()
    if not first.startswith(str(path)):
        process.terminate()  # it started: what this test is about is missing
    rest = (await process.stdout.read()).decode()
    assert await process.wait() == 1
    assert (first + rest).splitlines() == [f"{path}:{_cache_line(path)}: {message}"]


def test_without_the_redis_package_the_url_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = redis_config(tmp_path, None, None, "redis://127.0.0.1:6379")
    for name in ("redis", "redis.asyncio"):  # what an install without it looks like
        monkeypatch.setitem(sys.modules, name, None)
    (error,) = _errors(path)
    assert error.endswith("cache.redis_url: needs the redis package: "
                          "pip install 'guardproxy[redis]'")


def test_the_redis_package_is_loaded_only_when_configured() -> None:
    code = ("import sys, proxy.cli, proxy.pipeline, proxy.web.app; "
            "print('redis' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)
    assert done.stdout.strip() == "False"
