"""``guardproxy demo``: started as a user would, every command it prints run as printed.

The demo must show, with nothing else running and no config file, a passed request, a
flagged one, a blocked prompt and a stream blocked mid-answer on chat completions, and a
passed and a blocked request on OpenAI's Responses API and Anthropic's Messages API — by
``curl`` and by two lines of each SDK.  Each printed command is run (``curl`` itself when
the machine has it, else the same request from its parsed arguments) and must do what its
label says, by its answer and by the demo's log line for it.  With ``--upstream`` the
commands ask for the ``--model`` given, with prompts that rely on no script."""

from __future__ import annotations

import asyncio
import itertools
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from clientview import read_stream, read_whole
from demoproc import BLOCKED, ROOT, Demo, demo_command, demo_env, running_demo
from emulators.upstream import UpstreamEmulator
from harness import UPSTREAM_KEY

from proxy.config import GuardConfig
from proxy.core.conversation import Turn
from proxy.demo import Options, banner
from proxy.demo.guard import make_app
from proxy.demo.llm import HAIKU
from proxy.web.app import make_guard

Json = dict[str, Any]
PATHS = {"chat/completions": "chat", "responses": "responses", "messages": "messages"}
#: How each API says an answer passed, and how it says it was blocked.
PASSED = {"chat": "stop", "responses": "completed", "messages": "end_turn"}
CUT = {"chat": "content_filter", "responses": "content_filter", "messages": "refusal"}


@dataclass(frozen=True)
class Try:
    """A labelled command of the banner: ``curl`` (one line) or Python (two lines)."""

    label: str
    lines: tuple[str, ...]

    @property
    def python(self) -> bool:
        return not self.lines[0].startswith("curl ")

    @property
    def kind(self) -> str:
        """What the label promises; an SDK snippet promises an answer that passes."""
        return "passes" if self.python else self.label.split(":")[0]

    @property
    def api(self) -> str:
        if self.python:
            return "responses" if "responses.create" in self.lines[1] else "messages"
        found = re.search(r" http://\S+?/v1/(\S+) ", self.lines[0])
        assert found, self.lines
        return PATHS[found.group(1)]


def tries(banner: list[str]) -> list[Try]:
    """The banner's labelled commands: a ``# label`` line, then the command's lines up to a
    blank line or the next label."""
    found: list[Try] = []
    label: str | None = None
    lines: list[str] = []
    for line in [*banner[banner.index("Try these (each command runs as it is):") + 1:], ""]:
        if (line.startswith("# ") or not line.strip()) and label is not None:
            found.append(Try(label, tuple(lines)))
            label, lines = None, []
        if line.startswith("# "):
            label = line[2:]
        elif line.strip() and label is not None:
            lines.append(line)
    return found


