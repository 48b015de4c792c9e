"""The console's pages and the admin listener's JSON for tools: each handler reads the
trail (or the runtime) and renders it with ``markup``; every value shown is escaped."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from proxy.audit.query import APIS, filters_from
from proxy.audit.records import ACTIONS, Decision
from proxy.audit.schema import Filters
from proxy.audit.store import Store
from proxy.config import CATEGORIES
from proxy.errors import GuardError
from proxy.web.console.auth import html_response
from proxy.web.console.markup import Safe, page, select, table, tag
from proxy.web.console.overview import overview
from proxy.web.console.playground import playground_page, result_view, texts_of, try_texts
from proxy.web.console.style import CSS
from proxy.web.state import RUNTIME, SERVED, Runtime

PAGE = 50


def _runtime(request: web.Request) -> Runtime:
    return request.app[SERVED][RUNTIME]


def _store(request: web.Request) -> Store | None:
    audit = _runtime(request).audit
    return None if audit is None else audit.store


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


NO_TRAIL = tag("p", "The audit trail is off: set audit.url in the server config.",
               class_="error")


async def css(request: web.Request) -> web.Response:
    return web.Response(text=CSS, content_type="text/css",
                        headers={"Cache-Control": "max-age=300"})


async def overview_page(request: web.Request) -> web.Response:
    store = _store(request)
    if store is None:
        return html_response(page("Overview", NO_TRAIL))
    hours = request.query.get("hours", "24")
    count = int(hours) if hours.isdigit() and 0 < int(hours) <= 24 * 90 else 24
    return html_response(await overview(store, _runtime(request).metrics, count))


def _filters(request: web.Request) -> Filters:
    try:
        return filters_from(request.query, time.time())
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None


def _page_number(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 100_000 else 1


def _filter_form(request: web.Request) -> Safe:
    q = request.query
    tenants = sorted(p.tenant for p in _runtime(request).policies)
    return tag("form", select("tenant", tenants, q.get("tenant"), "Tenant"),
               select("action", ACTIONS, q.get("action"), "Action"),
               select("category", CATEGORIES, q.get("category"), "Category"),
               select("api", APIS, q.get("api"), "API"),
               tag("label", "Since", tag("input", name="since", value=q.get("since", ""),
                                         placeholder="1h, 7d or 2026-12-07T10:00")),
               tag("label", "Until", tag("input", name="until", value=q.get("until", ""))),
               tag("button", "Filter", type="submit"), method="get",
               action="/console/decisions", class_="filters")


def _row(d: Decision) -> tuple[object, ...]:
    return (tag("a", when(d.ts), href=f"/console/decisions/{d.id}"), d.tenant or "-", d.api,
            d.stage, tag("span", d.action, class_=f"action {d.action}"), d.severity or "-",
            ", ".join(d.categories) or "-", d.rule or "-")


async def decisions_page(request: web.Request) -> web.Response:
    store = _store(request)
    if store is None:
        return html_response(page("Decisions", NO_TRAIL))
    number = _page_number(request)
    found = await store.decisions(_filters(request), limit=PAGE + 1, offset=(number - 1) * PAGE)
    query = {k: v for k, v in request.query.items() if k != "page" and v}
    links = [tag("a", "Newer", href="?" + urlencode({**query, "page": number - 1}))
             if number > 1 else None,
             tag("a", "Older", href="?" + urlencode({**query, "page": number + 1}))
             if len(found) > PAGE else None]
    shown = table(["time (UTC)", "tenant", "API", "stage", "action", "severity", "categories",
                   "rule"], [_row(d) for d in found[:PAGE]], id="decisions")
    empty = tag("p", "No decision matches.", class_="muted") if not found else None
    return html_response(page("Decisions", _filter_form(request), shown, empty,
                              tag("p", links, class_="pages")))


def _detail(d: Decision) -> Safe:
    ranked = sorted(d.scores.items(), key=lambda item: -item[1])
    scores = table(["category", "score"], [(name, f"{score:.3f}") for name, score in ranked])
    cut = (f"{d.released_chars} characters released before the cut"
           if d.released_chars is not None and d.effect == "block" and d.stage == "response"
           else None)
    facts = [("Time (UTC)", when(d.ts)), ("Request id", d.request_id), ("Tenant", d.tenant),
             ("API", d.api), ("Model", d.model), ("Stream", d.stream), ("Stage", d.stage),
             ("Action", tag("span", d.action, class_=f"action {d.action}")),
             ("Effect", d.effect), ("Severity", d.severity), ("Categories",
                                                               ", ".join(d.categories) or "none"),
             ("Refusal", None if d.refusal is None else ("yes" if d.refusal else "no")),
             ("Guard error", d.error_kind), ("Rule that decided", d.rule),
             ("Guard latency", None if d.guard_ms is None else f"{d.guard_ms:.1f} ms"),
             ("Stream cut", cut), ("Leaked characters", d.leaked_chars), ("Status", d.status)]
    listing = tag("dl", [(tag("dt", k), tag("dd", v)) for k, v in facts if v is not None],
                  id="facts")
    return Safe(listing + tag("h2", "Scores") + scores + tag("h2", "Text") + _text(d))


def _text(d: Decision) -> Safe:
    if d.text is not None:
        return tag("pre", d.text, id="text")
    if d.text_hash:
        return tag("p", "Text not stored (the tenant does not log content); its keyed hash: "
                   f"{d.text_hash}", class_="muted")
    return tag("p", "No text.", class_="muted")


async def decision_page(request: web.Request) -> web.Response:
    store = _store(request)
    raw = request.match_info["id"]
    found = await store.decision(int(raw)) if store is not None and raw.isdigit() else None
    if found is None:
        return html_response(page("Decision", tag("p", "No such decision.")), status=404)
    return html_response(page(f"Decision {found.id}", _detail(found)))


def plain(value: Any) -> Any:
    """A policy's value as JSON: dataclasses and mappings as objects, enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return sorted(plain(v) for v in value) if isinstance(value, frozenset | set) else [
            plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def _policy_view(policy: Any) -> str:
    shown = plain(policy)
    shown.pop("keys", None)  # digests of the tenant's keys: not for display
    return orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode()


