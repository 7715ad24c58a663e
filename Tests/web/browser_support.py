"""Helpers for the browser tests (test_browser.py): a headless Chromium driven by Selenium, numbered
screenshots saved as test artifacts, and the few page interactions the tests repeat.

Chromium and its driver are Debian's (`chromium`, `chromium-driver`); Selenium is `selenium<4.52` from
PyPI (scripts/setup.sh --test installs all three).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM = os.environ.get("FERRY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FERRY_CHROMEDRIVER", "/usr/bin/chromedriver")

# Generous: a debug build on two cores, an agent process spawned per request.
WAIT = 30.0
TASK_WAIT = 240.0


def selenium():
    """The selenium modules, imported late so that a missing package fails with a clear message."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        pytest.fail("the browser tests need Selenium: python3 -m pip install 'selenium<4.52' "
                    "(or run scripts/setup.sh --test)", pytrace=False)
    return webdriver, Service, By, Keys, WebDriverWait, TimeoutException, StaleElementReferenceException


def make_driver(width: int = 1280, height: int = 900):
    """A headless Chromium whose page area is width × height CSS pixels."""
    webdriver, Service, *_ = selenium()
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver "
                        f"(scripts/setup.sh --test)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", "--lang=en-US", "--force-color-profile=srgb",
                     "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # --window-size sets the outer window; make the viewport itself the size asked for.
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    if inner != [width, height]:
        outer = driver.get_window_size()
        driver.set_window_size(outer["width"] + width - inner[0], outer["height"] + height - inner[1])
    driver.set_page_load_timeout(WAIT * 2)
    return driver


class Shots:
    """Numbered screenshots of one test: artifacts/browser/<test>/<NN>-<step>.png."""

    def __init__(self, driver, name: str):
        self.driver = driver
        self.directory = ARTIFACTS / name
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def __call__(self, step: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{re.sub(r'[^a-z0-9-]+', '-', step.lower())}.png"
        self.driver.save_screenshot(str(path))
        return path


def console_errors(driver) -> list[str]:
    """JavaScript errors the page logged (network failures of expected 4xx answers are left out)."""
    try:
        entries = driver.get_log("browser")
    except Exception:  # noqa: BLE001 - not every driver keeps logs
        return []
    return [entry["message"] for entry in entries
            if entry.get("level") == "SEVERE" and entry.get("source") != "network"]


def wait(driver, condition, timeout: float = WAIT, message: str = ""):
    """WebDriverWait that names what it waited for and shows where the page was when it gave up."""
    *_, WebDriverWait, TimeoutException, StaleElementReferenceException = selenium()
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"waited {timeout:.0f} s for {message or condition}; the page is {driver.current_url}:\n"
                             f"{page_text(driver)[:3000]}") from None


def page_text(driver) -> str:
    try:
        return driver.execute_script("return document.body ? document.body.innerText : ''")
    except Exception:  # noqa: BLE001
        return "(no page)"


def css(driver, selector: str):
    _, _, By, *_ = selenium()
    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver, selector: str):
    """The single element matching selector, waiting for it to be there."""
    _, _, By, *_ = selenium()
    return wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector), message=f"an element {selector}")


def attribute_selector(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'[{name}="{escaped}"]'


def log_in(driver, server, shots: Shots | None = None) -> None:
    """The way a person does it: open /login, type the token, press Sign in; lands on the file browser."""
    driver.get(server.url + "/login")
    token = one(driver, "input#token")
    if shots:
        shots("login page")
    token.send_keys(server.token)
    one(driver, "#login-submit").click()
    wait(driver, lambda d: "/browse" in d.current_url and css(d, "#browser"), message="the file browser after signing in")


def dialog_is_open(driver) -> bool:
    return bool(driver.execute_script("const d = document.getElementById('transfer-dialog'); return !!(d && d.open);"))


def picker_destination(driver) -> str:
    return driver.execute_script("return document.getElementById('dialog-destination').textContent.trim()")


def pick_destination(driver, target: str) -> None:
    """Browses the move dialog's folder picker to target, as a person would: by clicking the root,
    breadcrumb or folder buttons (each carries data-path), climbing up first where needed."""
    target = target.rstrip("/")
    for _ in range(32):
        if picker_destination(driver) == target and not busy(driver):
            return
        candidates = [element for element in css(driver, "#transfer-dialog button[data-path]")
                      if element.is_displayed() and element.is_enabled()]
        paths = {element.get_attribute("data-path").rstrip("/"): element for element in candidates}
        if target in paths:
            step = target
        else:
            # Down: the deepest visible folder on the way to the target; else up: the deepest ancestor.
            on_the_way = [p for p in paths if target.startswith(p + "/")]
            if not on_the_way:
                raise AssertionError(f"the folder picker offers no way to {target}; it shows {sorted(paths)}")
            step = max(on_the_way, key=len)
        before = picker_destination(driver)
        paths[step].click()
        wait(driver, lambda d: picker_destination(d) == step and not busy(d),
             message=f"the picker to open {step} (it showed {before})")
    raise AssertionError(f"could not browse the picker to {target}")


def busy(driver) -> bool:
    return driver.execute_script("return document.getElementById('picker-list').getAttribute('aria-busy') === 'true'")


def verdict(driver, timeout: float = WAIT) -> str:
    """Waits for the pre-flight verdict in the dialog and returns its state: allowed, refused or error."""
    return wait(driver, lambda d: (lambda state: state if state in ("allowed", "refused", "error") else False)(
        d.execute_script("return document.getElementById('preflight').getAttribute('data-state')")),
        timeout, message="the pre-flight verdict")
