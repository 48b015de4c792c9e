"""Errors that name the fix: each message below is what a user reads when something is set
up wrong, and each names the one setting that makes it right."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import UPSTREAM_KEY, Proxy, write_config
from structlog.testing import capture_logs

from proxy.clients.guard import REASONING_PARSER

ROOT = Path(__file__).resolve().parents[1]


async def _command(*args: str, cwd: Path, env: dict[str, str] | None = None
                   ) -> tuple[int, str, str]:
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": UPSTREAM_KEY}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=cwd, env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# -- the Responses API ----------------------------------------------------------------------


async def test_an_item_reference_says_to_send_store_false(proxy: Proxy) -> None:
    """A client's second turn that points at a stored item (the AI SDK's default) is told
    the one setting that makes it send the item itself."""
    body = {"model": "m", "input": [{"role": "user", "content": "hi"},
                                    {"type": "item_reference", "id": "msg_abc123"}]}
    status, _, raw = await proxy.post(body, path="/v1/responses")
    error = orjson.loads(raw)["error"]
    assert status == 400 and error["param"] == "input[1]"
    assert error["code"] == "unsupported_content"
    assert error["message"] == (
        "input[1]: an item_reference points at an item an earlier response stored upstream, "
        "whose text the proxy never saw and so cannot judge; send the items themselves: set "
        "store: false on the request (the AI SDK: providerOptions.openai.store = false), and "
        "the client sends the whole conversation instead of references")
    assert proxy.upstream.requests == [] and proxy.guard.requests == []


# -- the config -----------------------------------------------------------------------------


async def test_a_missing_default_config_names_both_ways_to_give_one(tmp_path: Path) -> None:
    code, _, err = await _command("check", cwd=tmp_path)
    assert code == 1
    assert err.splitlines() == [
        f"config/proxy.yaml:1: file not found in {tmp_path}: the default when neither "
        "-c/--config nor GUARDPROXY_CONFIG names a config; give one with -c PATH or set "
        "GUARDPROXY_CONFIG"]


async def test_a_missing_config_named_by_the_environment_says_so(tmp_path: Path) -> None:
    code, _, err = await _command("serve", cwd=tmp_path,
                                  env={"GUARDPROXY_CONFIG": "elsewhere/proxy.yaml"})
    assert code == 1
    assert err.splitlines() == [
        "elsewhere/proxy.yaml:1: file not found (named by GUARDPROXY_CONFIG)"]


async def test_a_config_given_with_c_is_just_not_found(tmp_path: Path) -> None:
    code, _, err = await _command("check", "-c", "nowhere.yaml", cwd=tmp_path)
    assert code == 1 and err.splitlines() == ["nowhere.yaml:1: file not found"]


# -- a guard started with a reasoning parser --------------------------------------------------


@pytest.mark.parametrize("proxy", [{"api": "chat"}], indirect=True)
async def test_a_guard_with_a_reasoning_parser_is_a_named_guard_error(proxy: Proxy) -> None:
    """SGLang's ``--reasoning-parser deepseek-r1`` moves the one-token verdict into
    ``reasoning_content``: every check is a guard error that names the cause (the strict
    tenant fails closed), never a verdict read from nowhere."""
    proxy.guard.reasoning_parser = "deepseek-r1"
    proxy.upstream.replies.append(Reply(content="Hello."))
    with capture_logs() as logs:
        status, headers, raw = await proxy.post(
            {"model": "m", "messages": [{"role": "user", "content": "Write a haiku"}]})
    assert status == 200 and headers["x-guard-action"] == "block"
    answer = orjson.loads(raw)
    assert answer["moderation"]["input"]["type"] == "error"
    assert answer["moderation"]["input"]["code"] == "guard_unavailable"
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["input"]["error"] == "guard_unavailable"
    assert answer["moderation"]["input"]["message"] == REASONING_PARSER  # the cause, named
    assert line["input"]["message"] == REASONING_PARSER
    assert proxy.upstream.requests == []  # nothing unjudged went upstream
    assert proxy.guard.requests  # the guard was asked, and answered in the wrong field
    assert all(r.body.get("separate_reasoning") is None for r in proxy.guard.requests)


async def test_check_probe_names_a_reasoning_parser(tmp_path: Path, guard_emulator: GuardEmulator,
                                                    upstream_emulator: UpstreamEmulator) -> None:
    guard_emulator.reasoning_parser = "deepseek-r1"
    config = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url)
    code, out, err = await _command("check", "--probe", "-c", str(config), cwd=tmp_path)
    assert code == 1 and "ok: guard" not in out
    assert err.splitlines() == [f"guard {guard_emulator.url}: a classification failed "
                                f"(bad_response): {REASONING_PARSER}"]


async def test_the_guard_command_never_passes_a_reasoning_parser(tmp_path: Path) -> None:
    for extra in (["--reasoning-parser", "deepseek-r1"], ["--reasoning-parser=qwen3"]):
        code, out, err = await _command("guard", "--dry-run", "--", *extra, cwd=tmp_path)
        assert code == 2 and out == ""
        assert err.startswith("guardproxy guard: --reasoning-parser is refused: ")
        assert "reasoning_content" in err
