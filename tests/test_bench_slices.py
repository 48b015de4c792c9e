"""``bench/run.py`` measures each system of a round in interleaved slices and reports the
median of the rounds' ratios: what it merges and pairs must add up (see Noise in
``bench/README.md``)."""

from __future__ import annotations

from typing import Any

import pytest
from benchmod import bench_run

RUN = bench_run()


def _row(system: str, *, rps: float, seconds: float, cpu_ms: float, round_: int = 1,
         **extra: Any) -> Any:
    requests = int(rps * seconds)
    fields: dict[str, Any] = dict(
        system=system, label=system, mode="non-stream", api="chat", stream=False,
        connections=32, rps=rps, p50_ms=10.0, p99_ms=20.0, requests=requests,
        guard_calls_per_request=2.0, upstream_calls_per_request=1.0,
        sut_cpu_percent=100.0, sut_cpu_ms_per_request=cpu_ms, load_cpu_percent=20.0,
        sut_core_percent=100.0, wrk_cpu_percent=5.0, guard_cpu_percent=5.0,
        upstream_cpu_percent=5.0, peak_rss_mib=50.0, round=round_,
        wrk={"p75_ms": 12.0, "p90_ms": 15.0, "seconds": seconds, "non_2xx": 0})
    fields.update(extra)
    return RUN.Row(**fields)


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_every_system_gets_its_slices_forwards_then_backwards(round_: int) -> None:
    a, b = RUN.System("baseline1", "a"), RUN.System("proxy", "b")
    order = RUN.slice_order([a, b], 3, round_)
    first, second = (a, b) if round_ % 2 else (b, a)
    assert order == [first, second, second, first, first, second]
    assert [order.count(a), order.count(b)] == [3, 3]


def test_merged_slices_are_one_run_over_all_their_time() -> None:
    parts = [_row("proxy", rps=1000, seconds=5, cpu_ms=0.4, p99_ms=30.0, peak_rss_mib=51.0),
             _row("proxy", rps=3000, seconds=5, cpu_ms=0.3, other_sut_cpu_percent=12.0),
             _row("proxy", rps=2000, seconds=5, cpu_ms=0.5, p99_ms=10.0,
                  errors=["connect 1"])]
    merged = RUN.merge_slices(parts)
    assert merged.requests == 30_000
    assert merged.rps == pytest.approx(2000)  # 30,000 requests in 15 s, not a mean of rates
    # CPU per request weighted by requests: (5000*0.4 + 15000*0.3 + 10000*0.5) / 30000
    assert merged.sut_cpu_ms_per_request == pytest.approx(11.5 / 30)
    assert (merged.p50_ms, merged.p99_ms) == (10.0, 20.0)  # the slices' medians
    assert merged.peak_rss_mib == 51.0 and merged.other_sut_cpu_percent == 12.0
    assert merged.errors == ["connect 1"] and merged.wrk["seconds"] == 15
    assert [s["rps"] for s in merged.slices] == [1000, 3000, 2000]


def test_the_ratio_is_the_median_of_each_rounds_pair() -> None:
    runs = [_row("baseline1", rps=4000, seconds=15, cpu_ms=0.25, round_=1),
            _row("proxy", rps=2000, seconds=15, cpu_ms=0.5, round_=1),
            _row("baseline1", rps=3000, seconds=15, cpu_ms=0.3, round_=2),
            _row("proxy", rps=2100, seconds=15, cpu_ms=0.45, round_=2),
            _row("baseline1", rps=2000, seconds=15, cpu_ms=0.4, round_=3),
            _row("proxy", rps=1300, seconds=15, cpu_ms=0.7, round_=3)]
    assert RUN.round_ratios(runs, "non-stream", "baseline1") == pytest.approx([0.5, 0.7, 0.65])
    combined = RUN.combine(runs)
    # 0.65, the median of the pairs, where the median rps of each (2,000 / 3,000) says 0.67
    assert RUN._ratios(runs, combined)["non-stream"]["baseline1"] == pytest.approx(0.65)
