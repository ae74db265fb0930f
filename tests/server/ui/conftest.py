"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) for the console tests.

``make test`` installs both with apt, as it installs redis-server. The tests skip only where apt cannot install
them (no apt-get, or not root); anywhere else a missing browser is a failure, never a silent skip.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"
WAIT_S = 20.0


def _browser_binaries() -> tuple[str, str] | None:
    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def apt_can_install() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


@pytest.fixture(scope="session")
def chrome_binaries() -> tuple[str, str]:
    found = _browser_binaries()
    if found is not None:
        return found
    if apt_can_install():
        pytest.fail("chromium / chromedriver are not installed: run `make browser` (apt-get install chromium "
                    "chromium-driver), which `make test` does")  # fmt: skip
    pytest.skip("headless Chromium unavailable and apt cannot install it here (no apt-get, or not root)")


@pytest.fixture(scope="module")
def browser(chrome_binaries: tuple[str, str]) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser_path, driver_path = chrome_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system chromedriver, never one selenium-manager would download
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the element is not there yet, or went stale mid-render
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """SEVERE browser-console entries since the last call (reading the log drains it)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


DROP_JS = """
const [id, files, type] = arguments;
const transfer = new DataTransfer();
for (const [b64, name] of files) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  transfer.items.add(new File([bytes], name, { type }));
}
const target = document.getElementById(id);
for (const kind of ["dragenter", "dragover", "drop"]) {
  target.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
}
"""


def drop_files(driver: Any, element_id: str, files: list[tuple[bytes, str]], media_type: str = "video/mp4") -> None:
    """Drop files on an element the way a browser does (a real DataTransfer carrying Files, real drag events)."""
    encoded = [[base64.b64encode(data).decode("ascii"), name] for data, name in files]
    driver.execute_script(DROP_JS, element_id, encoded, media_type)


def drop_file(driver: Any, element_id: str, data: bytes, name: str, media_type: str = "video/mp4") -> None:
    drop_files(driver, element_id, [(data, name)], media_type)
