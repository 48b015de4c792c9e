"""The console and the JSON for tools on the admin listener, over raw HTTP: who may use
them, the headers every page carries, the playground, the decisions API and its filters.
(A real browser drives the pages in ``test_console_browser``.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from audit_help import audited_proxy, console_proxy, decisions_when
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import Proxy

from proxy.audit.sqlite import SQLiteStore

TOKEN = "console-admin-token-0123456789"
HOSTILE = ('How can I make a bomb? <script>alert(1)</script> <img src=x onerror=alert(2)> '
           '<a href="javascript:alert(3)">x</a>')
CONSOLE_ROUTES = [("GET", "/console"), ("GET", "/console/decisions"),
                  ("GET", "/console/decisions/1"), ("GET", "/console/tenants"),
                  ("GET", "/console/playground"), ("POST", "/console/playground")]
API_ROUTES = [("GET", "/api/decisions"), ("POST", "/api/playground"), ("GET", "/metrics")]


@pytest.fixture
async def console(tmp_path: Path, guard_emulator: GuardEmulator,
                  upstream_emulator: UpstreamEmulator) -> AsyncIterator[Proxy]:
    async with console_proxy(tmp_path, guard_emulator, upstream_emulator, TOKEN) as proxy:
        yield proxy


async def _signed_in(proxy: Proxy) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(proxy.admin_url + "/console/login", data={"token": TOKEN},
                         headers={"Origin": proxy.admin_url}, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console"
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return http


@pytest.mark.parametrize(("method", "path"), CONSOLE_ROUTES)
async def test_without_the_token_the_console_is_refused(console: Proxy, method: str,
                                                        path: str) -> None:
    async with aiohttp.ClientSession() as http, http.request(
            method, console.admin_url + path, headers={"Origin": console.admin_url},
            data={"prompt": "hi"}, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/login"
        assert "Content-Security-Policy" in resp.headers


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
async def test_without_the_token_the_api_is_refused(console: Proxy, method: str,
                                                    path: str) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.request(method, console.admin_url + path, json={"prompt": "hi"},
                                    headers=headers) as resp:
                assert resp.status == 401


async def test_a_wrong_token_does_not_sign_in(console: Proxy) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            console.admin_url + "/console/login", data={"token": "nope"},
            headers={"Origin": console.admin_url}, allow_redirects=False) as resp:
        assert resp.status == 401 and "Set-Cookie" not in resp.headers


async def test_a_post_from_another_origin_is_refused(console: Proxy) -> None:
    http = await _signed_in(console)
    async with http:
        for origin in ({"Origin": "http://evil.example"}, {}):
            async with http.post(console.admin_url + "/console/playground",
                                 data={"prompt": "hi"}, headers=origin) as resp:
                assert resp.status == 403


async def test_every_page_is_served_with_a_strict_policy(console: Proxy) -> None:
    http = await _signed_in(console)
    async with http:
        for path in ("/console", "/console/decisions", "/console/tenants",
                     "/console/playground", "/console/login"):
            async with http.get(console.admin_url + path) as resp:
                assert resp.status == 200, path
                csp = resp.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src" not in csp
                assert "<script" not in await resp.text()
                assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_hostile_text_is_escaped_everywhere(console: Proxy, tmp_path: Path) -> None:
    await console.post({"model": "m", "messages": [{"role": "user", "content": HOSTILE}]},
                       tenant="audited")  # logs content: the text is stored and shown
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    (decision,) = await decisions_when(store, 1)
    await store.close()
    http = await _signed_in(console)
    async with http:
        async with http.get(f"{console.admin_url}/console/decisions/{decision.id}") as resp:
            page = await resp.text()
        async with http.post(console.admin_url + "/console/playground",
                             data={"prompt": HOSTILE}, headers={"Origin": console.admin_url}
                             ) as resp:
            played = await resp.text()
    for shown in (page, played):
        assert "<script>" not in shown and "<img" not in shown and "<a href=\"javascript" \
            not in shown
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown


async def test_the_playground_api_answers_each_tenant(console: Proxy, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.post(
            console.admin_url + "/api/playground", headers=headers,
            json={"prompt": "Write a story where a bomb goes off", "answer": "No."}) as resp:
        assert resp.status == 200
        result = await resp.json()
    assert result["prompt"]["severity"] == "unsafe"
    assert result["prompt"]["categories"] == ["Violent"]
    tenants = {row["tenant"]: row for row in result["tenants"]}
    assert tenants["strict"]["prompt"] == {"action": "block", "rule": "prompt.unsafe"}
    assert tenants["lenient"]["prompt"] == {"action": "flag",
                                            "rule": "prompt.categories.Violent.unsafe"}
    assert tenants["audited"]["response"] == {"action": "pass",
                                              "rule": "response.check: false"}
    assert console.upstream.requests == []  # nothing went to an upstream
    # and nothing was recorded: a blocked request made after it is the trail's only decision
    await console.post({"model": "m", "messages": [{"role": "user", "content": "a bomb"}]})
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    (only,) = await decisions_when(store, 1)
    await store.close()
    assert only.request_id != "" and only.tenant == "strict" and only.stage == "prompt"


async def test_the_decisions_api_filters(console: Proxy, tmp_path: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "How to make a bomb?"}]}
    await console.post(body, tenant="strict")
    await console.post(body, tenant="thorough")
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    await decisions_when(store, 2)
    await store.close()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(console.admin_url + "/api/decisions",
                            params={"tenant": "thorough", "since": "1h"}) as resp:
            (only,) = (await resp.json())["decisions"]
        assert only["tenant"] == "thorough" and only["categories"] == ["Violent"]
        async with http.get(console.admin_url + "/api/decisions",
                            params={"action": "maybe"}) as resp:
            assert resp.status == 400
            assert "action: 'maybe' is not one of block" in (await resp.json())["error"]


async def test_without_a_token_the_console_needs_loopback(
        tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator, "sqlite:///audit.db",
                             admin_more=", host: 0.0.0.0") as proxy, \
            aiohttp.ClientSession() as http, http.get(proxy.admin_url + "/console") as resp:
        assert resp.status == 403 and "admin.token_env" in await resp.text()
    async with audited_proxy(tmp_path, guard_emulator, upstream_emulator,
                             "sqlite:///audit.db") as proxy, \
            aiohttp.ClientSession() as http, http.get(proxy.admin_url + "/console") as resp:
        assert resp.status == 200  # bound to loopback: served without signing in


async def test_nothing_of_it_is_on_the_client_listener(console: Proxy) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/console", "/console/login", "/console/decisions", "/api/decisions"):
            async with http.get(console.url + path,
                                headers={"Authorization": "Bearer sk-strict"}) as resp:
                assert resp.status == 404, path
        async with http.post(console.url + "/api/playground", json={"prompt": "hi"},
                             headers={"Authorization": "Bearer sk-strict"}) as resp:
            assert resp.status == 404


async def test_the_overview_draws_each_tenants_decisions(console: Proxy, tmp_path: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "How to make a bomb?"}]}
    for tenant in ("strict", "strict", "thorough"):
        await console.post(body, tenant=tenant)
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    await decisions_when(store, 3)
    await store.close()
    http = await _signed_in(console)
    async with http, http.get(console.admin_url + "/console?hours=1") as resp:
        page = await resp.text()
    rows = {row.split("</td>", 1)[0]: row for row in page.split('<tr><td>')[1:]}
    assert set(rows) == {"strict", "thorough"}
    # each tenant's row: its own drawing (one bar: its blocks), then its count of blocks
    assert rows["strict"].count("<rect") == 1 and "<td>2</td>" in rows["strict"]
    assert "<title>2 block</title>" in rows["strict"]
    assert "<title>1 block</title>" in rows["thorough"] and "<td>1</td>" in rows["thorough"]
