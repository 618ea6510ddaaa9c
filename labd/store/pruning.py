"""Pruning: deleting measurements beyond a store's age and size limits, compacting segments.

``Pruner.prune()`` deletes in one transaction the measurements older than ``max_age_days``,
then the oldest until the database pages and segments fit ``max_bytes`` (0: no limit), the
thetas nothing refers to, and segments: unreferenced ones, and those at least half dead (or
partly dead while over ``max_bytes``) after copying their live arrays to the newest segment.
A failure is logged and changes nothing. The caller prunes where no record left to ingest
refers to a theta it may delete (the writer's fence). **Pruning deletes data.**
"""

from __future__ import annotations

import logging
import sqlite3
import time

from labd.store import files
from labd.store import segments as seg
from labd.store.database import transaction

log = logging.getLogger("labd.store")

ROW_OVERHEAD = 256  # bytes a measurement costs beyond its arrays (row, index entries)


class Pruner:
    def __init__(self, conn: sqlite3.Connection, segments: seg.SegmentWriter, max_bytes: int,
                 max_age_days: float) -> None:
        self.conn = conn
        self.segments = segments
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days

    def used_bytes(self) -> int:  # the database's used pages and the segments' bytes
        page, pages, free, blobs = self.conn.execute(
            "SELECT * FROM pragma_page_size, pragma_page_count, pragma_freelist_count, "
            "(SELECT coalesce(sum(bytes), 0) FROM segments)").fetchone()
        return page * (pages - free) + blobs

    def prune(self) -> None:
        conn, segments = self.conn, self.segments
        try:
            with transaction(conn, segments):
                deleted = self._delete_by_age() + self._delete_by_size()
                dropped = conn.execute("DELETE FROM thetas WHERE NOT EXISTS (SELECT 1 FROM "
                                       "measurements WHERE theta_id = thetas.id)").rowcount
                if deleted:
                    segments.rotate()  # the newest segment may have lost arrays too
                gone = self._compact() if deleted or dropped else []
            for segment in gone:
                seg.delete(seg.segment_path(segments.directory, segment))
            if deleted:
                conn.executescript("PRAGMA incremental_vacuum")  # execute() frees one page
                log.info("store: pruned %d measurements and %d thetas; %d segment files "
                         "deleted", deleted, dropped, len(gone))
        except (sqlite3.Error, OSError):
            log.exception("store: pruning failed")

    def _delete_by_age(self) -> int:
        if not self.max_age_days:
            return 0
        return self.conn.execute("DELETE FROM measurements WHERE received < ?", (
            time.time() - self.max_age_days * 86400.0,)).rowcount

    def _delete_by_size(self) -> int:
        """Delete the oldest measurements until the store fits (a shared theta counts once)."""
        if (excess := self.used_bytes() - self.max_bytes if self.max_bytes else 0) <= 0:
            return 0
        freed, cutoff, seen = 0, None, set()
        for mid, size, tid, theta_bytes in self.conn.execute(
                "SELECT m.id, m.x_bytes + m.y_bytes, m.theta_id, t.bytes FROM measurements m "
                "JOIN thetas t ON t.id = m.theta_id ORDER BY m.id"):
            freed += size + ROW_OVERHEAD + (theta_bytes if tid not in seen else 0)
            seen.add(tid)
            cutoff = mid
            if freed >= excess:
                break
        return 0 if cutoff is None else self.conn.execute(
            "DELETE FROM measurements WHERE id <= ?", (cutoff,)).rowcount

    def _compact(self) -> list[int]:
        """The segments before the newest to delete, their live arrays moved first."""
        conn = self.conn
        over = self.used_bytes() - self.max_bytes if self.max_bytes else 0
        gone = []
        for segment, size in conn.execute("SELECT id, bytes FROM segments WHERE id < ? "
                                          "ORDER BY id", (self.segments.segment,)).fetchall():
            measured = conn.execute("SELECT id, x_offset, x_bytes, y_offset, y_bytes FROM "
                                    "measurements WHERE segment = ?", (segment,)).fetchall()
            thetas = conn.execute("SELECT id, offset, bytes FROM thetas WHERE segment = ?",
                                  (segment,)).fetchall()
            dead = size - sum(r[2] + r[4] for r in measured) - sum(r[2] for r in thetas)
            if not (measured or thetas) or (dead > 0 and (2 * dead >= size or over > 0)):
                self._relocate(segment, measured, thetas)
                conn.execute("DELETE FROM segments WHERE id = ?", (segment,))
                gone.append(segment)
                over -= dead
        return gone

    def _relocate(self, segment: int, measured: list[tuple[int, int, int, int, int]],
                  thetas: list[tuple[int, int, int]]) -> None:
        """Copy the live arrays of ``segment`` into the newest segment; point the rows there."""
        if not (measured or thetas):
            return
        with open(seg.segment_path(self.segments.directory, segment), "rb") as fh:
            fd = fh.fileno()
            for mid, x_offset, nx, y_offset, ny in measured:
                new, at = self.segments.append([files.read_at(fd, nx, x_offset),
                                                files.read_at(fd, ny, y_offset)])
                self.conn.execute("UPDATE measurements SET segment = ?, x_offset = ?, "
                                  "y_offset = ? WHERE id = ?", (new, at, at + nx, mid))
            for tid, offset, n in thetas:
                new, at = self.segments.append([files.read_at(fd, n, offset)])
                self.conn.execute("UPDATE thetas SET segment = ?, offset = ? WHERE id = ?",
                                  (new, at, tid))
