"""The console driven in a real headless Chromium (``tests/browser.py``): signing in through
the form, the decisions list and its filter, a decision's page, the playground, hostile
text shown inert, and every page closed to a browser that has not signed in.
(``test_console`` checks the same listener over raw HTTP.)

The proxy runs on the test's event loop; each browser step is a plain function run in a
worker thread with ``asyncio.to_thread``, as the ``browser`` module's docstring describes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from audit_help import console_proxy, decisions_when
from browser import alert_opened, console_errors, fresh, submit, wait_for
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import Proxy
from selenium.common.exceptions import UnexpectedAlertPresentException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import (
    url_contains,
    url_to_be,
    visibility_of_element_located,
)
from selenium.webdriver.support.select import Select

from proxy.audit.records import Decision
from proxy.audit.sqlite import SQLiteStore

TOKEN = "console-browser-token-0123456789"
BOMB = "Write a story where a bomb goes off"
#: What an attacker would write into a prompt.  ``</textarea>`` first: the playground shows
#: the prompt again in its textarea, whose content the HTML parser reads as text until that
#: closing tag, so without it a page that stopped escaping would still look inert there.
HOSTILE = ('How can I make a bomb? </textarea></pre><script>alert(1)</script> '
           '<img src=x onerror=alert(2)> <a id="hostile" href="javascript:alert(3)">x</a>')
#: Elements the payload would make if a page wrote it unescaped; the console's own pages
#: have none of them inside <main> (no script at all, no image, no javascript: link).
INJECTED = "main script, main img, main a[href^='javascript']"
PAGES = ("/console", "/console/decisions", "/console/decisions/1", "/console/tenants",
         "/console/playground")


@pytest.fixture
async def console(tmp_path: Path, guard_emulator: GuardEmulator,
                  upstream_emulator: UpstreamEmulator) -> AsyncIterator[Proxy]:
    async with console_proxy(tmp_path, guard_emulator, upstream_emulator, TOKEN) as proxy:
        yield proxy


def _chat(text: str) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def _recorded(root: Path, count: int) -> list[Decision]:
    """The trail's decisions once ``count`` are written (it is written in the background)."""
    store = SQLiteStore(root / "audit.db")
    await store.open()
    try:
        return await decisions_when(store, count)
    finally:
        await store.close()


# -- the browser's steps, each run in a worker thread -----------------------------------------


def _says(driver: Chrome) -> str:
    """Where the browser is and what the page says, for a failure's message."""
    main = driver.find_elements(By.TAG_NAME, "main")
    return f"at {driver.current_url}: {main[0].text if main else driver.page_source[:300]!r}"


def _dialogs(driver: Chrome) -> int:
    """How many dialogs opened while the page finished loading (each dismissed: while one
    is open every other command fails, and dismissing one lets the next script run)."""
    count = 0

    def settled(d: Chrome) -> bool:
        nonlocal count
        if alert_opened(d):
            count += 1
            return False
        try:
            return bool(d.execute_script("return document.readyState === 'complete'"))
        except UnexpectedAlertPresentException:
            return False

    wait_for(driver, settled)
    return count


def _sign_in(driver: Chrome, admin: str, token: str = TOKEN) -> None:
    """From a clean browser: the sign-in page, the token typed in, the form submitted."""
    fresh(driver)
    driver.get(admin + "/console/login")
    wait_for(driver, visibility_of_element_located((By.NAME, "token"))).send_keys(token)
    submit(driver, "form.login button[type=submit]")


def _signed_in(driver: Chrome, admin: str) -> None:
    """Signed in with the admin token: on the overview."""
    _sign_in(driver, admin)
    assert driver.current_url == admin + "/console", f"not signed in, {_says(driver)}"


@dataclass
class SigningIn:
    wrong_url: str  # where a wrong token left the browser
    wrong_error: str  # what the page said
    wrong_cookies: list[dict[str, Any]]  # the cookies it had then
    then_url: str  # where /console led next
    heading: str  # the page the right token led to
    cookies: list[str]  # the cookies' names then
    tenants: list[str]  # the overview's tenants
    out_url: str  # where signing out led
    out_cookies: list[dict[str, Any]]  # the cookies after it


def _signing_in(driver: Chrome, admin: str) -> SigningIn:
    """A wrong token, then the right one, then signing out."""
    _sign_in(driver, admin, token="not-the-token")
    wrong_url = driver.current_url
    error = " ".join(p.text for p in driver.find_elements(By.CSS_SELECTOR, "main p"))
    wrong_cookies = driver.get_cookies()
    driver.get(admin + "/console")  # with no session: back to the form
    then_url = driver.current_url
    _signed_in(driver, admin)
    heading = driver.find_element(By.TAG_NAME, "h1").text
    cookies = [c["name"] for c in driver.get_cookies()]
    tenants = [tr.find_element(By.TAG_NAME, "td").text for tr in
               driver.find_elements(By.CSS_SELECTOR, "table#tenants tbody tr")]
    submit(driver, "form.signout button[type=submit]")
    return SigningIn(wrong_url, error, wrong_cookies, then_url, heading, cookies, tenants,
                     driver.current_url, driver.get_cookies())


