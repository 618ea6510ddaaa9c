"""An endpoint where no daemon answers is a clear error within seconds, for every command that
takes one; a daemon in contact that measures slowly still gets the full per-request timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from labd.client import LabClient, ReplyTimeout, Unreachable, reach
from labd.daemon.process import LocalDaemon, free_port

F4 = np.float32


def test_every_command_says_in_one_line_that_nothing_answers(tmp_path: Path) -> None:
    """labd status, survey, train, tune, twin collect and reproduce: one line naming the
    endpoint and what to check, within 20 s (5 s of it the wait for contact; the commands
    run two at a time), no traceback, nothing written. labd tune opens its Optuna study first
    (its database schema: 1-8 s, the longer under load), then says it in its own words within
    40 s (exit code 2; its other errors: tests/train/test_tune.py)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    commands = {
        "status": ["status", "--endpoint", endpoint],
        "survey": ["survey", "--endpoint", endpoint],
        "train": ["train", "--task", "vowels", "--system", "shg", "--mode", "pat",
                  "--endpoint", endpoint, "--out", str(out / "train")],
        "tune": ["tune", "--task", "vowels", "--system", "shg", "--endpoint", endpoint,
                 "--out", str(tmp_path / "tune")],  # (its study, opened first)
        "twin collect": ["twin", "collect", "--system", "shg", "--endpoint", endpoint,
                         "--out", str(out / "twin.npz")],
        "reproduce": ["reproduce", "--quick", "--endpoint", endpoint, "--out",
                      str(out / "reproduce")],
    }
    names = list(commands)
    for pair in (names[i:i + 2] for i in range(0, len(names), 2)):  # two at a time: 2 cores
        started = time.monotonic()
        running = {name: subprocess.Popen([sys.executable, "-m", "labd", *commands[name]],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
                   for name in pair}
        for name, proc in running.items():
            stdout, stderr = proc.communicate(timeout=60)
            took = time.monotonic() - started
            said = (stdout + stderr).strip()
            bound = 40 if name == "tune" else 20
            assert took < bound, f"labd {name} took {took:.1f} s to say no daemon answers"
            assert "Traceback" not in said and len(said.splitlines()) == 1, (name, said)
            if name == "tune":
                assert proc.returncode == 2 and said.startswith(
                    f"labd tune: no daemon answers at {endpoint}: start one there"), said
                continue
            assert proc.returncode == 1, (name, said)
            assert said.startswith(
                f"labd {name}: no labd daemon answered at {endpoint} within 5 s"), said
            assert "`labd serve`" in said and "--bind" in said and "CURVE" in said, said
    assert not out.exists()


def test_first_contact_is_not_retried() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with LabClient(endpoint, timeout_s=60, retries=3, connect_timeout_s=0.5) as client, \
            pytest.raises(Unreachable) as failed:
        client.hello()
    assert time.monotonic() - started < 3  # one wait of 0.5 s, no retries
    assert isinstance(failed.value, ReplyTimeout) and not failed.value.retryable


def test_a_slow_first_request_to_a_daemon_in_contact_waits_its_full_timeout(
        rig: LocalDaemon) -> None:
    """The first request a client sends takes 1 s to measure, twice the client's
    ``connect_timeout_s``: the daemon made contact at once, so the reply is waited for."""
    x, theta = np.zeros((50, 4), F4), np.zeros(4, F4)  # 50 shots x 20 ms on the slow system
    with LabClient(rig.endpoint, timeout_s=60, retries=0, connect_timeout_s=0.5) as client:
        started = time.monotonic()
        header, arrays = client.wait(client.send("forward", {"system": "slow"},
                                                 (("x", x), ("theta", theta))))
        assert header.ok and arrays["y"].shape == (50, 4)
        assert time.monotonic() - started >= 0.9
        assert reach([rig.endpoint])[0]["server"] == "labd"


def test_the_command_line_loads_without_torch() -> None:
    """Every command's arguments are built without the trainer's heavy imports (torch takes
    seconds to import), so that ``labd status`` and ``labd serve`` start quickly."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom labd.cli import build_parser\n"
         "build_parser()\nprint('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