async def tenants_page(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    reloaded = when(runtime.reloaded_at) if runtime.reloaded_at else "-"
    sections = [tag("section", tag("h2", p.tenant),
                    tag("p", f"File: {p.source} · in force since {reloaded} UTC",
                        class_="muted"),
                    tag("pre", _policy_view(p)), class_="tenant")
                for p in sorted(runtime.policies, key=lambda p: p.tenant)]
    note = tag("p", "Each policy after defaults, as in force now.", class_="muted")
    return html_response(page("Tenants", note, sections))


async def playground_get(request: web.Request) -> web.Response:
    return html_response(playground_page())


async def playground_post(request: web.Request) -> web.Response:
    form = await request.post()
    prompt, answer = texts_of({k: str(v) for k, v in form.items()})
    runtime = _runtime(request)
    try:
        result = await try_texts(runtime.guard, runtime.policies, prompt, answer)
    except GuardError as exc:
        shown = tag("p", f"The guard could not judge it ({exc.kind}): {exc.message}",
                    class_="error")
        return html_response(playground_page(prompt, answer or "", shown), status=502)
    return html_response(playground_page(prompt, answer or "", result_view(result)))


async def api_decisions(request: web.Request) -> web.Response:
    store = _store(request)
    if store is None:
        return web.json_response({"error": "the audit trail is off (audit.url)"}, status=404)
    try:
        filters = filters_from(request.query, time.time())
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    number = _page_number(request)
    found = await store.decisions(filters, limit=PAGE, offset=(number - 1) * PAGE)
    return web.json_response({"decisions": [d.as_json() for d in found], "page": number},
                             dumps=lambda v: orjson.dumps(v).decode())
