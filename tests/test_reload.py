"""Live policy reload: what changes are seen, what a valid and an invalid set do."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from emulators.upstream import Reply
from harness import Proxy, wait_until
from structlog.testing import capture_logs

from proxy.config import Policy, load
from proxy.config.reload import PolicyReloader, fingerprint
from proxy.obs.log import logger

SERVER = """\
listen: {host: 127.0.0.1, port: 8080}
policies: policies
guard: {url: "http://127.0.0.1:9", model: Qwen/Qwen3Guard-Gen-0.6B}
upstreams:
  local: {url: "http://127.0.0.1:9/v1"}
"""
POLICY = """\
tenant: {name}
keys: ["sha256:{digest}"]
upstream: local
prompt: {{controversial: {controversial}}}
"""


def _policy(name: str, controversial: str = "block", digest: str = "ab" * 32) -> str:
    return POLICY.format(name=name, digest=digest, controversial=controversial)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.yaml").write_text(_policy("acme"))
    (tmp_path / "proxy.yaml").write_text(SERVER)
    return tmp_path


class Applied:
    def __init__(self) -> None:
        self.sets: list[tuple[Policy, ...]] = []
        self.outcomes: list[str] = []

    def reloader(self, root: Path) -> PolicyReloader:
        server = load(root / "proxy.yaml").server
        return PolicyReloader(server, self.sets.append, log=logger,
                              on_outcome=self.outcomes.append)


def _touch_later(path: Path, text: str) -> None:
    """Write, and move the mtime on so that even a coarse clock sees a change."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_an_edit_is_seen_and_a_valid_set_is_applied(folder: Path) -> None:
    applied = Applied()
    reloader = applied.reloader(folder)
    assert reloader.poll() is False and applied.sets == []
    _touch_later(folder / "policies" / "acme.yaml", _policy("acme", controversial="pass"))
    assert reloader.poll() is True
    (policy,) = applied.sets[0]
    assert policy.tenant == "acme" and policy.prompt.controversial.value == "pass"
    assert applied.outcomes == ["ok"]
    assert reloader.poll() is False  # seen once, applied once


def test_an_invalid_set_is_rejected_whole_with_file_and_line(folder: Path) -> None:
    applied = Applied()
    reloader = applied.reloader(folder)
    (folder / "policies" / "beta.yaml").write_text(_policy("beta", digest="cd" * 32))
    _touch_later(folder / "policies" / "acme.yaml",
                 _policy("acme").replace("controversial: block", "controversial: maybe"))
    with capture_logs() as logs:
        assert reloader.poll() is True
    assert applied.sets == []  # beta.yaml was valid, but the set is taken whole or not at all
    assert applied.outcomes == ["rejected"]
    (event,) = [e for e in logs if e["event"] == "policy_reload"]
    assert event["outcome"] == "rejected" and event["log_level"] == "error"
    assert any(line.startswith(f"{folder / 'policies' / 'acme.yaml'}:4:")
               for line in event["errors"])


def test_adding_and_removing_files_are_changes(folder: Path) -> None:
    before = fingerprint(folder / "policies")
    (folder / "policies" / "beta.yaml").write_text(_policy("beta", digest="cd" * 32))
    added = fingerprint(folder / "policies")
    (folder / "policies" / "beta.yaml").unlink()
    assert before != added and fingerprint(folder / "policies") == before


def test_a_configmap_style_symlink_swap_is_a_change(tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by pointing ``..data`` at a new folder;
    the files are symlinks through it."""
    mount = tmp_path / "policies"
    mount.mkdir()
    first, second = mount / "..2026_1", mount / "..2026_2"
    first.mkdir()
    second.mkdir()
    (first / "acme.yaml").write_text(_policy("acme"))
    (second / "acme.yaml").write_text(_policy("acme", controversial="flag"))
    (mount / "..data").symlink_to(first.name)
    (mount / "acme.yaml").symlink_to("..data/acme.yaml")
    before = fingerprint(mount)
    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    assert fingerprint(mount) != before


def test_sighup_reason_is_logged(folder: Path) -> None:
    applied = Applied()
    with capture_logs() as logs:
        assert applied.reloader(folder).reload("sighup") is True
    (event,) = [e for e in logs if e["event"] == "policy_reload"]
    assert event["reason"] == "sighup" and event["tenants"] == ["acme"]


# -- under a running proxy ---------------------------------------------------------------


def _ask(text: str) -> dict[str, object]:
    return {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": text}]}


async def _action(proxy: Proxy, text: str) -> str:
    proxy.upstream.replies.append(Reply(content="An answer."))
    status, headers, _ = await proxy.post(_ask(text))
    assert status == 200
    return headers["x-guard-action"]


@pytest.mark.parametrize("proxy", [{"poll": 0.02}], indirect=True)
async def test_an_edited_policy_decides_the_next_request(proxy: Proxy, tmp_path: Path) -> None:
    """``strict`` blocks a controversial prompt; edited to flag it, the next request is
    flagged; broken, the edited policy stays in force."""
    assert await _action(proxy, "the election results") == "block"
    policy = tmp_path / "policies" / "strict.yaml"
    text = policy.read_text()
    with capture_logs() as logs:
        _touch_later(policy, text.replace("controversial: block", "controversial: flag", 1))
        await wait_until(lambda: any(e["event"] == "policy_reload" for e in logs))
    assert await _action(proxy, "the election results") == "flag"
    with capture_logs() as logs:
        _touch_later(policy, text.replace("controversial: block", "controversial: sometimes", 1))
        await wait_until(lambda: any(e["event"] == "policy_reload" for e in logs))
    (event,) = [e for e in logs if e["event"] == "policy_reload"]
    assert event["outcome"] == "rejected" and f"{policy}:" in event["errors"][0]
    assert await _action(proxy, "the election results") == "flag"  # the last good set
    async with proxy.http.get(proxy.admin_url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'guardproxy_policy_reloads_total{outcome="ok"} 1.0' in metrics
    assert 'guardproxy_policy_reloads_total{outcome="rejected"} 1.0' in metrics


@pytest.mark.parametrize("proxy", [{"poll": 0.02, "stream": "window"}], indirect=True)
async def test_a_request_in_flight_finishes_under_its_policy(proxy: Proxy,
                                                             tmp_path: Path) -> None:
    """A stream that started under ``strict`` is still judged by it after a reload that
    would have let its answer through."""
    proxy.upstream.replies.append(Reply(chunks=["The ", "election ", "was ", "close."],
                                        delay_s=0.1))
    body = {**_ask("tell me the news"), "stream": True}
    answer = asyncio.create_task(proxy.post(body))
    await wait_until(lambda: bool(proxy.upstream_chats()))
    policy = tmp_path / "policies" / "strict.yaml"
    with capture_logs() as logs:
        _touch_later(policy, policy.read_text().replace("controversial: block",
                                                        "controversial: pass"))
        await wait_until(lambda: any(e["event"] == "policy_reload" for e in logs))
    status, _, raw = await answer
    assert status == 200 and b'"finish_reason":"content_filter"' in raw
    assert await _action(proxy, "the election results") == "pass"  # the next one: new set
