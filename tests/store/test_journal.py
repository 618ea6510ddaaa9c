"""The store's journal: measurements acknowledged by ``record`` survive a ``kill -9`` of the
writing process even before SQLite has them, replay is exactly once (also across rewinds of the
journal over stale records), and a torn last record is ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from labd.store.journal import HEAD, HEAD_MAGIC, journal_path
from labd.store.reader import StoreReader
from labd.store.writer import Store

#: Records ``n`` measurements (seq 2k, 2 rows each, x filled with k, theta with k // 3: most
#: journal records refer to an earlier one's theta), printing each seq once ``record``
#: returned, then dies by SIGKILL. ``reset`` small forces rewinds of the journal.
CRASHER = """
import os, signal, sys, time
import numpy as np
from labd.daemon.recording import Measurement
from labd.store import writer
path, n, reset, stall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
writer.JOURNAL_RESET_BYTES = reset
store = writer.Store(path)
store.start_run({}, {})
for k in range(n):
    if k == stall:  # from now on only the journal holds the measurements
        while store._ingested != store._journal.end:
            time.sleep(0.01)
        writer._ingest = lambda *args: time.sleep(3600)
    x = np.full((2, 3), k, np.float32)
    store.record(Measurement(system="s", seq=2 * k, client="c", request_id=f"r{k}", x=x,
                             theta=np.full(2, k // 3, np.float32), y=x[:, :1] * 2, received=1.0,
                             done=2.0, elapsed_s=0.1))
    print(2 * k, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash(path: Path, n: int, reset: int = 64 * 2**20, stall: int = -1) -> list[int]:
    """Run CRASHER (its writer thread stalls after ingesting the first ``stall`` records);
    the seqs it saw acknowledged."""
    out = subprocess.run([sys.executable, "-c", CRASHER, str(path), str(n), str(reset),
                          str(stall)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    return [int(v) for v in out.stdout.split()]


def stored(path: Path) -> list[int]:
    with StoreReader(path) as reader:
        recs = list(reader.records())
    for r in recs:
        np.testing.assert_array_equal(r.x, np.full((2, 3), r.seq // 2, np.float32))
        np.testing.assert_array_equal(r.theta, np.full(2, r.seq // 6, np.float32))
    return [r.seq for r in recs]


def test_acknowledged_survive_kill_9_before_ingestion(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    acked = crash(path, 20, stall=0)
    assert len(acked) == 20
    assert stored(path) == acked  # the reader replayed the dead writer's journal
    assert stored(path) == acked  # and only once
    store = Store(path)
    assert store.next_seq() == 40
    store.close()


def test_replay_exactly_once_across_rewinds(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    acked = crash(path, 60, reset=1)  # rewinds whenever ingestion catches up
    acked += crash(path, 0)  # a second writer start: replays, then dies at once
    seqs = stored(path)
    assert seqs == sorted(set(seqs)) and set(acked) <= set(seqs)


def test_torn_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    acked = crash(path, 5, stall=0)
    journal = journal_path(path)
    with journal.open("rb") as fh:
        data = fh.read()
    last = data.rfind(HEAD_MAGIC)
    cut = last + HEAD.size + 10  # the last record's head and a few bytes of it: a torn write
    journal.write_bytes(data[:cut])
    assert stored(path) == acked[:-1]


def test_replay_resolves_references_to_ingested_thetas(tmp_path: Path) -> None:
    """Records journaled after the stall refer to thetas of measurements SQLite already has
    (k = 7, 8 to the one of k = 6); replay resolves them from the database."""
    path = tmp_path / "m.sqlite"
    acked = crash(path, 12, stall=7)
    assert len(acked) == 12
    assert stored(path) == acked
    assert stored(path) == acked
