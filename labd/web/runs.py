"""``RunWatch``: training runs found in run folders, read as their files grow.

A run folder is one that holds ``metrics.csv`` (a row per finished epoch, written by
``labd train``'s loop) or ``summary.json`` (written when the run ends). ``RunWatch(dirs)``
looks for them in each given directory, in it and up to ``DEPTH`` levels below (``labd
reproduce`` nests runs), and re-reads a file only when its size or modification time changed.

``runs()`` returns, newest first (at most ``MAX_RUNS``), per run: ``name`` (its path relative
to the directory given), ``path``, ``status`` (``finished`` once ``summary.json`` is at least as
new as ``metrics.csv``; ``running`` when a file changed in the last ``STALE_S`` seconds;
``stopped`` otherwise), ``updated`` (UNIX time), ``epoch`` (the last row's), ``physical_queries``
(the summary's, else the last row's), ``rows`` (the epochs' metrics as numbers, columns as in
``metrics.csv``) and ``summary`` (task, system, mode, epochs, accuracies; ``None`` until the run
ends). The trainer rewrites its files in place, so a reading may catch one mid-write: a
``metrics.csv`` whose last line is cut, a ``summary.json`` that is not yet JSON, or fewer epochs
than the last reading are taken only once the file has not changed for ``SETTLE_S`` seconds
(a run going backwards is then real: restarted); until then the previous reading stands.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

DEPTH = 3
MAX_RUNS = 20
STALE_S = 600.0
#: Re-scan the directories for new run folders at most this often (seconds).
SCAN_S = 5.0
#: A file is read once it is this many seconds old.
SETTLE_S = 0.5
SUMMARY_KEYS = ("task", "system", "mode", "seed", "epochs", "test_accuracy", "train_accuracy",
                "physical_queries", "wall_s")


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


class _File:
    """One file's last parsed content, re-read when its size or mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.content: Any = None

    def read(self, parse: Any) -> tuple[Any, float | None]:
        """The parsed content and the file's mtime (None, None if the file does not exist)."""
        try:
            st = self.path.stat()
        except OSError:
            return None, None
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp != self.stamp:
            try:
                content = parse(self.path.read_text())
            except (OSError, ValueError, KeyError):
                content = None  # caught mid-write (or broken): keep the last reading
            shrinks = isinstance(content, list) and len(content) < len(self.content or [])
            settled = time.time() - st.st_mtime >= SETTLE_S
            if content is not None and (settled or not shrinks):
                self.content, self.stamp = content, stamp
        return self.content, st.st_mtime


def _metrics(text: str) -> list[dict[str, Any]]:
    if not text.endswith("\n"):
        raise ValueError("the last line is not complete")
    return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]


def _summary(text: str) -> dict[str, Any]:
    data = json.loads(text)
    return {k: data.get(k) for k in SUMMARY_KEYS}


class RunWatch:
    def __init__(self, dirs: list[str | Path]) -> None:
        self.dirs = [Path(d).expanduser() for d in dirs]
        self._lock = threading.Lock()
        self._found: dict[Path, tuple[str, _File, _File]] = {}  # folder -> name, metrics, summary
        self._scanned = -SCAN_S

    def _scan(self) -> None:
        for root in self.dirs:
            folders = {root}
            level = [root]
            for _ in range(DEPTH):
                level = [c for d in level if d.is_dir() for c in d.iterdir() if c.is_dir()]
                folders.update(level)
            for folder in folders:
                if folder in self._found:
                    continue
                if (folder / "metrics.csv").exists() or (folder / "summary.json").exists():
                    name = str(folder.relative_to(root)) if folder != root else root.name
                    self._found[folder] = (name or str(root), _File(folder / "metrics.csv"),
                                           _File(folder / "summary.json"))

    def runs(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._scanned >= SCAN_S:
                self._scan()
                self._scanned = time.monotonic()
            found = [self._run(folder, *files) for folder, files in self._found.items()]
        found = [r for r in found if r is not None]
        found.sort(key=lambda r: r["updated"], reverse=True)
        return found[:MAX_RUNS]

    @staticmethod
    def _run(folder: Path, name: str, metrics: _File, summary: _File) -> dict[str, Any] | None:
        rows, rows_time = metrics.read(_metrics)
        done, done_time = summary.read(_summary)
        times = [t for t in (rows_time, done_time) if t is not None]
        if not times:
            return None  # removed since
        updated = max(times)
        if done_time is not None and (rows_time is None or done_time >= rows_time):
            status = "finished"
        else:
            status = "running" if time.time() - updated < STALE_S else "stopped"
        rows = rows or []
        last = rows[-1] if rows else {}
        queries = (done or {}).get("physical_queries") or last.get("physical_queries")
        return {"name": name, "path": str(folder), "status": status, "updated": updated,
                "epoch": last.get("epoch"), "physical_queries": queries, "rows": rows,
                "summary": done}
