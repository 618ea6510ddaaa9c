"""Fixtures of the monitor's tests: a real daemon, a real ``labd web`` process, a real browser."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.process import LocalDaemon
from tests.configs import loopback

#: A rig for the monitor: a fast loopback (8 values), a slow one (20 ms per shot, so that it
#: is visibly busy) and a flaky one (a detector that drops its link on 30% of reads).
_RANGES = {"input_range": [-1.0, 1.0], "param_range": [-1.0, 1.0]}
RIG = (loopback("fast", 8, **_RANGES, bench={"seed": 0, "timing": "fast"})
       + loopback("slow", 4, **_RANGES, queue_depth=8,
                  bench={"seed": 0, "timing": "realtime", "shot_s": 0.02})
       + loopback("flaky", 3, **_RANGES, bench={"seed": 1, "timing": "fast"},
                  detector={"driver": "sim.adc", "faults": {"disconnect": 0.3, "seed": 3}}))

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The next line on ``proc``'s stdout ("" if none came within the timeout)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s).strip()
    except queue.Empty:
        return ""


class WebMonitor:
    """``python -m labd.web`` on a free loopback port, for the daemon at ``endpoint``."""

    def __init__(self, endpoint: str, *args: str, http: str = "127.0.0.1:0") -> None:
        self.command = [sys.executable, "-m", "labd.web", "--log-level", "warning",
                        "--endpoint", endpoint, "--http", http, "--interval", "0.5",
                        "--exit-with-parent", str(os.getpid()), *args]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> WebMonitor:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        self.url = read_line(self.proc, 60)
        if not self.url:
            self.proc.kill()
            raise RuntimeError(f"labd web did not start (exit code {self.proc.wait()})")
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(15)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """(status, body) of a GET (no redirects followed)."""
        return http_get(self.url.rstrip("/") + path, headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def http_get(url: str, headers: dict[str, str] | None = None, method: str = "GET"
             ) -> tuple[int, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with opener.open(request, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(check: Any, timeout_s: float = 30.0, every_s: float = 0.2) -> Any:
    """Call ``check()`` until it returns something true; return that (AssertionError after
    the timeout). An element the page replaced while it was read counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except StaleElementReferenceException:  # the page redrew it meanwhile
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {check}")
        time.sleep(every_s)


@pytest.fixture(scope="module")
def rig_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web") / "rig.toml"
    path.write_text(RIG)
    return path


@pytest.fixture
def rig(rig_path: Path, tmp_path: Path) -> Iterator[LocalDaemon]:
    """A fresh daemon serving ``RIG`` with a store (counters start at zero)."""
    with LocalDaemon(config=rig_path, store=tmp_path / "store.sqlite") as daemon:
        yield daemon


@contextlib.contextmanager
def chromium(profile: Path, size: str = "1400,1400") -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver (Selenium), with a fresh profile in
    ``profile``. Fails, never skips, when they are missing: scripts/setup installs them
    (apt-get, as root)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: the monitor page is tested in a real "
                    f"browser; run scripts/setup as root, or apt-get install chromium "
                    f"chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must download nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", f"--window-size={size}",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver
