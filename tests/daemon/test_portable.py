"""What runs differently on Windows, forced on Linux: the stop signals of ``labd serve`` and
``LocalDaemon`` (``labd.daemon.process.PORTABLE``, ``LABD_PORTABLE=1`` in the daemons started
here, as the store's tests force its portable file calls), the watch on a daemon's or an
emulator's starter (a parent pid that never changes, as Windows never re-parents), the
benchmarks' machine figures (no load average), the emulators without SIGUSR1/SIGUSR2 or
pseudo-terminals. What only Windows has (CTRL_BREAK_EVENT to a process group, the SIGBREAK it
raises, the emulators' bus on a named pipe) is not exercised here: the README's platform
paragraph says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from drivers.emulators import hardware_server, scpi_server
from labd.commands.serve import stop_with_parent
from labd.daemon import process
from labd.daemon.process import LocalDaemon
from labd.store.reader import StoreReader
from tests.daemon.raw import RawClient, forward_header

F4 = np.float32


@pytest.fixture
def windows_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable path here and in the daemons started; what Windows lacks taken away."""
    monkeypatch.setattr(process, "PORTABLE", True)
    monkeypatch.setenv("LABD_PORTABLE", "1")
    monkeypatch.delattr(os, "getloadavg")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_portable_stop_is_clean_without_sigterm(windows_paths: None, test_config_path: Path,
                                                tmp_path: Path) -> None:
    """``LocalDaemon.stop`` on the portable path: requests in hand finish, queued ones fail
    retryably, the store closes, exit code 0; and the daemon did not rely on SIGTERM."""
    assert signal.SIGTERM not in process.stop_signals()
    store = tmp_path / "store.sqlite"
    daemon = LocalDaemon(config=test_config_path, store=store).start()
    raw = RawClient(daemon.endpoint)
    x, theta = np.zeros((10, 4), F4), np.zeros(4, F4)  # 10 shots x 20 ms on the slow system
    for rid in ("in-flight", "queued"):
        raw.send(forward_header("slow", x, theta, rid=rid), [x, theta])
    time.sleep(0.05)
    assert daemon.stop() == 0
    replies = {}
    for _ in range(2):
        reply, _ = raw.recv(timeout_ms=10000)
        replies[reply["id"]] = reply
    raw.close()
    assert replies["in-flight"]["ok"] is True
    assert replies["queued"]["ok"] is False and replies["queued"]["error"]["retryable"] is True
    with StoreReader(store) as reader:
        assert reader.count(system="slow")[0] == 1


def test_portable_daemon_has_no_sigterm_handler(windows_paths: None,
                                                test_config_path: Path) -> None:
    """The forcing reaches the daemon: SIGTERM (on Windows, TerminateProcess) kills it
    outright; and a starter that cannot send the console event kills it at once."""
    daemon = LocalDaemon(config=test_config_path).start()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == -signal.SIGTERM
    daemon = LocalDaemon(config=test_config_path).start()

    send_signal = daemon.proc.send_signal

    def no_console(sig: int) -> None:  # a starter without a console, on Windows
        if sig == process.clean_stop_signal():
            raise OSError("The handle is invalid")
        send_signal(sig)

    daemon.proc.send_signal = no_console
    started = time.monotonic()
    assert daemon.stop() == -signal.SIGKILL and time.monotonic() - started < 5


#: A process watching its starter as ``labd serve --exit-with-parent`` does, with the parent pid
#: frozen as on Windows (no re-parenting); it writes "fired" to the file ``argv[1]`` when the
#: watch fires.
WATCHER = """
import os, sys, threading
parent = os.getppid()
os.getppid = lambda: parent
from drivers.emulators import hardware_server, scpi_server
from labd.commands.serve import stop_with_parent
fired = threading.Event()
stop_with_parent(fired.set, parent, poll_s=0.05)
print("watching", flush=True)
if fired.wait(30):
    open(sys.argv[1], "w").write("fired")
"""


def test_parent_watch_needs_no_reparenting(windows_paths: None, tmp_path: Path) -> None:
    """The starter's pid stays the watcher's parent pid after it died (Windows): its death is
    still noticed, also while it is an unreaped zombie (POSIX)."""
    fired = tmp_path / "fired"
    starter = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"w = subprocess.Popen([sys.executable, '-c', {WATCHER!r}, {str(fired)!r}],\n"
         "                     stdout=subprocess.PIPE)\n"
         "print(w.pid, w.stdout.readline().decode().strip(), flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        pid, said = starter.stdout.readline().split()
        assert said == "watching"
        watcher = psutil.Process(int(pid))
        time.sleep(0.3)
        assert watcher.is_running(), "the watch fired while its starter was alive"
        starter.kill()  # not reaped until wait() below: a zombie meanwhile
        watcher.wait(10)  # psutil.TimeoutExpired if the starter's death went unnoticed
        assert fired.read_text() == "fired"
    finally:
        starter.kill()
        starter.wait()


def test_parent_watch_stops_at_once_without_its_starter(windows_paths: None) -> None:
    """A starter gone before the watch began: no such process, or its pid already another
    process's (one started after this one) - the watch stops at once either way."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    newer = _sleeper()  # started after this process: not the one that started it
    try:
        for pid in (int(gone.stdout), newer.pid):
            stopped = threading.Event()
            stop_with_parent(stopped.set, pid, poll_s=0.05)
            assert stopped.wait(5), f"pid {pid}: the watch waited for a process not its starter"
        assert newer.poll() is None
    finally:
        newer.kill()
        newer.wait()


def test_benchmark_figures_without_a_load_average(windows_paths: None, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.runner import run

    out = tmp_path / "figures.json"
    assert run("benchmarks.none", "nothing", lambda parser: None, lambda args: {"ms": 1.5},
               ["--json", str(out)]) == 0
    machine = json.loads(out.read_text())["machine"]
    assert machine["load_1min_before"] is None and machine["load_1min_after"] is None
    assert machine["cpus"] == os.cpu_count() and "ms" in capsys.readouterr().out


def test_emulator_watch_needs_no_reparenting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hardware_server``'s watch on its starter with a parent pid that never changes."""
    starter = _sleeper()
    try:
        monkeypatch.setattr(os, "getppid", lambda: starter.pid)
        watched = psutil.Process(starter.pid)
        assert hardware_server.starter_runs(watched)
    finally:
        starter.kill()
        starter.wait()
    assert not hardware_server.starter_runs(watched)


def test_serial_emulators_say_they_need_a_pseudo_terminal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delattr(os, "openpty")
    with pytest.raises(SystemExit) as exited:
        scpi_server.main(["--rig", "shg", "--front", "shaper"])
    assert exited.value.code == 1
    said = capsys.readouterr().err
    assert "shaper emulator answers on a pseudo-terminal" in said and "Linux or macOS" in said


#: ``scpi_server`` on a Python without SIGUSR1 and SIGUSR2, as on Windows.
NO_USR_SIGNALS = """
import signal, sys
del signal.SIGUSR1, signal.SIGUSR2
from drivers.emulators.scpi_server import main
main(sys.argv[1:])
"""


def test_scpi_emulator_runs_without_the_fault_signals() -> None:
    proc = subprocess.Popen([sys.executable, "-c", NO_USR_SIGNALS, "--rig", "oscillator"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["rig"] == "oscillator" and info["pid"] == proc.pid
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
