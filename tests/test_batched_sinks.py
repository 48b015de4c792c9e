"""What a request costs the process beside its I/O: log lines written in batches, metrics
counted in batches, ids drawn from a pool of random bytes, the request's log fields in one
context variable.  Each keeps what it promised: every line in order and within its
delay, every count exact when read, every id as random and unique as before, no field
of one request on another's lines."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import Action
from proxy.core import ids
from proxy.core.policy import Outcome
from proxy.core.verdict import Verdict
from proxy.obs import log, metrics
from proxy.obs.log import LineWriter, RequestRecord
from proxy.obs.metrics import Metrics
from proxy.web.console.overview import block_rates

ROOT = Path(__file__).resolve().parents[1]


class Sink:
    """A byte stream that counts its writes; ``most`` bytes taken per write (a raw,
    unbuffered stream may take part of what it is given)."""

    def __init__(self, most: int | None = None) -> None:
        self.data = bytearray()
        self.writes = 0
        self.most = most

    def write(self, data: Any) -> int:
        taken = bytes(data[:self.most] if self.most else data)
        self.data += taken
        self.writes += 1
        return len(taken)

    def flush(self) -> None:
        pass

    def lines(self) -> list[bytes]:
        return bytes(self.data).splitlines()


# -- the log's lines --------------------------------------------------------------------


def test_without_a_loop_every_line_is_written_as_it_comes() -> None:
    sink = Sink()
    writer = LineWriter(sink)
    writer.msg(b'{"a":1}')
    assert sink.lines() == [b'{"a":1}']
    writer.msg(b'{"b":2}')
    assert sink.lines() == [b'{"a":1}', b'{"b":2}'] and sink.writes == 2


async def test_on_the_loop_the_lines_of_many_requests_go_out_in_one_write() -> None:
    sink = Sink()
    writer = LineWriter(sink)
    writer.write_in_batches(asyncio.get_running_loop())
    for n in range(50):
        writer.msg(b'{"n":%d}' % n)
    assert sink.writes == 0  # nothing yet: the batch waits for its delay
    await wait_until(lambda: sink.writes)
    assert sink.writes == 1
    assert sink.lines() == [b'{"n":%d}' % n for n in range(50)]


async def test_a_full_batch_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "FLUSH_AT_BYTES", 100)
    sink = Sink()
    writer = LineWriter(sink)
    writer.write_in_batches(asyncio.get_running_loop())
    line = b"x" * 40
    writer.msg(line)
    writer.msg(line)
    assert sink.writes == 0
    writer.msg(line)  # 123 bytes wait, with their newlines
    assert sink.writes == 1 and sink.lines() == [line] * 3


async def test_a_line_from_another_thread_goes_out_at_once_after_those_waiting() -> None:
    sink = Sink()
    writer = LineWriter(sink)
    writer.write_in_batches(asyncio.get_running_loop())
    writer.msg(b"first")
    thread = threading.Thread(target=writer.msg, args=(b"from a thread",))
    thread.start()
    thread.join()
    assert sink.lines() == [b"first", b"from a thread"]


async def test_lines_from_threads_and_the_loop_at_once_are_all_written_whole() -> None:
    """Threads log while the loop's own lines wait in their batch: every line is written
    once, whole, in its own thread's order."""
    sink = Sink()
    writer = LineWriter(sink)
    writer.write_in_batches(asyncio.get_running_loop())

    def log_from(name: str) -> None:
        for n in range(500):
            writer.msg(b"%s %d" % (name.encode(), n))

    threads = [threading.Thread(target=log_from, args=(f"t{k}",)) for k in range(4)]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: a write and an append interleave
    try:
        for thread in threads:
            thread.start()
        for n in range(2000):
            writer.msg(b"loop %d" % n)
            if n % 100 == 0:
                await asyncio.sleep(0)  # the threads run between
        for thread in threads:
            await asyncio.to_thread(thread.join)
    finally:
        sys.setswitchinterval(switching)
    writer.flush_each_line()
    lines = sink.lines()
    assert len(lines) == 4000 and len(set(lines)) == 4000
    for name in ("loop", "t0", "t1", "t2", "t3"):
        mine = [int(line.split()[1]) for line in lines if line.split()[0] == name.encode()]
        assert mine == sorted(mine)


