"""The monitor page in a real headless Chromium: what a person glancing at it would see."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from labd.client import InstrumentFault, LabClient
from tests.web.conftest import WebMonitor, wait_for

METRICS = ["epoch", "train_loss", "train_acc", "test_acc", "test_acc_model",
           "physical_queries", "wall_s"]


def _cell(driver, system: str, column: str) -> str:
    return driver.find_element(
        By.CSS_SELECTOR, f'#systems tbody tr[data-system="{system}"] td.{column}').text


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _write_run(folder: Path, epochs: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, METRICS)
        writer.writeheader()
        for e in range(1, epochs + 1):
            writer.writerow({"epoch": e, "train_loss": round(1.5 / e, 4),
                             "train_acc": round(0.5 + 0.1 * e, 3),
                             "test_acc": round(0.45 + 0.1 * e, 3), "test_acc_model": "",
                             "physical_queries": 1000 * e, "wall_s": 3.2 * e})


def _send(endpoint: str, stop: threading.Event, last: dict) -> None:
    """Forwards to ``fast`` until ``stop`` (records the last one's x, y and seq)."""
    rng = np.random.default_rng(0)
    with LabClient(endpoint) as client:
        try:
            while not stop.is_set():
                x = rng.uniform(-0.5, 0.5, (4, 8)).astype(np.float32)
                theta = np.linspace(-0.3, 0.3, 8, dtype=np.float32)
                result = client.measure("fast", x, theta)
                last.update(x=x, y=np.array(result.y), seq=result.seq)
                stop.wait(0.01)
        except Exception as exc:
            last["error"] = exc
            raise


def test_page_shows_the_rig_live(rig, browser, tmp_path):
    runs = tmp_path / "runs"
    _write_run(runs / "vowels-pat", 2)
    with WebMonitor(rig.endpoint, "--runs", str(runs)) as web:
        browser.get(web.url)
        rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#systems tbody tr"))
        assert [r.get_attribute("data-system") for r in rows] == ["fast", "slow", "flaky"]
        for name in ("fast", "slow", "flaky"):
            assert _cell(browser, name, "state") in ("ready", "busy", "fault")
        assert browser.find_element(By.ID, "link").text == "connected"

        # A number that changes while a client sends forwards.
        stop, last = threading.Event(), {}
        sender = threading.Thread(target=_send, args=(rig.endpoint, stop, last))
        sender.start()
        try:
            seen = {_number(_cell(browser, "fast", "served"))}
            wait_for(lambda: seen.add(_number(_cell(browser, "fast", "served")))
                     or len(seen) >= 3, timeout_s=60)
            wait_for(lambda: _number(_cell(browser, "fast", "req-rate")) > 0, timeout_s=30)
            wait_for(lambda: _number(_cell(browser, "fast", "shot-rate")) > 0, timeout_s=30)
        finally:
            stop.set()
            sender.join()
        assert "error" not in last, last.get("error")

        # The last measurement of the chosen system, drawn: x, theta and y of its first row.
        Select(browser.find_element(By.ID, "plot-system")).select_by_value("fast")
        caption = wait_for(lambda: f"seq {last['seq']:,}," in browser.find_element(
            By.ID, "last-caption").text)
        assert caption
        traces = browser.find_elements(By.CSS_SELECTOR, "#plot polyline.trace")
        assert [t.get_attribute("class") for t in traces] == ["trace s-x", "trace s-theta",
                                                              "trace s-y"]
        assert [t.get_attribute("data-points") for t in traces] == ["8", "8", "8"]
        y_points = [tuple(map(float, p.split(","))) for p in
                    traces[2].get_attribute("points").split()]
        # drawn heights follow the measured y (screen y grows downwards)
        drawn = -np.array([p[1] for p in y_points])
        assert np.corrcoef(drawn, last["y"][0])[0, 1] > 0.999

        # Faults and reconnects of the flaky system.
        with LabClient(rig.endpoint, retries=0) as client:
            x3 = np.full((1, 3), 0.1, np.float32)
            faults = 0
            for _ in range(40):
                try:
                    client.measure("flaky", x3, x3[0])
                except InstrumentFault:
                    faults += 1
        assert faults > 0
        wait_for(lambda: _number(_cell(browser, "flaky", "faults")) == faults)
        wait_for(lambda: _number(_cell(browser, "flaky", "reconnects")) > 0)
        assert "client" in _cell(browser, "fast", "clients")

        # The store, and a training run as it grows.
        wait_for(lambda: "measurements" in browser.find_element(By.ID, "store").text
                 and _store_count(browser) > 0, timeout_s=30)
        card = '#runs .run[data-run="vowels-pat"]'
        wait_for(lambda: "epoch 2" in browser.find_element(By.CSS_SELECTOR, card).text)
        _write_run(runs / "vowels-pat", 3)
        wait_for(lambda: "epoch 3" in browser.find_element(By.CSS_SELECTOR, card).text,
                 timeout_s=30)
        curves = browser.find_elements(By.CSS_SELECTOR, f"{card} svg polyline.trace")
        assert len(curves) == 3 and all(c.get_attribute("data-points") == "3" for c in curves)
        browser.save_screenshot(str(tmp_path / "web.png"))


def _store_count(browser) -> int:
    """The measurements the page's store section shows (0 while it shows none)."""
    terms = browser.find_elements(By.CSS_SELECTOR, "#store dt")
    values = browser.find_elements(By.CSS_SELECTOR, "#store dd")
    shown = {t.text: v.text for t, v in zip(terms, values, strict=True)}
    return int(shown.get("measurements", "0").replace(",", ""))


def test_page_says_when_the_daemon_is_gone_and_comes_back(rig_path, browser, tmp_path):
    from labd.daemon.process import LocalDaemon, free_port

    port = free_port()
    with LocalDaemon(config=rig_path, port=port) as daemon, WebMonitor(daemon.endpoint) as web:
        browser.get(web.url)
        wait_for(lambda: browser.find_element(By.ID, "link").text == "connected")
        daemon.stop()
        wait_for(lambda: "daemon unreachable" in browser.find_element(By.ID, "link").text,
                 timeout_s=30)
        assert "stale" in browser.find_element(By.ID, "systems").get_attribute("class")
        with LocalDaemon(config=rig_path, port=port):
            wait_for(lambda: browser.find_element(By.ID, "link").text == "connected",
                     timeout_s=60)
            wait_for(lambda: "restarted 1×" in browser.find_element(By.ID, "daemon").text)
