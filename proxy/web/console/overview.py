"""The console's first page: decisions over time per action (an SVG drawn here, no
script), and per tenant the blocks, flags and errors, the block rate, the top categories
and the guard's latency.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import orjson

from proxy.audit.store import Bucket, Store
from proxy.obs.metrics import Metrics
from proxy.web.console.markup import Safe, page, table, tag

COLORS = {"block": "#c0392b", "flag": "#d68910", "error": "#7d3c98"}
def chart(buckets: list[Bucket], since: float, now: float, width_s: float,
          size: tuple[int, int, int] = (720, 180, 24), label: bool = True) -> Safe:
    """Stacked bars of block / flag / error decisions per bucket (of every tenant given);
    ``size``: width, height and padding of the drawing."""
    wide, high, pad = size
    slots = max(1, int((now - since) // width_s) + 1)
    first = since - since % width_s
    stacks: dict[int, Counter[str]] = defaultdict(Counter)
    for bucket in buckets:
        if bucket.action in COLORS:
            stacks[int((bucket.start - first) // width_s)][bucket.action] += bucket.count
    top = max([sum(stack.values()) for stack in stacks.values()] or [1])
    bar = (wide - 2 * pad) / slots
    bars = []
    for slot, stack in sorted(stacks.items()):
        y = float(high - pad)
        for action, color in COLORS.items():
            height = stack[action] / top * (high - 2 * pad)
            if height:
                y -= height
                bars.append(tag("rect", tag("title", f"{stack[action]} {action}"),
                                x=f"{pad + slot * bar:.1f}", y=f"{y:.1f}",
                                width=f"{max(bar - 1, 1):.1f}", height=f"{height:.1f}",
                                fill=color))
    axis = tag("line", x1=pad, y1=high - pad, x2=wide - pad, y2=high - pad,
               stroke="#888")
    text = tag("text", f"max {top} per {int(width_s // 60)} min", x=pad, y=14,
               font_size="12", fill="#444") if label else None
    return tag("svg", axis, text, bars, viewBox=f"0 0 {wide} {high}", role="img",
               aria_label="decisions over time", class_="chart" if label else "spark")


def legend() -> Safe:
    return tag("p", [tag("span", action, class_=f"action {action}") for action in COLORS],
               class_="legend")


def _percentile(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f} ms"


def _by_tenant(counter: Any, stage: str | None = None) -> dict[str, float]:
    """A counter's total per tenant (of one stage), as this process counted it."""
    seen: dict[str, float] = defaultdict(float)
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and stage in (None, sample.labels.get("stage")):
                seen[sample.labels["tenant"]] += sample.value
    return seen


def block_rates(metrics: Metrics | None) -> dict[str, str]:
    """Blocked requests over requests, per tenant, since this process started."""
    if metrics is None:
        return {}
    metrics.flush()  # the requests that finished in the last moment too
    requests = _by_tenant(metrics.requests, "prompt")
    blocked = _by_tenant(metrics.blocked)
    return {tenant: f"{blocked.get(tenant, 0.0) / total:.1%}"
            for tenant, total in requests.items() if total}


def tenant_rows(recent: list[tuple[Any, ...]], rates: dict[str, str]
                ) -> list[tuple[object, ...]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    for tenant, action, names, guard_ms in recent:
        name = tenant or "(none)"
        counts[name][action] += 1
        categories[name].update(orjson.loads(names))
        if guard_ms is not None:
            latency[name].append(guard_ms)
    rows: list[tuple[object, ...]] = []
    for name in sorted(counts):
        rate = rates.get(name, "-")
        top = ", ".join(f"{c} ({n})" for c, n in categories[name].most_common(3)) or "-"
        rows.append((name, counts[name]["block"], counts[name]["flag"], counts[name]["error"],
                     rate, top, _percentile(latency[name], 0.5),
                     _percentile(latency[name], 0.95)))
    return rows


async def overview(store: Store, metrics: Metrics | None, hours: int) -> Safe:
    now = time.time()
    since = now - hours * 3600
    width = 3600.0 if hours > 6 else 300.0
    buckets = await store.buckets(since, width)
    recent = await store.recent(since)
    periods = tag("p", [tag("a", f"{h} h", href=f"/console?hours={h}",
                            class_="current" if h == hours else None) for h in (1, 6, 24, 168)],
                  class_="periods")
    rows = [(row[0], chart([b for b in buckets if (b.tenant or "(none)") == row[0]], since,
                           now, width, size=(160, 32, 2), label=False), *row[1:])
            for row in tenant_rows(recent, block_rates(metrics))]
    tenants = table(["tenant", "over time", "blocks", "flags", "guard errors", "block rate",
                     "top categories", "guard p50", "guard p95"], rows, id="tenants")
    note = tag("p", "Blocks, flags, errors, categories and latency: the recorded decisions of "
               "the period. Block rate: blocked requests over requests, as this process "
               "counted them since it started.", class_="muted")
    return page("Overview", periods, chart(buckets, since, now, width), legend(),
                tag("h2", f"Tenants, last {hours} h"), tenants, note)