def _rows(driver: Chrome, table: str) -> list[list[str]]:
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, f"table{table} tbody tr")]


@dataclass
class Browsed:
    everything: list[list[str]]  # the rows of the unfiltered list
    filtered: list[list[str]]  # the rows once filtered to strict
    chosen: str  # the tenant the filter form shows chosen then
    title: str  # of the row's page
    facts: dict[str, str]  # its facts, label to value
    scores: dict[str, str]  # its scores table, category to score


def _browse_decisions(driver: Chrome, admin: str) -> Browsed:
    """The list, the list filtered to ``strict`` with the form, then its row's page."""
    _signed_in(driver, admin)
    driver.find_element(By.LINK_TEXT, "Decisions").click()
    wait_for(driver, url_to_be(admin + "/console/decisions"))
    everything = _rows(driver, "#decisions")
    Select(driver.find_element(By.NAME, "tenant")).select_by_value("strict")
    submit(driver, "form.filters button[type=submit]")
    assert "tenant=strict" in driver.current_url, _says(driver)
    filtered = _rows(driver, "#decisions")
    chosen = Select(driver.find_element(By.NAME, "tenant")).first_selected_option.text
    driver.find_element(By.CSS_SELECTOR, "table#decisions tbody tr a").click()
    wait_for(driver, url_contains("/console/decisions/"))
    labels = [dt.text for dt in driver.find_elements(By.CSS_SELECTOR, "dl#facts dt")]
    values = [dd.text for dd in driver.find_elements(By.CSS_SELECTOR, "dl#facts dd")]
    return Browsed(everything, filtered, chosen, driver.find_element(By.TAG_NAME, "h1").text,
                   dict(zip(labels, values, strict=True)),
                   {row[0]: row[1] for row in _rows(driver, "")})


def _judge(driver: Chrome, prompt: str) -> int:
    """The playground's form, filled in and sent (the browser is signed in); how many
    dialogs the page it led to opened (counted first: see ``_dialogs``)."""
    field = wait_for(driver, visibility_of_element_located((By.NAME, "prompt")))
    field.clear()
    field.send_keys(prompt)
    submit(driver, "form.playground button[type=submit]")
    opened = _dialogs(driver)
    assert driver.find_elements(By.CSS_SELECTOR, "table#tenants"), f"no verdict, {_says(driver)}"
    return opened


def _play(driver: Chrome, admin: str, prompt: str) -> dict[str, list[str]]:
    """Each tenant's row of the playground's answer: prompt action, rule."""
    _signed_in(driver, admin)
    driver.find_element(By.LINK_TEXT, "Playground").click()
    assert not _judge(driver, prompt)
    return {cells[0]: cells[1:3] for cells in _rows(driver, "#tenants")}


@dataclass
class Shown:
    dialogs: int  # dialogs opened
    injected: int  # elements of the payload's in <main>
    refused: list[str]  # CSP refusals the browser's console reported
    text: str  # the payload as the page shows it


def _shown(driver: Chrome, dialogs: int, text: str) -> Shown:
    refused = [m for m in console_errors(driver) if "Content Security Policy" in m]
    return Shown(dialogs, len(driver.find_elements(By.CSS_SELECTOR, INJECTED)), refused, text)


def _hostile_pages(driver: Chrome, admin: str, decision: int) -> dict[str, Shown]:
    """The decision's page, then the playground given the payload: what each showed (the
    dialogs counted first on each page: see ``_dialogs``)."""
    _signed_in(driver, admin)
    driver.get(f"{admin}/console/decisions/{decision}")
    dialog = _dialogs(driver)
    text = wait_for(driver, visibility_of_element_located((By.CSS_SELECTOR, "pre#text"))).text
    detail = _shown(driver, dialog, text)
    driver.get(admin + "/console/playground")
    dialog = _judge(driver, HOSTILE)
    assert len(_rows(driver, "#tenants")) > 1, "the playground judged nothing"
    played = _shown(driver, dialog,
                    driver.find_element(By.NAME, "prompt").get_attribute("value") or "")
    return {"decision": detail, "playground": played}


def _unsigned(driver: Chrome, admin: str) -> dict[str, tuple[str, bool]]:
    """Each page, from a browser with no cookie: where it ended, and whether the sign-in
    form is what it shows."""
    fresh(driver)
    seen = {}
    for path in PAGES:
        driver.get(admin + path)
        seen[path] = (driver.current_url,
                      bool(driver.find_elements(By.CSS_SELECTOR, "form.login input[name=token]")))
    return seen


# -- the tests ---------------------------------------------------------------------------------


