"""Crashes of the writing process: measurements acknowledged by ``record`` survive a ``kill -9``
even before SQLite has them, replay is exactly once (also across laps of the ring over stale
records), a torn last record is ignored, references to thetas resolve at replay. Each test runs
on the native and the portable file calls (``file_calls``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labd.store.reader import StoreReader
from labd.store.ring import DATA, HEAD, HEAD_MAGIC, TRAILER, ring_path
from labd.store.writer import Store

pytestmark = pytest.mark.usefixtures("file_calls")

#: Records ``n`` measurements (seq 2k, 2 rows each, x filled with k, theta with k // 3: most
#: ring records refer to an earlier one's theta), printing each seq once ``record`` returned,
#: then dies by SIGKILL. ``ring`` bytes small forces laps of the ring (and waits for
#: ingestion); the writer thread stalls after ingesting the first ``stall`` records.
CRASHER = """
import os, signal, sys, time
import numpy as np
from labd.store import ring, writer
path, n, size, stall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ring.RING_BYTES = size
store = writer.Store(path)
store.start_run({}, {}, {})
for k in range(n):
    if k == stall:  # from now on only the ring holds the measurements
        while store._ingested != store._ring.end:
            time.sleep(0.01)
        writer.replay = lambda *args: time.sleep(3600)
    x = np.full((2, 3), k, np.float32)
    store.record(writer.Measurement(system="s", seq=2 * k, client="c", request_id=f"r{k}", x=x,
                             theta=np.full(2, k // 3, np.float32), y=x[:, :1] * 2, received=1.0,
                             done=2.0, elapsed_s=0.1))
    print(2 * k, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash(path: Path, n: int, ring: int = 64 * 2**20, stall: int = -1) -> list[int]:
    """Run CRASHER; the seqs it saw acknowledged."""
    out = subprocess.run([sys.executable, "-c", CRASHER, str(path), str(n), str(ring),
                          str(stall)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    return [int(v) for v in out.stdout.split()]


def stored(path: Path) -> list[int]:
    with StoreReader(path) as reader:
        recs = list(reader.records())
    for r in recs:
        np.testing.assert_array_equal(r.x, np.full((2, 3), r.seq // 2, np.float32))
        np.testing.assert_array_equal(r.theta, np.full(2, r.seq // 6, np.float32))
        np.testing.assert_array_equal(r.y, np.full((2, 1), r.seq, np.float32))
    return [r.seq for r in recs]


def test_acknowledged_survive_kill_9_before_ingestion(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    acked = crash(path, 20, stall=0)
    assert len(acked) == 20
    assert stored(path) == acked  # the reader replayed the dead writer's ring
    assert stored(path) == acked  # and only once
    store = Store(path)
    assert store.next_seq() == 40
    store.close()
    assert stored(path) == acked


def test_replay_exactly_once_across_laps(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    acked = crash(path, 60, ring=2048)  # ~5 records a lap: laps, skip marks, stale records
    acked += crash(path, 0, ring=2048)  # a second writer start: replays, then dies at once
    acked += crash(path, 0)
    seqs = stored(path)
    assert seqs == sorted(set(seqs)) and set(acked) <= set(seqs)


def test_torn_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    acked = crash(path, 5, stall=0)
    ring = ring_path(path)
    data = bytearray(ring.read_bytes())
    last = data.rfind(HEAD_MAGIC, DATA)
    _, _, n_meta, nx, nt, ny = HEAD.unpack_from(data, last)
    mark = last + HEAD.size + n_meta + nx + nt + ny
    data[mark:mark + TRAILER.size] = bytes(TRAILER.size)  # the commit mark never made it
    ring.write_bytes(bytes(data))
    assert stored(path) == acked[:-1]


def test_replay_resolves_references_to_ingested_thetas(tmp_path: Path) -> None:
    """Records written after the stall refer to thetas of measurements SQLite already has
    (k = 7, 8 to the one of k = 6); replay resolves them from the database."""
    path = tmp_path / "m.sqlite"
    acked = crash(path, 12, stall=7)
    assert len(acked) == 12
    assert stored(path) == acked
    assert stored(path) == acked
