"""Start ``labd serve`` as a child process on a free loopback port, for a run or a test.

``LocalDaemon`` is a context manager: on entry it starts the daemon (embedded default config
unless ``config`` names a file; no store unless ``store`` names a file), waits until it answers
``hello`` (with ``curve`` keys when the daemon requires them), and exposes ``endpoint``; on exit
it sends SIGTERM and waits for a clean exit (SIGKILL after ``stop_timeout_s``). The daemon
runs with ``--exit-with-parent <this pid>``: if this process dies without stopping it (``kill -9``
of a trainer), the daemon stops by itself within a second, also when that happens while the
daemon is still starting.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from labd.client import LabClient, ReplyTimeout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonStartError(RuntimeError):
    """The daemon exited during start-up (its log on stderr says why) or never answered."""


def wait_ready(endpoint: str, timeout_s: float, proc: subprocess.Popen | None = None,
               curve: dict[str, bytes] | None = None) -> None:
    """Block until the daemon at ``endpoint`` answers ``hello``; ``DaemonStartError`` else."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DaemonStartError(f"labd serve exited with code {proc.returncode} during "
                                   f"start-up (its messages above say why)")
        with LabClient(endpoint, timeout_s=0.2, retries=0, curve=curve) as client:
            try:
                client.hello()
                return
            except ReplyTimeout:
                continue
    raise DaemonStartError(f"labd at {endpoint} did not answer within {timeout_s} s")


class LocalDaemon:
    def __init__(self, config: str | Path | None = None, store: str | Path | None = None,
                 log_level: str = "warning", extra_args: list[str] | None = None,
                 start_timeout_s: float = 60.0, stop_timeout_s: float = 30.0,
                 curve: dict[str, bytes] | None = None, port: int | None = None) -> None:
        """``curve``: a client's keys (``labd.client.curve_keys``) for a daemon that needs them;
        ``port``: a fixed control port (e.g. to restart a daemon where clients expect it)."""
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.events_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self._args = [sys.executable, "-m", "labd", "--log-level", log_level, "serve",
                      "--bind", self.endpoint, "--events", self.events_endpoint,
                      "--store", str(store) if store else "",
                      "--exit-with-parent", str(os.getpid())]
        if config is not None:
            self._args += ["--config", str(config)]
        self._args += extra_args or []
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.curve = curve
        self.proc: subprocess.Popen | None = None

    def start(self) -> LocalDaemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self._args, env=env)
        try:
            wait_ready(self.endpoint, self.start_timeout_s, self.proc, self.curve)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self) -> int:
        """SIGTERM, wait for the exit code (SIGKILL if it does not come)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LocalDaemon:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