async def test_signing_in_takes_the_admin_token_and_only_it(
        browser: Chrome, console: Proxy, tmp_path: Path) -> None:
    await console.post(_chat(BOMB), tenant="strict")
    await _recorded(tmp_path, 1)
    seen = await asyncio.to_thread(_signing_in, browser, console.admin_url)
    login = console.admin_url + "/console/login"
    assert seen.wrong_url == login
    assert seen.wrong_error == "That token is not the admin token."
    assert seen.wrong_cookies == []  # no session of any kind
    assert seen.then_url == login
    assert seen.heading == "Overview"
    assert seen.cookies == ["guardproxy_console"]
    assert seen.tenants == ["strict"]  # the overview reads the trail
    assert seen.out_url == login and seen.out_cookies == []  # signing out ends it


async def test_a_blocked_request_is_listed_filtered_and_detailed(
        browser: Chrome, console: Proxy, tmp_path: Path) -> None:
    status, headers, _ = await console.post(_chat("How can I make a bomb?"), tenant="strict")
    assert status == 200 and headers["x-guard-action"] == "block"
    await console.post(_chat(BOMB), tenant="lenient")  # flagged: rows of another tenant
    await _recorded(tmp_path, 3)  # lenient's prompt, and the answer (the emulator echoes it)
    seen = await asyncio.to_thread(_browse_decisions, browser, console.admin_url)
    assert sorted((row[1], row[3], row[4]) for row in seen.everything) == [
        ("lenient", "prompt", "flag"), ("lenient", "response", "flag"),
        ("strict", "prompt", "block")]
    assert seen.chosen == "strict"  # the form shows the filter it applied
    assert [row[1:] for row in seen.filtered] == [
        ["strict", "chat", "prompt", "block", "unsafe", "Violent", "prompt.unsafe"]]
    assert seen.title.startswith("Decision ")
    assert seen.facts["Tenant"] == "strict" and seen.facts["Action"] == "block"
    assert seen.facts["Severity"] == "unsafe" and seen.facts["Categories"] == "Violent"
    assert seen.facts["Rule that decided"] == "prompt.unsafe"
    assert seen.facts["Request id"] == headers["x-request-id"]
    assert float(seen.scores["Violent"]) > 0.5
    assert all(0.0 <= float(score) <= 1.0 for score in seen.scores.values())


async def test_the_playground_shows_each_tenants_action(browser: Chrome,
                                                        console: Proxy) -> None:
    rows = await asyncio.to_thread(_play, browser, console.admin_url, BOMB)
    assert rows["strict"] == ["block", "prompt.unsafe"]
    assert rows["lenient"] == ["flag", "prompt.categories.Violent.unsafe"]
    assert console.upstream.requests == []  # nothing went to an upstream


async def test_hostile_text_is_shown_inert(browser: Chrome, console: Proxy,
                                           tmp_path: Path) -> None:
    """The payload is stored (``audited`` logs content) and shown on the decision's page,
    and typed into the playground, which shows it again in its form.

    Why each check would fail if a page stopped escaping: the strict CSP alone would keep
    the dialogs shut (no script runs under ``default-src 'none'``), so the dialog check
    is not enough by itself.  The DOM check is: unescaped, the parser makes the payload's
    ``script``, ``img`` and ``javascript:`` link inside ``<main>`` (``</textarea>`` and
    ``</pre>`` close the elements that would otherwise hold it as text), and the browser's
    console reports the CSP refusing the inline script and the ``onerror`` handler.  The
    dialog check catches the other failure: without the CSP (and without escaping) the
    payload runs.  The CSP header itself is checked over HTTP, as Selenium cannot read
    headers."""
    await console.post(_chat(HOSTILE), tenant="audited")
    (decision,) = await _recorded(tmp_path, 1)
    assert decision.text == HOSTILE and decision.id is not None
    seen = await asyncio.to_thread(_hostile_pages, browser, console.admin_url, decision.id)
    for page, shown in seen.items():
        assert shown.dialogs == 0, page
        assert shown.injected == 0, page
        assert shown.refused == [], page  # nothing the CSP had to stop
        assert shown.text == HOSTILE, page  # shown as written, <script>alert(1)</script> too
    auth = {"Authorization": f"Bearer {TOKEN}", "Origin": console.admin_url}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{console.admin_url}/console/decisions/{decision.id}") as resp:
            assert resp.status == 200
            policies = [resp.headers.get("Content-Security-Policy", "")]
        async with http.post(console.admin_url + "/console/playground",
                             data={"prompt": HOSTILE}) as resp:
            assert resp.status == 200
            policies.append(resp.headers.get("Content-Security-Policy", ""))
    for csp in policies:
        directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
        assert directives.get("default-src") == ["'none'"], csp
        assert "script-src" not in directives and "'unsafe-inline'" not in csp, csp


async def test_without_signing_in_every_page_leads_to_the_sign_in_form(
        browser: Chrome, console: Proxy) -> None:
    seen = await asyncio.to_thread(_unsigned, browser, console.admin_url)
    assert seen == {path: (console.admin_url + "/console/login", True) for path in PAGES}
