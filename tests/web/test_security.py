"""The monitor's security: loopback by default, a token or an explicit choice elsewhere,
nothing but reading; and ``labd serve --http``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np

from labd.client import LabClient
from labd.daemon.process import free_port, wait_ready
from tests.web.conftest import WebMonitor, http_get, wait_for

TOKEN = "s3cret-token-for-the-monitor-0123"


def test_a_token_guards_every_route(rig, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with WebMonitor(rig.endpoint, "--http-token-file", str(token_file)) as web:
        for path in ("/", "/api/state", "/metrics", "/healthz"):
            assert web.get(path)[0] == 401
            assert web.get(path, {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
        status, body = web.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "labd_up" in body
        assert web.get("/", {"Cookie": f"labd_web_token={TOKEN}"})[0] == 200
        # opening /?token=... sets the cookie and sends the browser to the bare address
        status, _ = web.get(f"/?token={TOKEN}")
        assert status == 303


def test_loopback_page_refuses_other_hosts_and_anything_but_reading(rig):
    with WebMonitor(rig.endpoint) as web:
        assert web.get("/healthz")[0] == 200
        assert web.get("/healthz", {"Host": "localhost:1234"})[0] == 200
        assert web.get("/", {"Host": "attacker.example:80"})[0] == 403  # DNS rebinding
        for method in ("POST", "PUT", "DELETE"):
            assert http_get(web.url + "api/state", method=method)[0] == 501
        assert web.get("/api/forward")[0] == 404


def test_non_loopback_needs_a_token_or_insecure(rig):
    run = subprocess.run([sys.executable, "-m", "labd", "web", "--endpoint", rig.endpoint,
                          "--http", "0.0.0.0:0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "without a token" in run.stderr and "Traceback" not in run.stderr
    bad = subprocess.run([sys.executable, "-m", "labd", "web", "--http", "nonsense"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr


def test_serve_http_starts_and_stops_the_page_with_the_daemon(rig_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "labd", "serve", "--config", str(rig_path), "--bind", endpoint,
         "--events", "", "--store", "", "--http", "127.0.0.1:0",
         "--exit-with-parent", str(os.getpid())], stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(endpoint, 120, daemon)
        line = ""
        while "monitor page" not in line:
            line = daemon.stderr.readline()
            assert line, "labd serve --http logged no URL"
        url = line.split(" at ")[1].split()[0]
        with LabClient(endpoint) as client:
            client.measure("fast", np.zeros((1, 8), np.float32), np.zeros(8, np.float32))
        wait_for(lambda: '"served":1' in http_get(url + "api/state")[1])
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert http_get_fails(url)


def http_get_fails(url: str) -> bool:
    try:
        http_get(url + "healthz")
    except OSError:
        return True
    return False


def test_serve_http_on_a_taken_port_starts_nothing(rig_path):
    with WebMonitor("tcp://127.0.0.1:1") as other:
        taken = other.url.split("//")[1].rstrip("/")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        run = subprocess.run(
            [sys.executable, "-m", "labd", "serve", "--config", str(rig_path), "--bind",
             endpoint, "--events", "", "--store", "", "--http", taken],
            capture_output=True, text=True, timeout=180)
    assert run.returncode == 2
    assert "cannot listen" in run.stderr and "did not start" in run.stderr
    assert "serving" not in run.stderr and "Traceback" not in run.stderr
