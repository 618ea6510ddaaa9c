"""Start ``labd serve`` as a child process on a free loopback port, for a run or a test; and
how a daemon is stopped cleanly on each platform.

``LocalDaemon`` is a context manager: on entry it starts the daemon (embedded default config
unless ``config`` names a file; no store unless ``store`` names a file), waits until it answers
``hello`` (with ``curve`` keys when the daemon requires them), and exposes ``endpoint``; on exit
it sends the clean-stop signal and waits for a clean exit (killed after ``stop_timeout_s``).
The daemon runs with ``--exit-with-parent <this pid>``: if this process dies without stopping
it (``kill -9`` of a trainer), the daemon stops by itself within a second, also when that
happens while the daemon is still starting.

Stopping cleanly (requests in hand finished, instruments and store closed): ``labd serve``
stops on ``stop_signals()`` and ``LocalDaemon.stop`` sends ``clean_stop_signal()``. On POSIX
that is SIGTERM. Windows delivers no SIGTERM (``send_signal(SIGTERM)`` there is
TerminateProcess, a crash): the daemon starts in a new process group and is sent
CTRL_BREAK_EVENT, which it receives as SIGBREAK. ``PORTABLE`` (Windows; ``LABD_PORTABLE=1``
forces it on Linux, as ``tests/daemon/test_portable.py`` does) is the path without SIGTERM: the
daemon stops on SIGINT and SIGBREAK only, and ``stop`` sends CTRL_BREAK_EVENT (SIGINT on Linux,
which has no console events).
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
from typing import Any

from labd.client import LabClient, ReplyTimeout

PORTABLE = os.name == "nt" or os.environ.get("LABD_PORTABLE") == "1"


def stop_signals() -> tuple[int, ...]:
    """The signals on which ``labd serve`` (and ``labd web``) stop cleanly: SIGINT (Ctrl-C)
    everywhere; SIGTERM (``kill``, systemd) on POSIX; SIGBREAK (Ctrl-Break, and
    ``LocalDaemon.stop``) where it exists (Windows)."""
    if not PORTABLE:
        return (signal.SIGINT, signal.SIGTERM)
    return (signal.SIGINT, *[s for s in (getattr(signal, "SIGBREAK", None),) if s is not None])


def clean_stop_signal() -> int:
    """What ``LocalDaemon.stop`` sends (one of the daemon's ``stop_signals()``)."""
    if os.name == "nt":
        return signal.CTRL_BREAK_EVENT
    return signal.SIGINT if PORTABLE else signal.SIGTERM


def _popen_options() -> dict[str, Any]:
    """Windows: a process group of its own, the only target CTRL_BREAK_EVENT can have (Ctrl-C
    in the starter's console no longer reaches the daemon; the starter stops it)."""
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {}


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
        self.proc = subprocess.Popen(self._args, env=env, **_popen_options())
        try:
            wait_ready(self.endpoint, self.start_timeout_s, self.proc, self.curve)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self) -> int:
        """The clean-stop signal, then wait for the exit code (killed if it does not come)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        try:
            self.proc.send_signal(clean_stop_signal())
        except OSError:  # Windows, a starter without a console: no console event to send
            self.kill()  # (the store recovers at its next opening, as after a crash)
            return self.proc.returncode
        try:
            return self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """Kill (SIGKILL; TerminateProcess on Windows), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LocalDaemon:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
