"""A real headless browser for page tests: Debian's Chromium driven by selenium through the
system chromedriver (`apt-get install chromium chromium-driver`). Nothing is downloaded: selenium
is given both binaries, so its driver manager never runs. Tests skip where either is missing."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


def binaries() -> tuple[str, str]:
    """(chromium, chromedriver), or skip the test."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no Chromium / chromedriver (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is in the test extra")
    return chromium, driver


@contextmanager
def chromium(profile: Path):
    """A selenium driver on a fresh headless Chromium profile in `profile`, with the console log kept."""
    chromium_bin, driver_bin = binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: selenium's manager may not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_bin
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
    try:
        yield driver
    finally:
        driver.quit()
