"""``guardproxy audit``: the trail's decisions, newest first, as a table, JSON or CSV —
read from the store the config's ``audit.url`` names, with the console's filters."""

from __future__ import annotations

import argparse
import csv
import io
import time
from datetime import UTC, datetime

import orjson

from proxy.audit.query import filters_from
from proxy.audit.records import ACTIONS, Decision
from proxy.audit.setup import make_store
from proxy.config import Config

COLUMNS = ("id", "time", "tenant", "api", "stage", "action", "severity", "categories", "rule",
           "request_id")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="only this tenant's decisions")
    parser.add_argument("--action", choices=ACTIONS, help="only decisions with this action")
    parser.add_argument("--category", help="only decisions naming this category")
    parser.add_argument("--api", choices=("chat", "responses", "messages"))
    parser.add_argument("--since", help="an age (30m, 1h, 7d) or a date (2026-12-07T10:00, UTC)")
    parser.add_argument("--until", help="the same, the end (exclusive)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")


def _cells(d: Decision) -> tuple[str, ...]:
    when = datetime.fromtimestamp(d.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (str(d.id), when, d.tenant or "-", d.api, d.stage, d.action, d.severity or "-",
            "; ".join(d.categories) or "-", d.rule or "-", d.request_id)


def render(found: list[Decision], form: str) -> str:
    if form == "json":
        return orjson.dumps([d.as_json() for d in found], option=orjson.OPT_INDENT_2).decode()
    rows = [COLUMNS, *(_cells(d) for d in found)]
    if form == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        return out.getvalue().rstrip("\n")
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


async def report(config: Config, args: argparse.Namespace) -> str:
    """The decisions the arguments ask for, rendered; ``ValueError`` for a bad filter or
    a config without an audit trail."""
    store = make_store(config.server)
    if store is None:
        raise ValueError("the config has no audit trail: set audit.url")
    values = {k: getattr(args, k) for k in ("tenant", "action", "category", "api", "since",
                                            "until") if getattr(args, k)}
    filters = filters_from(values, time.time())
    await store.open()
    try:
        found = await store.decisions(filters, limit=max(1, args.limit))
    finally:
        await store.close()
    return render(found, args.format)
