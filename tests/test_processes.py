"""``guardproxy serve`` as the processes an operator runs: listeners bound before
``listening``, one line for a port that is taken, workers that never outlive their
supervisor, and a supervisor that stops the set when one worker dies.

Every process a test starts carries a mark in its environment, inherited by the workers
(and by anything they start), so "no process left behind" is a scan of ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import UPSTREAM_KEY, write_config

ROOT = Path(__file__).resolve().parents[1]
MARK = "GUARDPROXY_TEST_PROCESS"

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="needs Linux's /proc to find processes")


@pytest.fixture
async def config(tmp_path: Path, guard_emulator: GuardEmulator,
                 upstream_emulator: UpstreamEmulator) -> Path:
    upstream_emulator.api_key = UPSTREAM_KEY
    return write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url)


@dataclass
class Served:
    process: asyncio.subprocess.Process
    mark: str

    async def line(self) -> dict[str, object]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        assert raw, "the process ended"
        line: dict[str, object] = orjson.loads(raw)
        return line

    async def listening(self, count: int) -> list[dict[str, object]]:
        """The first ``count`` ``listening`` lines (one per process)."""
        found: list[dict[str, object]] = []
        while len(found) < count:
            line = await self.line()
            if line["event"] == "listening":
                found.append(line)
        return found


async def _start(config: Path, *args: str) -> Served:
    mark = uuid.uuid4().hex
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": UPSTREAM_KEY,
           MARK: mark}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return Served(process, mark)


@contextlib.asynccontextmanager
async def _serving(config: Path, *args: str) -> AsyncIterator[Served]:
    served = await _start(config, *args)
    try:
        yield served
    finally:
        for pid in [served.process.pid, *_marked(served.mark)]:  # none left, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await served.process.wait()


def _marked(mark: str) -> list[int]:
    """The live processes whose environment carries ``mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0") and not _zombie(entry):
                found.append(int(entry.name))
    return found


def _zombie(entry: Path) -> bool:
    stat = (entry / "stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


async def _none_left(mark: str, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while _marked(mark):  # noqa: ASYNC110 - processes have no event to wait on
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def _taken() -> Iterator[int]:
    """A port held by another listener (no SO_REUSEPORT: nobody can share it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _ended(served: Served) -> tuple[int, bytes, bytes]:
    out, err = await asyncio.wait_for(served.process.communicate(), timeout=60)
    assert served.process.returncode is not None
    return served.process.returncode, out, err


# -- listeners --------------------------------------------------------------------------


async def test_listening_comes_after_both_listeners_are_bound(config: Path) -> None:
    """Port 0 on both: the line names the ports the listeners got, each answering."""
    async with _serving(config, "--port", "0", "--admin-port", "0") as served:
        (line,) = await served.listening(1)
        port = line["port"]
        admin_host, admin_port = str(line["admin"]).rsplit(":", 1)
        assert isinstance(port, int) and port > 0 and int(admin_port) > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert await resp.json() == {"status": "ready"}
            async with http.get(f"http://{admin_host}:{admin_port}/readyz") as resp:
                assert (await resp.json())["tenants"] > 0  # the admin one says more


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


async def test_the_admin_listener_can_be_turned_off(config: Path) -> None:
    _edit(config, "admin: {port: 0}", "admin: false")
    async with _serving(config, "--port", "0") as served:
        (line,) = await served.listening(1)
    assert line["admin"] is None


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", ["client", "admin"])
async def test_a_taken_port_is_one_line_and_nothing_left(config: Path, which: str,
                                                         workers: int) -> None:
    with _taken() as port:
        ports = (["--port", str(port), "--admin-port", "0"] if which == "client"
                 else ["--port", str(_free_port()), "--admin-port", str(port)])
        async with _serving(config, *ports, "--workers", str(workers)) as served:
            code, out, err = await _ended(served)
            await _none_left(served.mark, within_s=10)
    key = "listen.port" if which == "client" else "admin.port"
    flag = "--port" if which == "client" else "--admin-port"
    (line,) = err.decode().splitlines()
    assert line.startswith(f"guardproxy serve: cannot listen on 127.0.0.1:{port} ")
    assert f"the {which} listener" in line and key in line and flag in line
    assert str(config) in line and line.endswith(": Address already in use")
    assert code != 0 and b"Traceback" not in out + err
    assert b'"listening"' not in out  # no process said it listened


# -- workers ----------------------------------------------------------------------------


async def test_workers_die_with_a_killed_supervisor(config: Path) -> None:
    async with _serving(config, "--port", str(_free_port()), "--workers", "2") as served:
        lines = await served.listening(2)
        workers = {line["pid"] for line in lines}
        assert len(workers) == 2 and served.process.pid not in workers
        served.process.kill()  # SIGKILL: the supervisor cannot tell anyone
        await _none_left(served.mark, within_s=2)  # (its zombie does not count)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_a_dead_worker_stops_the_set(config: Path, how: signal.Signals) -> None:
    async with _serving(config, "--port", str(_free_port()), "--workers", "2") as served:
        lines = await served.listening(2)
        victim, survivor = (int(str(line["pid"])) for line in lines)
        os.kill(victim, how)
        code, out, err = await _ended(served)
        await _none_left(served.mark, within_s=10)
    assert code != 0 and b"Traceback" not in out + err and err == b""
    (said,) = [orjson.loads(raw) for raw in out.splitlines()
               if orjson.loads(raw)["event"] == "worker_exited"]
    assert said["level"] == "error" and said["worker_pid"] == victim
    assert f"pid {victim}" in said["message"] and "stopping the others" in said["message"]
    stopped = [orjson.loads(raw) for raw in out.splitlines() if orjson.loads(raw)["event"] ==
               "stopped"]
    assert {line["pid"] for line in stopped} >= {survivor}  # it shut down, not killed
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)


async def test_workers_stop_with_the_supervisor(config: Path) -> None:
    """SIGTERM to the supervisor: every worker shuts down and the set exits 0."""
    async with _serving(config, "--port", str(_free_port()), "--workers", "2") as served:
        lines = await served.listening(2)
        served.process.terminate()
        code, out, err = await _ended(served)
        await _none_left(served.mark, within_s=10)
    assert code == 0 and err == b""
    stopped = {orjson.loads(raw)["pid"] for raw in out.splitlines()
               if orjson.loads(raw)["event"] == "stopped"}
    assert stopped == {line["pid"] for line in lines}
