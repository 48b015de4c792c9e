"""``bench/soak.py`` kept from rotting: a short run end to end, and its checks catching what
they are there to catch."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402


async def test_a_short_soak_passes_its_cross_checks() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "300",
        "--concurrency", "30", "--settle", "0.4", "--guard-timeout", "0.3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    table = out.decode()
    assert process.returncode == 0, table
    rows = dict(line.strip("|").split("|", 1) for line in table.splitlines() if "|" in line)
    rows = {name.strip(): value.strip() for name, value in rows.items()}
    assert rows["violations"] == "0" and rows["requests (warm-up + measured)"] == "60 + 300"
    assert any(name.startswith("injected guard") for name in rows)
    assert any(name.startswith("injected upstream") for name in rows)


def _specs() -> list[soak.Spec]:
    return [soak.Spec("soak-main-0", "closed", False, unsafe=True),
            soak.Spec("soak-main-1", "open", True, gfault="prompt:hang"),
            soak.Spec("soak-main-2", "closed", False, gfault="prompt:500")]


def test_an_unchecked_upstream_request_is_a_violation() -> None:
    guard, upstream = soak.SoakGuard(hang_s=1.0), soak.SoakUpstream()
    guard.records = [soak.GuardRecord("soak-main-0", "prompt", "unsafe"),
                     soak.GuardRecord("soak-main-1", "prompt", "fault:hang"),
                     soak.GuardRecord("soak-main-2", "prompt", "fault:500")]
    # the fail-open tenant's failed check may go upstream; nothing else may
    upstream.records = [soak.UpstreamRecord("soak-main-1", True, None)]
    assert soak.check_upstream(_specs(), guard, upstream) == []
    upstream.records.append(soak.UpstreamRecord("soak-main-2", False, None))
    upstream.records.append(soak.UpstreamRecord("soak-main-0", False, None))
    problems = soak.check_upstream(_specs(), guard, upstream)
    assert len(problems) == 2 and all("after prompt checks" in p for p in problems)


def test_malformed_answers_are_told_apart_from_errors() -> None:
    assert soak.classify(502, b'{"error": {"message": "m", "type": "t"}}', False) == "http-502"
    assert soak.classify(200, b"data: {}\n\n", True).startswith("malformed")
    assert soak.classify(500, b"<html>oops</html>", False).startswith("malformed")
    chunk = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": null}]}\n\n'
    cut = b'data: {"error": {"message": "cut", "moderation": {}}}\n\ndata: [DONE]\n\n'
    assert soak.classify(200, chunk + cut, True) == "stream-error"
    assert soak.classify(200, chunk + cut.replace(b', "moderation": {}', b""),
                         True).startswith("malformed")
    trailing = b'data: {"choices": [], "moderation": {}}\n\ndata: [DONE]\n\n'
    assert soak.classify(200, chunk + trailing, True) == "malformed: no verdict on the last chunk"


def test_resources_that_grew_are_violations() -> None:
    before = soak.Resources(fds=14, threads=5, rss_kib=50_000)
    assert soak.check_resources(before, soak.Resources(14, 5, 54_000)) == []
    grown = soak.check_resources(before, soak.Resources(15, 6, 56_000))
    assert len(grown) == 3
