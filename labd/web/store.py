"""``StoreWatch``: size, rows, oldest and newest measurement of a store file, read-only.

Contract:

* ``summary(path)`` returns ``{"path", "readable", "bytes", "measurements", "rows",
  "oldest", "newest", "error"}`` (times in UNIX seconds, ``None`` for an empty store). The file
  is opened read-only (SQLite ``mode=ro``): the monitor never writes a store, never replays a
  crashed daemon's journal (that is the next daemon's or reader's job) and takes no lock a
  daemon would wait for.
* Counting rows scans the measurements table, so a summary is reused for
  ``max(MIN_INTERVAL_S, 50 x the last query's duration)`` seconds: a large store costs its
  reader at most about 2% of one core. The size (database, its WAL and the segment files) is
  the files' sizes on disk.
* A path that does not exist here (a daemon on another machine) gives ``readable: false`` and
  says so in ``error``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

MIN_INTERVAL_S = 5.0


def _disk_bytes(path: Path) -> int:
    """Bytes on disk of the store at ``path``: the database, its WAL and the array segments."""
    total = 0
    for p in (path, Path(f"{path}-wal"), *Path(f"{path}.labd-blobs").glob("*")):
        try:
            total += p.stat().st_size
        except OSError:  # a segment deleted by pruning meanwhile
            continue
    return total


def read_summary(path: Path) -> dict[str, Any]:
    """The summary of the store at ``path`` (see the module docstring)."""
    out: dict[str, Any] = {"path": str(path), "readable": False, "bytes": None,
                           "measurements": None, "rows": None, "oldest": None, "newest": None,
                           "error": ""}
    if not path.exists():
        out["error"] = "not on this machine (the daemon's store is read where it is written)"
        return out
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            n, rows = conn.execute(
                "SELECT count(*), coalesce(sum(rows), 0) FROM measurements").fetchone()
            oldest = conn.execute("SELECT min(received) FROM measurements").fetchone()[0]
            newest = conn.execute("SELECT max(received) FROM measurements").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        out["error"] = f"cannot read it: {exc}"
        return out
    out.update(readable=True, bytes=_disk_bytes(path), measurements=int(n), rows=int(rows),
               oldest=oldest, newest=newest)
    return out


class StoreWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._until = 0.0  # time.monotonic() until which the cached summary is reused

    def summary(self, path: str | None) -> dict[str, Any] | None:
        """The store's summary (``None`` when the daemon records nothing)."""
        if not path:
            return None
        with self._lock:
            now = time.monotonic()
            if self._cached is None or self._cached["path"] != path or now >= self._until:
                self._cached = read_summary(Path(path))
                took = time.monotonic() - now
                self._until = time.monotonic() + max(MIN_INTERVAL_S, 50 * took)
            return self._cached