async def _output(*command: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out


async def _curl_without_curl(command: str) -> bytes:
    """The request a ``curl -s URL -H ... -d ...`` line makes, made with aiohttp."""
    words = shlex.split(command)
    url = next(w for w in words[1:] if w.startswith("http"))
    headers: dict[str, str] = {}
    for flag, value in itertools.pairwise(words):
        if flag == "-H":
            name, _, given = value.partition(":")
            headers[name.strip()] = given.strip()
    data = words[words.index("-d") + 1]
    async with aiohttp.ClientSession() as http, http.post(url, data=data,
                                                          headers=headers) as resp:
        return await resp.read()


async def run(found: Try) -> bytes:
    """The command run as printed: a shell runs ``curl``, Python runs a snippet."""
    if found.python:
        return await _output(sys.executable, "-c", "\n".join(found.lines))
    if shutil.which("curl") is None:
        return await _curl_without_curl(found.lines[0])
    return await _output("bash", "-c", found.lines[0])


@dataclass
class Seen:
    text: str
    finish: str  # the API's own word for how the answer ended
    moderation: Json | None  # the annotation, where the API carries it
    streamed: bool = False


def read(found: Try, out: bytes) -> Seen:
    if found.python:  # the snippets print how the answer ended, then its text
        finish, _, text = out.decode().strip().partition(" ")
        return Seen(text, finish, None)
    if found.api == "chat" and " -sN " in found.lines[0]:
        stream = read_stream(out)
        return Seen(stream.message.get("content") or "", stream.finishes[0], stream.moderation,
                    streamed=True)
    if found.api == "chat":
        body = read_whole(out)
        choice = body["choices"][0]
        return Seen(choice["message"]["content"], choice["finish_reason"], body["moderation"])
    body = orjson.loads(out)
    if found.api == "responses":
        text = "".join(part["text"] for item in body["output"] if item["type"] == "message"
                       for part in item["content"] if part["type"] == "output_text")
        ended = body["status"]
        finish = body["incomplete_details"]["reason"] if ended == "incomplete" else ended
        return Seen(text, finish, body.get("moderation"))
    text = "".join(block["text"] for block in body["content"] if block["type"] == "text")
    return Seen(text, body["stop_reason"], body.get("moderation"))


def check(found: Try, seen: Seen, log: Json, *, scripted: bool) -> None:
    """The command did what its label says: by its answer, and by the demo's log line."""
    api, kind = found.api, found.kind
    assert log["path"] == f"/v1/{next(p for p, a in PATHS.items() if a == api)}", log
    if kind in ("passes", "flagged", "streamed"):  # answered by the LLM
        assert seen.finish == PASSED[api] and seen.text, (found, seen)
        assert log["upstream_ms"] is not None
        assert log["input"]["action"] == ("flag" if kind == "flagged" else "pass"), log
        if kind != "flagged":
            assert log["output"]["action"] == "pass", log
        if kind == "passes" and scripted:
            assert seen.text == HAIKU
        assert seen.streamed == (kind == "streamed")
    elif kind == "blocked":  # never reached the LLM
        assert (seen.finish, seen.text) == (CUT[api], BLOCKED), (found, seen)
        assert log["input"]["action"] == "block" and log["upstream_ms"] is None, log
    else:
        assert kind == "blocked mid-answer", found
        assert seen.streamed and seen.finish == CUT[api], seen
        assert seen.text.startswith("Once upon a time") and "bomb" not in seen.text, seen
        assert (log["input"]["action"], log["output"]["action"]) == ("pass", "block"), log
    if not found.python:  # every answer carries the verdict
        assert seen.moderation is not None, found
    if api == "chat" and seen.moderation is not None:
        assert seen.moderation["input"]["results"][0]["action"] == log["input"]["action"]


async def _recorded(banner: list[str]) -> list[Json]:
    """The decisions the demo's console lists, once the commands' last one is written."""
    (line,) = [line for line in banner if line.lstrip().startswith("console ")]
    console = line.split()[1]
    assert console.startswith("http://127.0.0.1:") and console.endswith("/console")
    api = console.removesuffix("/console") + "/api/decisions"
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        async with http.get(console) as page:
            assert page.status == 200 and "Overview" in await page.text()
        while True:
            async with http.get(api) as resp:
                found: list[Json] = (await resp.json())["decisions"]
            if {d["api"] for d in found} == {"chat", "responses", "messages"}:
                return found
            await asyncio.sleep(0.02)


async def _run_all(demo: Demo, *, scripted: bool) -> list[Try]:
    found = tries(demo.banner)
    for each in found:
        seen = read(each, await run(each))
        check(each, seen, await demo.request_log(), scripted=scripted)
    return found


async def test_every_printed_command_does_what_its_label_says() -> None:
    async with running_demo() as demo:
        text = "\n".join(demo.banner)
        assert "sk-demo-strict" in text and "sk-demo-relaxed" in text
        assert "not a model" in text  # the demo guard is labelled as what it is
        found = await _run_all(demo, scripted=True)
        for each in found:  # the stand-in for a machine without curl sends the same request
            if not each.python and each.kind in ("passes", "blocked"):
                seen = read(each, await _curl_without_curl(each.lines[0]))
                check(each, seen, await demo.request_log(), scripted=True)
        async with aiohttp.ClientSession() as http, http.get(f"{demo.base}/readyz") as resp:
            ready = await resp.json()
        recorded = await _recorded(demo.banner)
    assert resp.status == 200 and ready == {"status": "ready"}
    # the demo's console shows what the commands did: its trail records every decision
    assert {("demo-strict", "block"), ("demo-relaxed", "flag"), ("demo-strict", "pass")} <= {
        (d["tenant"], d["action"]) for d in recorded}
    assert {d["api"] for d in recorded} == {"chat", "responses", "messages"}
    assert [(each.api, each.kind) for each in found] == [
        ("chat", "passes"), ("chat", "flagged"), ("chat", "blocked"),
        ("chat", "blocked mid-answer"), ("responses", "passes"), ("responses", "blocked"),
        ("messages", "passes"), ("messages", "blocked"), ("responses", "passes"),
        ("messages", "passes")]
    for each in found:
        if each.api == "messages" and not each.python:  # as Anthropic's clients send them
            assert "-H 'x-api-key: sk-demo-" in each.lines[0]
            assert "-H 'anthropic-version: 2023-06-01'" in each.lines[0]
        if each.python:
            assert [line.count("client") for line in each.lines] == [1, 1]
            assert f'base_url="{demo.base}' in each.lines[0], each


async def test_with_a_real_llm_the_commands_ask_for_its_model(
        upstream_emulator: UpstreamEmulator) -> None:
    """``--upstream`` with ``--model``: every command names that model, no prompt relies on
    the demo LLM's script, and each still does what its label says."""
    upstream_emulator.api_key = UPSTREAM_KEY  # the LLM's key reaches it from the environment
    async with running_demo("--upstream", upstream_emulator.url + "/v1", "--model", "my-llm-8b",
                            "--upstream-key-env", "DEMO_LLM_KEY",
                            env=demo_env(DEMO_LLM_KEY=UPSTREAM_KEY)) as demo:
        assert "DEMO LLM" not in "\n".join(demo.banner)
        found = await _run_all(demo, scripted=False)
    for each in found:
        command = "\n".join(each.lines)
        assert '"model":"my-llm-8b"' in command or 'model="my-llm-8b"' in command, command
        assert "story" not in command and '"demo"' not in command, command
    assert [each.kind for each in found if each.api == "chat"] == [
        "passes", "flagged", "blocked", "streamed"]
    asked = [(r.path, r.body["model"]) for r in upstream_emulator.requests]
    assert sorted(asked) == sorted(  # every command but the blocked ones reached it
        [("/v1/chat/completions", "my-llm-8b")] * 3 + [("/v1/responses", "my-llm-8b")] * 2
        + [("/v1/messages", "my-llm-8b")] * 2)


async def test_a_real_llm_without_a_model_is_one_clear_error() -> None:
    process = await asyncio.create_subprocess_exec(
        *demo_command("--port", "0", "--upstream", "http://127.0.0.1:8000/v1"), cwd=ROOT,
        env=demo_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 2 and out == b"", out
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "--upstream needs --model NAME" in lines[0]
    assert "http://127.0.0.1:8000/v1/models" in lines[0]  # where the names are


async def test_a_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            *demo_command("--port", str(port)), cwd=ROOT, env=demo_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
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


def test_the_banner_excerpt_in_getting_started_is_the_banner() -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    found = re.search(r"```console\n\$ \.venv/bin/guardproxy demo\n\.\.\.\n(.+?)\n```", page, re.S)
    assert found, "the demo's console excerpt"
    printed = banner(Options(), "http://127.0.0.1:8080", "http://127.0.0.1:1",
                     "http://127.0.0.1:2/v1").splitlines()
    excerpt = found.group(1).splitlines()
    start = printed.index(excerpt[0])
    assert printed[start:start + len(excerpt)] == excerpt