async def test_stopping_writes_what_waits_and_each_line_after() -> None:
    sink = Sink()
    writer = LineWriter(sink)
    writer.write_in_batches(asyncio.get_running_loop())
    writer.msg(b"waiting")
    writer.flush_each_line()
    assert sink.lines() == [b"waiting"]
    writer.msg(b"after")
    assert sink.lines() == [b"waiting", b"after"]


def test_a_stream_that_takes_part_of_a_batch_gets_the_rest() -> None:
    sink = Sink(most=5)
    writer = LineWriter(sink)
    writer.msg(b'{"event":"request","request_id":"abc"}')
    assert sink.lines() == [b'{"event":"request","request_id":"abc"}']
    assert sink.writes > 1


def test_every_configuration_logs_through_one_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``logger`` caches its writer on first use: a later ``configure`` must not leave it
    writing through one that no longer batches."""
    saved = log.structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        log.configure("info")
        first = log.structlog.get_config()["logger_factory"]()
        log.configure("warning")
        second = log.structlog.get_config()["logger_factory"]()
    finally:
        log.structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
    assert first is second is log._WRITER


async def test_serve_writes_each_request_line_while_it_runs(
        tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    """``serve`` on an unbuffered stdout (as the image runs it): each request's line
    arrives, whole and in order, while the process runs, not only when it stops."""
    upstream_emulator.api_key = UPSTREAM_KEY
    config = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url)
    upstream_emulator.replies.extend(Reply(content=f"answer {n}") for n in range(3))
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
             "UPSTREAM_KEY": UPSTREAM_KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert orjson.loads(await process.stdout.readline())["event"] == "listening"
            async with aiohttp.ClientSession() as http:
                for n in range(3):
                    async with http.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions",
                            json={"model": "m", "messages": [
                                {"role": "user", "content": f"question {n}"}]},
                            headers={"Authorization": f"Bearer {KEYS['strict']}",
                                     "x-request-id": f"req-{n}"}) as resp:
                        assert resp.status == 200
            lines = [orjson.loads(await process.stdout.readline()) for _ in range(3)]
        assert [(line["event"], line["request_id"]) for line in lines] == [
            ("request", f"req-{n}") for n in range(3)]
        assert process.returncode is None  # written while it runs
    finally:
        process.terminate()
        await process.wait()


def test_the_configured_chain_merges_the_request_fields() -> None:
    assert log.processors()[0] is log.merge_request
    assert log.stdlib_formatter().foreign_pre_chain[0] is log.merge_request  # type: ignore[index]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the request's fields on its lines --------------------------------------------------


async def test_a_line_logged_during_a_request_carries_its_id_and_tenant() -> None:
    captured: list[dict[str, Any]] = []

    def keep(logger: Any, name: str, event: Any) -> Any:
        captured.append(dict(event))
        raise log.structlog.DropEvent

    async def one(request_id: str, tenant: str) -> None:
        log.start_request(request_id=request_id)
        await asyncio.sleep(0)  # the other request runs between
        log.add_to_request(tenant=tenant)
        await asyncio.sleep(0)
        log.logger.warning("inside", tenant="given")  # its own field wins

    saved = log.structlog.get_config()
    log.structlog.configure(processors=[log.merge_request, keep], cache_logger_on_first_use=False)
    try:
        await asyncio.gather(asyncio.create_task(one("a", "ta")),
                             asyncio.create_task(one("b", "tb")))
        log.logger.warning("outside")
    finally:
        log.structlog.configure(**saved)
    by_id = {line.get("request_id"): line for line in captured}
    assert by_id["a"]["tenant"] == by_id["b"]["tenant"] == "given"
    assert {line["event"] for line in captured} == {"inside", "outside"}
    assert "request_id" not in by_id[None]  # the test's own task never started a request


# -- random ids -------------------------------------------------------------------------


def test_random_ids_are_hex_of_their_length_and_never_repeat() -> None:
    seen = set()
    for size in (16, 12, 16, 7) * 2000:  # sizes that do not divide the pool: refills
        made = ids.random_hex(size)
        assert len(made) == 2 * size and int(made, 16) >= 0 and made == made.lower()
        seen.add(made)
    assert len(seen) == 8000


def test_random_ids_take_fresh_bytes_after_a_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(ids.os, "urandom", urandom)
    ids._forget()
    made = [ids.random_hex(16) for _ in range(ids._POOL_BYTES // 16 + 1)]
    assert drawn == [ids._POOL_BYTES, ids._POOL_BYTES]  # one draw per 256 ids
    assert len(set(made)) == len(made)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_draws_its_own_bytes() -> None:
    ids.random_hex(16)  # the parent's pool holds bytes not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the ids it would make next
        os.write(write, ",".join(ids.random_hex(16) for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    parent = [ids.random_hex(16) for _ in range(4)]
    assert not set(child) & set(parent)


# -- metrics in batches -----------------------------------------------------------------


def _record(tenant: str = "acme") -> RequestRecord:
    record = RequestRecord(request_id="r", path="/v1/chat/completions", tenant=tenant)
    record.input.append(Outcome(Action.PASS, Verdict("safe")))
    record.guard_timings.append(("prompt", 0.002))
    return record


def _prompts(m: Metrics, tenant: str = "acme") -> float:
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            if (sample.name == "guardproxy_requests_total"
                    and sample.labels == {"tenant": tenant, "stage": "prompt",
                                          "action": "pass"}):
                return sample.value
    return 0.0


def _counted(m: Metrics) -> float:
    """What the registry holds now, without counting what waits."""
    return m.requests.labels("acme", "prompt", "pass")._value.get()  # type: ignore[no-any-return]


def test_what_is_read_in_this_process_is_always_exact() -> None:
    m = Metrics(["acme"])
    for _ in range(5):
        m.observe(_record(), 200, "chat")
    count = m.guard_requests_by("chat")
    count("severity")
    assert _counted(m) == 0  # waiting in the batch
    assert _prompts(m) == 5  # render counts what waits first
    text = m.render().decode()
    assert 'guardproxy_guard_requests_total{api="chat",step="severity"} 1.0' in text


def test_a_full_batch_is_counted_at_once() -> None:
    m = Metrics(["acme"])
    for _ in range(metrics.MAX_WAITING - 1):
        m.observe(_record(), 200, "chat")
    assert _counted(m) == 0
    m.observe(_record(), 200, "chat")
    assert _counted(m) == metrics.MAX_WAITING


async def test_on_the_loop_a_batch_is_counted_within_its_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FLUSH_AFTER_S", 0.01)
    m = Metrics(["acme"])
    m.count_in_batches(asyncio.get_running_loop())
    m.observe(_record(), 200, "chat")
    assert _counted(m) == 0
    await wait_until(lambda: _counted(m) == 1)
    m.observe(_record(), 200, "chat")
    m.count_in_batches(None)  # stopping: what waits is counted now
    assert _counted(m) == 2


def test_the_console_rates_count_what_waits() -> None:
    m = Metrics(["acme"])
    blocked = _record()
    blocked.input[0] = Outcome(Action.BLOCK, Verdict("unsafe", ("Violent",)))
    m.observe(blocked, 400, "chat")
    m.observe(_record(), 200, "chat")
    assert block_rates(m) == {"acme": "50.0%"}
    assert orjson.loads(orjson.dumps(block_rates(None))) == {}
