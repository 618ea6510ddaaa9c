"""What a person sees of ``labd train``'s stderr: through a pipe (a log file, ``2>&1 | tee``)
whole log lines and no progress bar; on a terminal the bars, with every log line whole above
them (tqdm's logging redirect), as the terminal shows it."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from labd.daemon.process import LocalDaemon

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) +\S+: ")
BAR = re.compile(r"\|[\s█▏▎▍▌▋▊▉]*\||epoch/s|it/s|shot/s")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _train(endpoint: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "labd", "train", "--task", "vowels", "--system", "loopback",
            "--mode", "insilico", "--epochs", "3", "--endpoint", endpoint, "--out", str(out)]


def _whole_log_lines(lines: list[str]) -> list[str]:
    """The log lines among ``lines``, each checked to start where a line starts."""
    logged = [line for line in lines if LOG_LINE.search(line)]
    for line in logged:
        assert LOG_LINE.match(line), f"a log line torn by something before it: {line!r}"
    return logged


def _stderr_of(command: list[str]) -> str:
    """Run ``command`` with stderr to a pipe; what it wrote there (it must succeed)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_piped_stderr_gets_whole_log_lines_and_no_bar(daemon: LocalDaemon,
                                                      tmp_path: Path) -> None:
    """No ``--no-progress``: stderr is a pipe, so no bar (no carriage return, no bar
    drawing), and a whole log line per epoch."""
    trained = _stderr_of(_train(daemon.endpoint, tmp_path / "run"))
    collected = _stderr_of([sys.executable, "-m", "labd", "twin", "collect", "--system",
                            "loopback", "--samples", "2000", "--endpoint", daemon.endpoint,
                            "--out", str(tmp_path / "data.npz")])
    for stderr in (trained, collected):
        assert "\r" not in stderr and "\x1b" not in stderr, stderr
        assert not BAR.search(stderr), stderr
    epochs = [line for line in _whole_log_lines(trained.splitlines()) if ": epoch " in line]
    assert [line.split(": epoch ")[1].split(":")[0] for line in epochs] == ["1", "2", "3"], \
        trained


def _on_terminal(command: list[str], columns: int = 120) -> str:
    """Run ``command`` with its stderr on a pseudo-terminal of ``columns``; what it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.kill() if proc.poll() is None else None
    assert proc.wait(timeout=30) == 0
    return b"".join(chunks).decode()


def _screen(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: a carriage return goes back to the line's
    start and what follows overwrites it; escape sequences are left out."""
    lines, line, column = [], [], 0
    for char in ANSI.sub("", raw).replace("\r\n", "\n"):
        if char == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        elif char == "\r":
            column = 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
    lines.append("".join(line).rstrip())
    return lines


def test_on_a_terminal_bars_are_drawn_and_log_lines_stay_whole(daemon: LocalDaemon,
                                                               tmp_path: Path) -> None:
    raw = _on_terminal(_train(daemon.endpoint, tmp_path / "run"))
    assert "\r" in raw and "train insilico" in raw, raw  # the bar was drawn in place
    screen = _screen(raw)
    epochs = [line for line in _whole_log_lines(screen) if ": epoch " in line]
    assert len(epochs) == 3, screen
    assert any(BAR.search(line) and "3/3" in line for line in screen), screen
