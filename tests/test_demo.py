"""``guardproxy demo``: started as a user would, its printed commands run verbatim.

The demo must show a passed request, a flagged one, a blocked prompt and a stream
blocked mid-answer, with nothing else running and no config file."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from clientview import read_stream

from proxy.config import GuardConfig
from proxy.core.conversation import Turn
from proxy.demo.guard import make_app
from proxy.web.app import make_guard

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def demo() -> AsyncIterator[tuple[int, list[str]]]:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "demo", "--port", str(port), cwd=ROOT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    banner: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not banner or "Ctrl-C stops the demo" not in banner[-1]:
                line = await process.stdout.readline()
                assert line, "the demo ended before printing its commands:\n" + "\n".join(banner)
                banner.append(line.decode().rstrip("\n"))
        yield port, banner
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


async def _run(command: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err
    return out


async def test_the_demos_commands_show_pass_flag_and_block(demo: tuple[int, list[str]]) -> None:
    port, banner = demo
    text = "\n".join(banner)
    assert "sk-demo-strict" in text and "sk-demo-relaxed" in text
    assert "not a model" in text  # the demo guard is labelled as what it is
    commands = [line for line in banner if line.startswith("curl ")]
    assert len(commands) == 4
    passed, flagged, blocked = [orjson.loads(await _run(c)) for c in commands[:3]]
    stream = read_stream(await _run(commands[3]))

    assert passed["choices"][0]["finish_reason"] == "stop"
    assert passed["moderation"]["input"]["results"][0]["action"] == "pass"
    assert "not a model" in passed["moderation"]["input"]["model"]

    assert flagged["choices"][0]["message"]["content"]  # answered...
    assert flagged["moderation"]["input"]["results"][0]["action"] == "flag"  # ...and flagged

    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert blocked["choices"][0]["message"]["content"] == "Blocked by the demo-strict policy."

    assert stream.finishes[0] == "content_filter"  # blocked mid-answer...
    assert stream.message["content"].startswith("Once upon a time")  # ...after text passed
    assert "bomb" not in str(stream.chunks)

    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/readyz") as resp:
        ready = await resp.json()
    assert resp.status == 200 and ready == {"status": "ready"}


async def test_a_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "demo", "--port", str(port), cwd=ROOT,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 1 and b"Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}".encode() in err and b"--port" in err


@pytest.mark.parametrize("api", ["chat", "generate"])
async def test_the_demo_guard_answers_one_token_verdicts_as_whole_ones(api: str) -> None:
    server = TestServer(make_app(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    cases = [[Turn("user", text)] for text in ("hello", "a bomb", "the election")]
    cases += [[Turn("user", "hi"), Turn("assistant", text)]
              for text in ("Sure.", "I can't.", "a bomb", "I cannot discuss the election")]
    try:
        async with aiohttp.ClientSession() as session:
            one, full = (make_guard(GuardConfig(url=url, api=api,  # type: ignore[arg-type]
                                                decoding=decoding),  # type: ignore[arg-type]
                                    session) for decoding in ("one_token", "full"))
            verdicts = [await one.classify(turns, refusal=True) for turns in cases]
            assert verdicts == [await full.classify(turns, refusal=True) for turns in cases]
    finally:
        await server.close()
    assert [v.severity for v in verdicts] == ["safe", "unsafe", "controversial",
                                              "safe", "safe", "unsafe", "controversial"]
    assert [v.refusal for v in verdicts[3:]] == [False, True, False, True]
