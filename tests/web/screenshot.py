"""The README's screenshot of the monitor page, taken during a real PAT run.

    .venv/bin/python -m tests.web.screenshot docs/img/web.png

A daemon with the embedded default configuration (the simulated SHG, plate and oscillator,
and the loopback) and a store; ``labd web`` watching it and the run folder; ``labd train``
training the vowels on ``shg`` with PAT through that daemon; a client measuring the plate
now and then (so two systems are in use). Once a quarter of the run's epochs are done, headless
Chromium opens the page, shows the SHG's last measurement and saves the screenshot.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from labd.client import LabClient
from labd.daemon.process import LocalDaemon
from tests.web.conftest import WebMonitor, chromium, wait_for


def _plate(endpoint: str, stop: threading.Event) -> None:
    rng = np.random.default_rng(1)
    with LabClient(endpoint) as client:
        d = client.describe("plate")
        lo, hi = d["input_range"]
        plo, phi = d["param_range"]
        while not stop.is_set():
            x = rng.uniform(lo, hi, (8, d["input_dim"])).astype(np.float32)
            theta = rng.uniform(plo, phi, d["param_dim"]).astype(np.float32)
            client.measure("plate", x, theta)
            stop.wait(0.3)


def _epoch(browser, selector: str) -> int:
    """The epoch a run card shows (0 before it shows one)."""
    found = re.search(r"epoch (\d+)", "".join(
        e.text for e in browser.find_elements(By.CSS_SELECTOR, selector)))
    return int(found.group(1)) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--epochs", type=int, default=40,
                        help="epochs before the screenshot (of 4 times as many)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labd-screenshot-") as tmp:
        runs = Path(tmp) / "runs"
        with LocalDaemon(store=Path(tmp) / "measurements.sqlite") as daemon, \
                WebMonitor(daemon.endpoint, "--runs", str(runs)) as web:
            train = subprocess.Popen(
                [sys.executable, "-m", "labd", "--log-level", "warning", "train", "--task",
                 "vowels", "--system", "shg", "--mode", "pat", "--backward", "nominal",
                 "--endpoint", daemon.endpoint, "--out", str(runs / "vowels-shg-pat"),
                 "--epochs", str(4 * args.epochs), "--no-progress"])
            stop = threading.Event()
            plate = threading.Thread(target=_plate, args=(daemon.endpoint, stop))
            plate.start()
            try:
                with chromium(Path(tmp) / "profile", size="1280,1500") as browser:
                    browser.get(web.url)
                    card = '#runs .run[data-run="vowels-shg-pat"] p'
                    wait_for(lambda: _epoch(browser, card) >= args.epochs, timeout_s=900,
                             every_s=1.0)
                    Select(browser.find_element(By.ID, "plot-system")).select_by_value("shg")
                    time.sleep(2.5)  # two polls: the chosen plot and fresh rates
                    height = browser.execute_script("return document.body.scrollHeight")
                    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                        "width": 1280, "height": height, "deviceScaleFactor": 1,
                        "mobile": False})
                    time.sleep(1.2)
                    browser.save_screenshot(args.out)
            finally:
                stop.set()
                plate.join()
                train.terminate()
                train.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
