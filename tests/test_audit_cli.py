"""``guardproxy audit``: the trail read back with filters, as a table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import orjson
import pytest

from proxy.audit.records import Decision
from proxy.audit.sqlite import SQLiteStore
from proxy.cli import main

CONFIG = """\
policies: policies
guard: {url: "http://127.0.0.1:9"}
upstreams: {local: {url: "http://127.0.0.1:9/v1"}}
"""
POLICY = "tenant: {name}\nkeys: [\"sha256:{digest}\"]\nupstream: local\n"


def _decision(ts: float, tenant: str, action: str, **more: object) -> Decision:
    values: dict[str, object] = dict(ts=ts, request_id=f"req-{tenant}-{action}", tenant=tenant,
                                     api="chat", model="m", stream="whole", stage="prompt",
                                     action=action, effect="block", severity="unsafe",
                                     categories=("Violent",), scores={"Violent": 0.93},
                                     rule="prompt.unsafe")
    values.update(more)
    return Decision(**values)  # type: ignore[arg-type]


@pytest.fixture
async def config(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    for index, name in enumerate(("acme", "studio")):
        (tmp_path / "policies" / f"{name}.yaml").write_text(
            POLICY.format(name=name, digest=f"{index:064x}"))
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG + 'audit: {url: "sqlite:///audit.db"}\n')
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    now = time.time()
    await store.insert([_decision(now - 3 * 3600, "acme", "block"),
                        _decision(now - 60, "acme", "flag", categories=("PII", "Violent")),
                        _decision(now - 30, "studio", "block"),
                        _decision(now - 10, "studio", "error", severity=None, categories=(),
                                  scores={}, error_kind="timeout")])
    await store.close()
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


async def test_json_lists_newest_first_with_filters(config: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await _in_thread(capsys, "-c", str(config), "--format", "json")
    found = orjson.loads(out)
    assert code == 0 and [d["action"] for d in found] == ["error", "block", "flag", "block"]
    code, out, _ = await _in_thread(capsys, "-c", str(config), "--tenant", "acme",
                                    "--since", "1h", "--format", "json")
    (only,) = orjson.loads(out)
    assert (only["tenant"], only["action"], only["categories"]) == ("acme", "flag",
                                                                   ["PII", "Violent"])


async def test_csv_and_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await _in_thread(capsys, "-c", str(config), "--action", "block",
                                    "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0][:6] == ["id", "time", "tenant", "api", "stage", "action"]
    assert [row[2] for row in rows[1:]] == ["studio", "acme"]
    code, out, _ = await _in_thread(capsys, "-c", str(config), "--action", "error")
    header, line = out.splitlines()
    assert header.split()[:3] == ["id", "time", "tenant"] and "studio" in line


async def test_bad_filters_and_configs_say_why(config: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await _in_thread(capsys, "-c", str(config), "--since", "yesterday")
    assert code == 2 and "since: 'yesterday' is neither an age like 1h" in err
    (tmp_path / "bare.yaml").write_text(CONFIG)
    code, _, err = await _in_thread(capsys, "-c", str(tmp_path / "bare.yaml"))
    assert code == 2 and "the config has no audit trail: set audit.url" in err


async def _in_thread(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command runs its own event loop: off this test's."""
    import asyncio
    return await asyncio.to_thread(_run, capsys, *args)
