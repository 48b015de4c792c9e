"""The headless browser of ``tests/browser.py`` sees what later tests need it to see: a
Content-Security-Policy that refuses inline scripts keeps every dialog shut (and the
console says what it refused), the same page without it opens dialogs, and a cookie a
form's answer sets ``HttpOnly; SameSite=Strict`` comes back on the next request while
``document.cookie`` does not show it.

The pages are served on each test's event loop (``TestServer`` on port 0); the browser's
steps run in a worker thread (``asyncio.to_thread``), as the module docstring of
``browser`` describes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer
from browser import alert_opened, console_errors, fresh, wait_for
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import (
    alert_is_present,
    text_to_be_present_in_element,
    visibility_of_element_located,
)

CSP = ("default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
HOSTILE = """<!doctype html>
<html><head><title>hostile</title></head><body>
<h1 id="title">Loaded</h1>
<script>alert(1)</script>
<img src=x onerror=alert(2)>
</body></html>"""
FORM = """<!doctype html>
<html><head><title>sign in</title></head><body>
<form method="post" action="/login"><input name="user" value="ada">
<button id="go" type="submit">Sign in</button></form>
</body></html>"""
SESSION = "s-0123456789abcdef"


def _html(text: str, *, csp: bool) -> web.Response:
    headers = {"Content-Security-Policy": CSP} if csp else {}
    return web.Response(text=text, content_type="text/html", headers=headers)


async def _guarded(_: web.Request) -> web.Response:
    return _html(HOSTILE, csp=True)


async def _bare(_: web.Request) -> web.Response:
    return _html(HOSTILE, csp=False)


async def _form(_: web.Request) -> web.Response:
    return _html(FORM, csp=True)


async def _login(request: web.Request) -> web.Response:
    """POST, then redirect, then GET: the session cookie is set on the POST's answer."""
    assert (await request.post())["user"] == "ada"
    response = web.Response(status=303, headers={"Location": "/echo"})
    response.set_cookie("session", SESSION, path="/", httponly=True, samesite="Strict")
    response.set_cookie("visible", "1", path="/", samesite="Strict")  # what scripts may read
    return response


async def _echo(request: web.Request) -> web.Response:
    came = "yes" if request.cookies.get("session") == SESSION else "no"
    return _html(f'<!doctype html><p id="cookie">cookie: {came}</p>', csp=True)


@asynccontextmanager
async def _site() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/guarded", _guarded)
    app.router.add_get("/bare", _bare)
    app.router.add_get("/form", _form)
    app.router.add_post("/login", _login)
    app.router.add_get("/echo", _echo)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


# -- the browser's steps, each run in a worker thread -----------------------------------------


def _visit_guarded(driver: Chrome, url: str) -> tuple[bool, str, list[str]]:
    """(a dialog opened, the title's text, the console's CSP refusals)."""
    fresh(driver)
    driver.get(url + "/guarded")  # returns once loaded: after the image's error event
    opened = alert_opened(driver)
    title = wait_for(driver, visibility_of_element_located((By.ID, "title"))).text
    refused: list[str] = []

    def both_refused(d: Chrome) -> bool:
        refused.extend(m for m in console_errors(d) if "Content Security Policy" in m)
        return len(refused) >= 2

    wait_for(driver, both_refused)
    return opened, title, refused


def _visit_bare(driver: Chrome, url: str) -> tuple[bool, str]:
    """(the inline script's dialog was seen, the text of the image handler's dialog)."""
    fresh(driver)
    driver.get(url + "/bare")
    wait_for(driver, alert_is_present())
    first = alert_opened(driver)
    second = wait_for(driver, alert_is_present())
    text = second.text
    second.dismiss()
    return first, text


def _sign_in(driver: Chrome, url: str) -> tuple[str, str, str]:
    """(the echo before signing in, after it, ``document.cookie`` after it)."""
    fresh(driver)
    driver.get(url + "/echo")
    before = wait_for(driver, visibility_of_element_located((By.ID, "cookie"))).text
    driver.get(url + "/form")
    wait_for(driver, visibility_of_element_located((By.ID, "go"))).click()
    wait_for(driver, text_to_be_present_in_element((By.ID, "cookie"), "yes"))
    after = driver.find_element(By.ID, "cookie").text
    cookies = driver.execute_script("return document.cookie")
    assert isinstance(cookies, str)
    return before, after, cookies


# -- the tests ---------------------------------------------------------------------------------


async def test_a_csp_that_refuses_inline_scripts_keeps_dialogs_shut(browser: Chrome) -> None:
    async with _site() as url:
        opened, title, refused = await asyncio.to_thread(_visit_guarded, browser, url)
    assert not opened
    assert title == "Loaded"
    assert any("inline script" in m for m in refused), refused
    assert any("inline event handler" in m for m in refused), refused


async def test_without_the_csp_the_dialogs_open(browser: Chrome) -> None:
    async with _site() as url:
        first, second = await asyncio.to_thread(_visit_bare, browser, url)
    assert first  # alert(1), the inline script
    assert second == "2"  # alert(2), the image's error handler
    assert not await asyncio.to_thread(alert_opened, browser)


async def test_an_httponly_strict_cookie_comes_back_but_scripts_do_not_see_it(
        browser: Chrome) -> None:
    async with _site() as url:
        before, after, cookies = await asyncio.to_thread(_sign_in, browser, url)
    assert before == "cookie: no"
    assert after == "cookie: yes"  # sent on the GET after the form's POST
    assert "visible=1" in cookies  # document.cookie is read, and shows what it may
    assert "session" not in cookies
    assert SESSION not in cookies
