"""A real headless Chromium for tests that drive web pages: Debian's ``chromium`` and
``chromium-driver`` through Selenium.  Nothing is downloaded, ever: the driver and the
browser are given by path (``Service(executable_path=...)``, ``binary_location``), so
Selenium Manager is never asked, and ``SE_OFFLINE`` keeps it offline were it asked anyway.
Without them the ``browser`` fixture skips, unless ``CI`` is set: there it fails
(``.ci/run`` installs both).

One browser serves the session (starting it takes under a second); :func:`fresh` gives a
test a clean one: no dialog open, no cookies, no cache, at ``about:blank``.  Call it first:
cookies do not tell ports apart, so one test's ``127.0.0.1`` cookies reach the next test's
server.

The pattern: the tests are ``async`` (pytest-asyncio's auto mode) and the servers the
browser visits run on the test's event loop, like every other server of the suite (the
``proxy`` fixture, an ``aiohttp.test_utils.TestServer`` on port 0).  Selenium blocks, so
write the browser's steps as a plain function and run it in a worker thread with
``asyncio.to_thread``: the loop keeps serving the pages the browser asks for meanwhile.
A Selenium call made directly in the async test blocks the loop, the page it waits for is
never served, and the call times out::

    def title_of(driver: Chrome, url: str) -> str:
        fresh(driver)
        driver.get(url)
        assert not alert_opened(driver)
        return wait_for(driver, visibility_of_element_located((By.ID, "title"))).text

    async def test_the_page_loads(browser: Chrome) -> None:
        async with TestServer(app, host="127.0.0.1") as server:
            assert await asyncio.to_thread(title_of, browser, str(server.make_url("/"))) == "Ok"

Each wait is for a condition (:func:`wait_for`), never for a time.  JavaScript dialogs are
left open by the driver (``unhandledPromptBehavior: ignore``) for :func:`alert_opened` to
see; the console's errors, where the browser reports what a Content-Security-Policy
refused, are :func:`console_errors`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver import Chrome, ChromeOptions, ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1280, 900)
PAGE_LOAD_S = 30.0  # a page that never loads fails the test instead of hanging it

T = TypeVar("T")


def start_chrome(profile: str) -> Chrome:
    """Headless Chromium under the system chromedriver, its profile in ``profile``."""
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size={},{}".format(*WINDOW), f"--user-data-dir={profile}"):
        options.add_argument(argument)
    if sys.platform != "win32" and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.unhandled_prompt_behavior = "ignore"  # a dialog stays open for alert_opened
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_S)
    return driver


@pytest.fixture(scope="session")
def browser() -> Iterator[Chrome]:
    """One headless Chromium for the session (see the module docstring)."""
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if path is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{' and '.join(missing)} not installed (.ci/run installs them)")
        pytest.skip(f"{' and '.join(missing)} not installed "
                    "(apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        driver = start_chrome(profile)
        try:
            yield driver
        finally:
            driver.quit()


def alert_opened(driver: Chrome) -> bool:
    """Whether a JavaScript dialog (alert, confirm, prompt) is open; if one is, it is
    dismissed."""
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return False
    alert.dismiss()
    return True


def console_errors(driver: Chrome) -> list[str]:
    """The messages of the console's errors logged since the last call (the log is read
    once), e.g. each ``Refused to execute inline script because it violates the following
    Content Security Policy directive: ...``; empty if the driver keeps no browser log."""
    try:
        entries: list[dict[str, object]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    except WebDriverException:
        return []
    return [str(entry.get("message", "")) for entry in entries if entry.get("level") == "SEVERE"]


def wait_for(driver: Chrome, condition: Callable[[Chrome], Literal[False] | T],
             timeout: float = 5.0) -> T:
    """The first value of ``condition`` that is not false (asked every 0.1 s), e.g. of
    ``selenium.webdriver.support.expected_conditions.alert_is_present()``; fails after
    ``timeout`` seconds."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        condition, f"not so after {timeout} s: {condition!r}")


def fresh(driver: Chrome) -> None:
    """The browser as a test wants it: no dialog open (up to 20 in a row are dismissed),
    at ``about:blank``, no cookies (of any site), no cache, no console error pending."""
    for _ in range(20):
        if not alert_opened(driver):
            break
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    console_errors(driver)


def submit(driver: Chrome, button: str) -> None:
    """Click a form's submit button (a CSS selector) and wait for the page it leads to: the
    button is gone from the document."""
    clicked = driver.find_element(By.CSS_SELECTOR, button)
    clicked.click()

    def left(_: Chrome) -> bool:
        try:
            clicked.is_enabled()
        except WebDriverException:  # stale, or "does not belong to the document" mid-way
            return True
        return False

    wait_for(driver, left)
