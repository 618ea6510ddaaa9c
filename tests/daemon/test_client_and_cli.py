"""The project's client and command line against a real daemon subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labd.client import BadArray, LabClient, OutOfRange, ReplyTimeout, UnknownSystem
from labd.daemon.process import LocalDaemon, free_port
from tests.configs import loopback
from tests.daemon.raw import RawClient, forward_header

F4 = np.float32


def labd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_client_operations(rig):
    with LabClient(rig.endpoint, timeout_s=10) as client:
        hello = client.hello()
        assert hello["server"] == "labd" and 1 in hello["protocols"]
        d = client.describe("fast")
        assert d["input_dim"] == 4 and d["kind"] == "loopback"
        x = np.full((3, 4), 0.1, F4)
        result = client.measure("fast", x, np.full(4, 0.2, F4))
        np.testing.assert_allclose(result.y, 0.6, rtol=1e-6)
        assert result.seq >= 0 and result.elapsed_s >= 0
        ids = [client.submit("fast", x, np.zeros(4, F4)) for _ in range(5)]
        seqs = [client.result(i).seq for i in reversed(ids)]
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + 15, 3))
        assert client.status()["systems"]["fast"]["served"] >= 6


def test_client_raises_typed_errors(rig):
    with LabClient(rig.endpoint, timeout_s=10) as client:
        with pytest.raises(UnknownSystem) as err:
            client.describe("laser")
        assert err.value.code == "unknown_system" and not err.value.retryable
        with pytest.raises(OutOfRange):
            client.forward("fast", np.full((1, 4), 3.0, F4), np.zeros(4, F4))
        with pytest.raises(BadArray):
            client.forward("fast", np.zeros((1, 5), F4), np.zeros(4, F4))


def test_client_timeout_when_nobody_answers():
    with LabClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.2, retries=1) as client:
        started = time.monotonic()
        with pytest.raises(ReplyTimeout) as err:
            client.hello()
        assert err.value.retryable and time.monotonic() - started < 5


def test_status_command(rig):
    out = labd("status", "--endpoint", rig.endpoint)
    assert out.returncode == 0, out.stderr
    assert "fast" in out.stdout and "slow" in out.stdout and "served" in out.stdout
    out = labd("status", "--endpoint", rig.endpoint, "--json")
    status = json.loads(out.stdout)
    assert set(status["status"]["systems"]) == {"fast", "slow"}


def test_status_command_without_daemon():
    out = labd("status", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert out.returncode == 1 and "no reply" in out.stdout


def test_config_check_reports_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(loopback("a", 4, input_dim=-3))
    out = labd("config", "--check", str(bad))
    assert out.returncode == 2 and "systems.a.input_dim" in out.stdout
    out = labd("serve", "--config", str(bad))
    assert out.returncode == 2 and "invalid configuration" in out.stderr
    assert labd("config").stdout.startswith("# The embedded default")


def test_serve_refuses_a_taken_port(rig):
    out = labd("serve", "--bind", rig.endpoint, "--store", "", "--events", "", timeout=60)
    assert out.returncode == 2 and "cannot bind" in out.stderr


def test_sigterm_with_a_request_in_flight(test_config_path):
    daemon = LocalDaemon(config=test_config_path).start()
    raw = RawClient(daemon.endpoint)
    x = np.zeros((10, 4), F4)  # 10 shots x 20 ms on the slow system
    raw.send(forward_header("slow", x, np.zeros(4, F4), rid="in-flight"), [x, np.zeros(4, F4)])
    for i in range(3):  # queued behind it
        raw.send(forward_header("slow", x, np.zeros(4, F4), rid=f"queued{i}"),
                 [x, np.zeros(4, F4)])
    time.sleep(0.05)
    daemon.proc.send_signal(signal.SIGTERM)
    replies = {}
    for _ in range(4):
        reply, _ = raw.recv(timeout_ms=10000)
        replies[reply["id"]] = reply
    assert replies["in-flight"]["ok"] is True  # finished
    for i in range(3):  # failed with a retryable error, not dropped
        r = replies[f"queued{i}"]
        assert r["ok"] is False and r["error"]["retryable"] is True
    assert daemon.proc.wait(20) == 0
    raw.close()


def test_default_daemon_serves_every_system(default_daemon):
    with LabClient(default_daemon.endpoint, timeout_s=60) as client:
        systems = client.hello()["systems"]
        assert "loopback" in systems
        rng = np.random.default_rng(0)
        for name in systems:
            d = client.describe(name)
            lo, hi = d["input_range"]
            plo, phi = d["param_range"]
            x = rng.uniform(lo, hi, (4, d["input_dim"])).astype(F4)
            theta = rng.uniform(plo, phi, d["param_dim"]).astype(F4)
            y = client.forward(name, x, theta)
            assert y.shape == (4, d["output_dim"]) and y.dtype == F4
            assert np.all(np.isfinite(y))


def test_requests_in_flight_survive_a_daemon_restart(test_config_path):
    """kill -9 while a request is being measured, restart on the same port: the client sends it
    again as soon as the link is back, long before its timeout."""
    first = LocalDaemon(config=test_config_path).start()
    with LabClient(first.endpoint, timeout_s=60, retries=0) as client:
        x = np.zeros((25, 4), F4)  # 0.5 s on the slow system
        rid = client.submit("slow", x, np.zeros(4, F4))
        time.sleep(0.15)
        first.kill()
        started = time.monotonic()
        second = LocalDaemon(config=test_config_path, port=first.port).start()
        try:
            result = client.result(rid)
            assert time.monotonic() - started < 30
            assert result.y.shape == (25, 4) and result.elapsed_s >= 0.45
            np.testing.assert_allclose(client.forward("fast", x[:2], np.zeros(4, F4)), 0.0)
        finally:
            assert second.stop() == 0


def test_daemon_stops_when_its_starter_died_while_it_was_starting(test_config_path, tmp_path):
    """``--exit-with-parent PID``: a starter that is gone before the daemon is up (killed during
    its start-up) still leaves no daemon behind."""
    log = tmp_path / "daemon.log"
    starter = subprocess.run(
        [sys.executable, "-c",
         "import os, subprocess, sys\n"
         "from labd.daemon.process import free_port\n"
         f"log = open({str(log)!r}, 'w')\n"
         "p = subprocess.Popen([sys.executable, '-m', 'labd', 'serve', '--bind',\n"
         "    f'tcp://127.0.0.1:{free_port()}', '--events', f'tcp://127.0.0.1:{free_port()}',\n"
         f"    '--store', '', '--config', {str(test_config_path)!r},\n"
         "    '--exit-with-parent', str(os.getpid())], stderr=log)\n"
         "print(p.pid, flush=True)\n"
         "os._exit(0)\n"],  # at once: the daemon has not even imported labd yet
        capture_output=True, text=True, timeout=30, check=True)
    pid = int(starter.stdout)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the daemon outlived the process that started it by 30 s")
    assert "has exited; stopping" in log.read_text()


def test_local_daemon_stops_when_its_starter_is_killed(test_config_path):
    """A trainer killed with SIGKILL leaves no daemon behind (``--exit-with-parent``)."""
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from labd.daemon.process import LocalDaemon\n"
         f"d = LocalDaemon(config={str(test_config_path)!r}).start()\n"
         "print(d.proc.pid, d.endpoint, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        pid, endpoint = starter.stdout.readline().split()
        with LabClient(endpoint) as client:
            assert client.hello()["server"] == "labd"
        starter.kill()
        starter.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(int(pid), signal.SIGKILL)
            pytest.fail("the daemon outlived the process that started it by 20 s")
    finally:
        starter.kill()
