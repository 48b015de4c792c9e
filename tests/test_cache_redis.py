"""The verdict cache shared by replicas through Redis (``cache.redis_url``), against a real
``redis-server`` on loopback and the guard and upstream emulators.

Two real ``guardproxy serve`` processes share their verdicts and keep serving while Redis
is gone, then share again once it is back; replicas in this process (two apps, each with
its own local cache and Redis client) show that tenants do not share, that a malformed
stored value is a miss and that a Redis that stops answering costs about the timeout.
Without ``redis-server`` these tests skip, unless ``CI`` is set: there they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio
from aiohttp.test_utils import TestServer
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, write_config
from structlog.testing import capture_logs

from proxy.cli import _probe as cli_probe
from proxy.clients.sharedcache import PREFIX
from proxy.config import ConfigError, load
from proxy.core.cache import decode_verdict, encode_verdict
from proxy.core.verdict import Verdict
from proxy.web.app import create_app
from proxy.web.state import RUNTIME, Runtime

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server")
TIMEOUT_S = 0.05  # cache.redis_timeout_s in these tests

Line = dict[str, Any]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _eventually(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until ``condition`` holds: Redis and the replicas have no events to wait on."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


# -- a real redis-server ----------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a loopback port, nothing saved to disk."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.process: asyncio.subprocess.Process | None = None
        self.client = redis.asyncio.Redis(host="127.0.0.1", port=port,
                                          socket_connect_timeout=1, socket_timeout=2)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), "--loglevel", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

        async def answers() -> bool:
            try:
                return bool(await self.client.ping())
            except (redis.ConnectionError, OSError):
                return False

        await _eventually(answers, within=10)

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
        process.kill()
        await process.wait()
        await self.client.aclose()

    async def keys(self) -> list[bytes]:
        return sorted(await self.client.keys(b"*"))


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
                 url: str, *, shared: bool = False, extra: str = "", admin_port: int = 0
                 ) -> Path:
    """The harness's config and tenants in front of the emulators (None: a config only
    loaded, never served), with ``cache.redis_url``."""
    if upstream is not None:
        upstream.api_key = UPSTREAM_KEY
    path = write_config(root, guard=guard.url if guard else "http://127.0.0.1:9",
                        upstream=upstream.url if upstream else "http://127.0.0.1:9",
                        shared_cache=shared, admin_port=admin_port)
    flag = str(shared).lower()
    old = f"cache: {{shared_across_tenants: {flag}}}"
    new = (f'cache: {{shared_across_tenants: {flag}, redis_url: "{url}", '
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
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": UPSTREAM_KEY}
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


async def stored(server: RedisServer, count: int) -> list[bytes]:
    """Wait until Redis holds ``count`` verdicts (they are written in the background)."""
    async def enough() -> bool:
        return len(await server.keys()) >= count

    await _eventually(enough, within=5)
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
    # the values are the prompt's verdict and the answer's, expiring with guard.cache_ttl_s
    verdicts = [decode_verdict(await redis_server.client.get(key)) for key in keys]
    assert verdicts == [Verdict("safe"), Verdict("safe")]  # no refusal asked for
    for key in keys:
        assert 590_000 < await redis_server.client.pttl(key) <= 600_000


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
        await asyncio.sleep(1.0)  # a PING failed meanwhile (one per RETRY_S): not a warning
        for port in admins:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics = await resp.text()
            assert 'guardproxy_verdict_cache_redis_errors_total{kind="error",op="get"} 1.0' in (
                metrics)
            assert 'guardproxy_verdict_cache_redis_errors_total{kind="error",op="ping"}' in (
                metrics)

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
async def local_replicas(config: Path, count: int = 2, env: dict[str, str] | None = None
                         ) -> AsyncIterator[list[Local]]:
    loaded = load(config, env={"UPSTREAM_KEY": UPSTREAM_KEY, **(env or {})})
    servers = [TestServer(create_app(loaded), host="127.0.0.1") for _ in range(count)]
    try:
        for server in servers:
            await server.start_server()
        started = [Local(server) for server in servers]

        async def connected() -> bool:
            return all(r.runtime.shared_cache is not None and r.runtime.shared_cache.up
                       for r in started)

        await _eventually(connected, within=5)
        yield started
    finally:
        for server in servers:
            await server.close()


def requests_of(logs: list[Line]) -> list[Line]:
    return [entry for entry in logs if entry["event"] == "request"]


@pytest.mark.parametrize("shared", [False, True])
async def test_tenants_share_verdicts_only_when_told_to(
        shared: bool, tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url,
                          shared=shared)
    upstream_emulator.replies.extend([Reply(content="ok")] * 2)
    async with local_replicas(config) as (a, b), aiohttp.ClientSession() as http:
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


async def test_a_malformed_stored_value_is_a_miss(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url)
    upstream_emulator.replies.extend([Reply(content="ok")] * 3)
    async with local_replicas(config, count=3) as (a, b, c), aiohttp.ClientSession() as http:
        assert (await post(http, a.url, "hello there"))[0] == 200
        keys = await stored(redis_server, 2)
        for key in keys:  # a safe verdict turned into something else
            await redis_server.client.set(key, b'["safe", [], null, {}, "extra"]')
        with capture_logs() as logs:
            status, reply = await post(http, b.url, "hello there")
        assert (status, answer(reply)) == (200, "ok")
        (line,) = requests_of(logs)
        assert (line["guard_calls"], line["cache_hits"]) == (2, 0)  # judged again
        metrics = b.runtime.metrics
        assert metrics is not None
        assert metrics.redis_errors.labels("get", "malformed")._value.get() == 2

        async def rewritten() -> bool:  # B's verdicts replaced the malformed values
            values = [await redis_server.client.get(key) for key in keys]
            return all(value is not None and decode_verdict(value) is not None
                       for value in values)

        await _eventually(rewritten, within=5)
        with capture_logs() as logs:
            assert (await post(http, c.url, "hello there"))[0] == 200
        (line,) = requests_of(logs)
        assert (line["guard_calls"], line["cache_hits"]) == (0, 2)


async def test_a_redis_that_stops_answering_costs_one_bounded_wait(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    config = redis_config(tmp_path, guard_emulator, upstream_emulator, redis_server.url)
    upstream_emulator.replies.extend([Reply(content="ok")] * 5)
    async with local_replicas(config, count=1) as (a,), aiohttp.ClientSession() as http:
        assert (await post(http, a.url, "warm up"))[0] == 200  # connections made
        await stored(redis_server, 2)  # and no write in flight
        assert (await post(http, a.url, "redis awake"))[0] == 200
        redis_server.pause()
        try:
            with capture_logs() as logs:
                status, reply = await post(http, a.url, "while redis sleeps")
                assert (await post(http, a.url, "redis still asleep"))[0] == 200
        finally:
            redis_server.resume()
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
        shared = a.runtime.shared_cache
        assert shared is not None

        async def back() -> bool:
            return shared.up

        await _eventually(back, within=5)  # answered again: used again
        assert (await post(http, a.url, "awake again"))[0] == 200
        assert len(await stored(redis_server, 6)) == 6  # the first two prompts and this


async def test_check_probe_pings_redis(
        tmp_path: Path, redis_server: RedisServer, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"UPSTREAM_KEY": UPSTREAM_KEY}
    config = load(redis_config(tmp_path / "up", guard_emulator, upstream_emulator,
                               redis_server.url), env=env)
    assert await cli_probe(config) == 0
    assert "ok: probed the guard and 1 upstream(s) and redis" in capsys.readouterr().out
    away = f"redis://127.0.0.1:{_free_port()}/0"
    config = load(redis_config(tmp_path / "away", guard_emulator, upstream_emulator, away),
                  env=env)
    assert await cli_probe(config) == 1
    assert capsys.readouterr().err.startswith(f"redis {away}: ConnectionError: ")


# -- config -----------------------------------------------------------------------------------


def _errors(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, env={"UPSTREAM_KEY": UPSTREAM_KEY, **(env or {})})
    return caught.value.errors


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


def test_a_password_comes_from_the_environment(tmp_path: Path) -> None:
    path = redis_config(tmp_path, None, None, "rediss://cache:6380/2",
                        extra=", redis_password_env: REDIS_PASSWORD")
    server = load(path, env={"UPSTREAM_KEY": UPSTREAM_KEY, "REDIS_PASSWORD": "pw"}).server
    assert server.cache_redis_url == "rediss://cache:6380/2"
    assert server.cache_redis_password is not None and server.cache_redis_password.get() == "pw"
    assert server.cache_redis_timeout_s == TIMEOUT_S


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
