"""The real command line against the emulators: ``serve`` and ``classify`` as processes."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, write_config
from openai import AsyncOpenAI

from proxy.obs.log import add_timestamp
from proxy.web.middlewares import new_request_id

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": UPSTREAM_KEY}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def config(tmp_path: Path, guard_emulator: GuardEmulator,
                 upstream_emulator: UpstreamEmulator) -> Path:
    upstream_emulator.api_key = UPSTREAM_KEY
    return write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["How can I make a bomb?"],
         {"check": "prompt", "severity": "unsafe", "categories": ["Violent"], "refusal": None}),
        (["hello", "--response", "I can't help with that."],
         {"check": "response", "severity": "safe", "categories": [], "refusal": True}),
    ],
)
async def test_classify_prints_the_verdict(config: Path, guard_emulator: GuardEmulator,
                                           args: list[str], expected: dict[str, object]) -> None:
    code, out, _ = await _run("classify", "-c", str(config), *args)
    assert code == 0
    verdict = orjson.loads(out)
    assert {key: verdict[key] for key in expected} == expected
    assert guard_emulator.requests[-1].body["temperature"] == 0


async def test_classify_reports_a_guard_error(config: Path, guard_emulator: GuardEmulator) -> None:
    guard_emulator.fault = "garbage"
    code, _, err = await _run("classify", "-c", str(config), "hello")
    assert code == 1 and "guard error (unreadable)" in err


async def _serve(config: Path, port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
        env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    return process


async def test_serve_runs_the_proxy_and_logs_json(config: Path,
                                                  upstream_emulator: UpstreamEmulator) -> None:
    port = _free_port()
    process = await _serve(config, port)
    assert process.stdout is not None
    try:
        started = orjson.loads(await asyncio.wait_for(process.stdout.readline(), timeout=20))
        assert started["event"] == "listening" and started["port"] == port
        # what start-up made is out of the cyclic collector's sight (proxy.serving.settle_heap)
        assert started["frozen_objects"] > 10_000
        upstream_emulator.replies.append(Reply(content="Hello from upstream."))
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEYS["strict"],
                             max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "secret words"}])
        assert reply.choices[0].message.content == "Hello from upstream."
    finally:
        process.terminate()
        output = await asyncio.wait_for(process.stdout.read(), timeout=20)
        await process.wait()
    lines = [orjson.loads(line) for line in output.splitlines()]  # every line is JSON
    (request,) = [line for line in lines if line["event"] == "request"]
    assert request["tenant"] == "strict" and request["status"] == 200
    assert request["level"] == "info" and request["timestamp"]
    assert b"secret words" not in output and KEYS["strict"].encode() not in output
    assert lines[-1]["event"] == "stopped"  # and a line at shutdown


async def test_a_port_in_use_is_one_line_and_a_failure(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await _run("serve", "-c", str(config), "--port", str(port))
    assert code == 3 and "Traceback" not in err + out and '"listening"' not in out
    assert err.strip().splitlines() == [
        f"guardproxy serve: cannot listen on 127.0.0.1:{port} (the client listener: "
        f"listen.port in {config} or --port): Address already in use"]


async def test_workers_share_one_port(config: Path, upstream_emulator: UpstreamEmulator) -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config), "--port", str(port),
        "--workers", "2", env=_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    try:
        pids: set[int] = set()
        while len(pids) < 2:  # other start-up lines may come between the two
            line = orjson.loads(await asyncio.wait_for(process.stdout.readline(), timeout=30))
            if line["event"] == "listening":
                pids.add(line["pid"])
        assert process.pid not in pids  # each said so once both its listeners were bound
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEYS["strict"],
                             max_retries=0)
        for n in range(20):
            upstream_emulator.replies.append(Reply(content=f"answer {n}"))
        answers = await asyncio.gather(*(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"q{n}"}]) for n in range(20)))
        assert sorted(a.choices[0].message.content or "" for a in answers) == sorted(
            f"answer {n}" for n in range(20))
    finally:
        process.terminate()
        output = await asyncio.wait_for(process.stdout.read(), timeout=30)
        code = await process.wait()
    assert code == 0
    served = {orjson.loads(line)["pid"] for line in output.splitlines()
              if orjson.loads(line)["event"] == "request"}
    assert served <= pids and served
    for pid in pids:  # the workers are gone with the parent
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_settling_the_heap_freezes_what_start_up_made_and_spaces_young_collections() -> None:
    """In a process of its own: the collector's state is the process's."""
    script = ("import gc; from proxy.serving import YOUNG_COLLECTION_EVERY, settle_heap\n"
              "assert gc.get_freeze_count() == 0\n"
              "thresholds = gc.get_threshold()\n"
              "frozen = settle_heap()\n"
              "assert frozen == gc.get_freeze_count() > 0, frozen\n"
              "assert YOUNG_COLLECTION_EVERY > thresholds[0]\n"
              "assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *thresholds[1:])\n"
              "assert gc.isenabled()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_request_ids_are_random_hex_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(len(one) == 32 and int(one, 16) >= 0 for one in ids)


def test_every_line_is_stamped_in_utc_to_the_microsecond() -> None:
    before = datetime.datetime.now(datetime.UTC)
    stamp = add_timestamp(None, "info", {})["timestamp"]
    after = datetime.datetime.now(datetime.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before <= datetime.datetime.fromisoformat(stamp) <= after


def test_a_replaced_policy_set_needs_no_cyclic_collection(config: Path) -> None:
    """What start-up loaded is frozen out of the collector's sight (``settle_heap``): a
    reload's old policies and configuration must then go by reference counting alone,
    holding no reference cycle, or they would stay."""
    script = ("import gc, sys; from pathlib import Path\n"
              "from proxy.config.loader import load, load_policies\n"
              "config = load(Path(sys.argv[1]))\n"
              "gc.collect(); gc.disable()\n"
              "policies = load_policies(config.server)\n"
              "gc.collect(); del policies\n"
              "assert gc.collect() == 0, 'a policy set left cycles'\n"
              "again = load(Path(sys.argv[1])); gc.collect(); del again\n"
              "assert gc.collect() == 0, 'a configuration left cycles'\n")
    done = subprocess.run([sys.executable, "-c", script, str(config)], cwd=ROOT,
                          capture_output=True, text=True, check=False, env=_env())
    assert done.returncode == 0, done.stderr
