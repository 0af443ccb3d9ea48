"""Headless Debian Chromium driven by Selenium through Debian's chromedriver (an exactly matched pair).

Selenium is synchronous and the gateway under test runs on the test's event loop, so every browser call
goes through a thread (`await b.do(fn, ...)`): the loop keeps serving the pages the browser asks for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")


def chrome() -> webdriver.Chrome:
    """A fresh headless Chromium with performance logging (every request it makes can be listed)."""
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


class Browser:
    """One driver, async helpers for the tests, screenshots into `shots`."""

    def __init__(self, driver: webdriver.Chrome, shots: Path) -> None:
        self.driver = driver
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    async def do(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking driver call off the loop."""
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        """Navigate."""
        await self.do(self.driver.get, url)

    async def find(self, css: str, timeout: float = 10) -> WebElement:
        """The first element matching `css`, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.do(self.driver.find_elements, By.CSS_SELECTOR, css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {css!r} on {self.driver.current_url}: {self.driver.page_source[:2000]}")
            await asyncio.sleep(0.1)

    async def count(self, css: str) -> int:
        """How many elements match now."""
        return len(await self.do(self.driver.find_elements, By.CSS_SELECTOR, css))

    async def text(self) -> str:
        """The page's visible text ('' while a navigation replaces the page)."""
        try:
            return await self.do(lambda: self.driver.find_element(By.TAG_NAME, "body").text)
        except (StaleElementReferenceException, NoSuchElementException, WebDriverException):
            return ""  # e.g. "Node ... does not belong to the document" mid-navigation

    async def click(self, css: str) -> None:
        """Click the first element matching `css`."""
        el = await self.find(css)
        await self.do(el.click)  # returns once the page it opens has loaded

    async def type(self, css: str, value: str) -> None:
        """Type into a field."""
        el = await self.find(css)
        await self.do(el.clear)
        await self.do(el.send_keys, value)

    async def wait_text(self, needle: str, timeout: float = 10) -> None:
        """Wait until the page shows `needle`."""
        deadline = time.monotonic() + timeout
        while needle not in await self.text():
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not on {self.driver.current_url}: {(await self.text())[:2000]}")
            await asyncio.sleep(0.1)

    async def shot(self, name: str) -> Path:
        """Save a screenshot of the page."""
        path = self.shots / f"{name}.png"
        await self.do(self.driver.save_screenshot, str(path))
        return path

    def alert_open(self) -> bool:
        """Whether a JavaScript dialog is showing."""
        try:
            _ = self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return False
        return True

    async def requested_urls(self) -> list[str]:
        """Every URL the browser requested since the last call (from the performance log)."""
        entries = await self.do(self.driver.get_log, "performance")
        urls = []
        for e in entries:
            msg = json.loads(e["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(str(msg["params"]["request"]["url"]))
        return urls

    async def console_errors(self) -> list[str]:
        """Browser console messages at SEVERE (CSP violations land here)."""
        entries = await self.do(self.driver.get_log, "browser")
        return [str(e["message"]) for e in entries if e.get("level") == "SEVERE"]
