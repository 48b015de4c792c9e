"""``bench/guard_cost.py`` kept from rotting: a short run end to end, and what it reports is
what the guard emulator counted."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def test_a_short_run_reports_the_one_token_saving(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "guard_cost.py"), "--chats", "8",
        "--time-scale", "0", "--unsafe", "0.2", "--json", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    report, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, report.decode()
    rows = {(row["guard_api"], row["setup"]): row for row in json.loads(out.read_text())}
    for api in ("chat", "generate"):
        full, one = rows[(api, "full")], rows[(api, "one_token")]
        # the same traffic (how many window checks it makes depends on timing); a whole
        # verdict is ~10 tokens, one_token's 1 (a little more: the flagged prompts' categories,
        # read in a second call)
        assert one["requests"] == full["requests"]
        assert full["decoded_per_check"] > 8 and 1 < one["decoded_per_check"] <= 1.5
        assert one["first_call_decoded_max"] == 1
        assert full["guard_calls"] == full["checks"] and one["guard_calls"] > one["checks"]
    refusals = rows[("chat", "one_token + detect_refusal")]
    assert refusals["calls_per_request"] > rows[("chat", "one_token")]["calls_per_request"]
    assert "| chat | one_token |" in report.decode()
