"""The store in-process: round trip of arrays, group commit under concurrency, the sequence
high-water mark, the layout and its upgrade mechanism, pruning, segment repair after a crash
or power loss, and the reader's filters and streaming."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from labd.store import database, ring, upgrades
from labd.store.reader import StoreReader
from labd.store.segments import blobs_dir, segment_files
from labd.store.writer import Measurement, Store, StoreError

RNG = np.random.default_rng(0)


def measurement(seq: int, rows: int = 2, system: str = "sys", client: str = "c1",
                theta_rows: bool = False, received: float | None = None,
                dims: tuple[int, int, int] = (3, 2, 4)) -> Measurement:
    n_in, n_p, n_out = dims
    now = time.time() if received is None else received
    theta = RNG.standard_normal((rows, n_p) if theta_rows else n_p).astype(np.float32)
    return Measurement(system=system, seq=seq, client=client, request_id=f"r{seq}",
                       x=RNG.standard_normal((rows, n_in)).astype(np.float32), theta=theta,
                       y=RNG.standard_normal((rows, n_out)).astype(np.float32),
                       received=now, done=now + 0.001, elapsed_s=0.0005)


def open_store(path: Path, **kw) -> Store:
    store = Store(path, **kw)
    store.start_run({"systems": {}}, {"sys": {"name": "sys"}}, {"numpy": np.__version__})
    return store


@pytest.mark.usefixtures("file_calls")
def test_round_trip_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    sent = [measurement(0, 2), measurement(2, 3, theta_rows=True),
            measurement(5, 1, system="other", client="c2", dims=(5, 1, 1))]
    for m in sent:
        store.record(m)
    store.close()
    with StoreReader(path) as reader:
        recs = list(reader.records())
        assert [r.seq for r in recs] == [0, 2, 5]
        for r, m in zip(recs, sent, strict=True):
            assert (r.system, r.client, r.request_id, r.rows) == (m.system, m.client,
                                                                  m.request_id, m.x.shape[0])
            np.testing.assert_array_equal(r.x, m.x)
            np.testing.assert_array_equal(r.theta, m.theta)
            np.testing.assert_array_equal(r.y, m.y)
        x, theta, y = reader.load_arrays(system="sys")
        assert x.shape == (5, 3) and theta.shape == (5, 2) and y.shape == (5, 4)
        np.testing.assert_array_equal(theta[:2], np.broadcast_to(sent[0].theta, (2, 2)))
        np.testing.assert_array_equal(theta[2:], sent[1].theta)
        assert [len(b[0]) for b in reader.iter_batches(system="sys", chunk_rows=2)] == [2, 3]
        assert reader.count(client="c2")[:2] == (1, 1)
        assert reader.count(since=time.time() + 60) == (0, 0, 0)
        assert reader.count(run=1)[0] == 3 and reader.count(run=2)[0] == 0
        assert reader.dimensions() == {(3, 2, 4), (5, 1, 1)}
        with pytest.raises(ValueError, match="different dimensions"):
            reader.load_arrays()
        (run,) = reader.runs()
        assert run["devices"] == {"sys": {"name": "sys"}} and "numpy" in run["versions"]


@pytest.mark.usefixtures("file_calls")
def test_concurrent_records_and_sequence_high_water(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    assert store.next_seq() == 0

    def hammer(first: int) -> None:
        for k in range(25):
            store.record(measurement(first + 2 * k, 2))

    threads = [threading.Thread(target=hammer, args=(t * 1000,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.reserve("unrecorded", 5000, 7)  # a system with record = false took 5000..5006
    store.close()
    with pytest.raises(StoreError):
        store.record(measurement(9000))
    again = Store(path)
    assert again.next_seq() == 5007
    again.close()
    with StoreReader(path) as reader:
        assert reader.count()[:2] == (100, 200)
        assert reader.info()["unrecorded"] == {"unrecorded": {"requests": 1, "rows": 7}}


def test_duplicate_seq_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "m.sqlite")
    store.record(measurement(0))
    with pytest.raises(StoreError, match="UNIQUE"):
        store.record(measurement(0))
    store.record(measurement(2))  # the writer goes on after a failed group
    store.close()


def test_layout_version_and_foreign_files(tmp_path: Path) -> None:
    """A new store has the initial layout at the latest version; a file of a newer labd and an
    SQLite file of another program are refused with a message, untouched."""
    path = tmp_path / "m.sqlite"
    open_store(path).close()
    conn = sqlite3.connect(path)
    assert database.version(conn) == database.latest() == 1 + len(upgrades.STEPS)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(database.SchemaError, match="newer"):
        Store(path)
    with pytest.raises(database.SchemaError, match="version 99"):
        StoreReader(path)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(database.SchemaError, match="not a labd measurement store"):
        Store(other)


def test_upgrade_steps_run_in_order_each_in_one_transaction(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The mechanism the first upgrade step will use: a version 1 file gets steps 2 and 3; a
    step that fails leaves the file at the version before it, without its changes."""
    def add_notes(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE runs ADD COLUMN notes TEXT")

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("step failed")

    conn = sqlite3.connect(tmp_path / "m.sqlite", isolation_level=None)
    assert database.prepare(conn) == 0 and database.version(conn) == 1
    monkeypatch.setattr(upgrades, "STEPS", {2: add_notes, 3: fail})
    with pytest.raises(RuntimeError):
        database.prepare(conn)
    assert database.version(conn) == 2
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables
    monkeypatch.setattr(upgrades, "STEPS", {2: add_notes, 3: lambda c: None})
    assert database.prepare(conn) == 2
    assert database.version(conn) == 3
    assert "notes" in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}


def test_upgrade_steps_are_found_one_module_each(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "labd_test_steps"
    package.mkdir()
    for name in ("__init__", "helpers", "v2", "v3"):
        (package / f"{name}.py").write_text("def upgrade(conn):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    steps = upgrades.find_steps([str(package)], "labd_test_steps")
    assert sorted(steps) == [2, 3]
    (package / "v5.py").write_text("def upgrade(conn):\n    pass\n")
    with pytest.raises(ImportError, match="gap"):
        upgrades.find_steps([str(package)], "labd_test_steps")
    assert upgrades.STEPS == {}  # none published yet: every store has the initial layout


def test_prune_by_age(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    old = time.time() - 3 * 86400
    for seq in range(0, 10, 2):
        store.record(measurement(seq, received=old))
    store.record(measurement(10))
    store.close()
    before = on_disk(path)
    store = open_store(path, max_age_days=1.0)  # prunes at start, in the writer thread
    store.record(measurement(12))
    store.close()
    with StoreReader(path) as reader:
        assert [r.seq for r in reader.records()] == [10, 12]
        live = reader.count()[2]
    # the segment that held the pruned arrays was compacted away: the survivors' bytes remain
    assert sum(p.stat().st_size for p in segment_files(blobs_dir(path)).values()) == live
    assert on_disk(path) <= before
    assert Store(path).next_seq() == 14


@pytest.mark.usefixtures("file_calls")
def test_prune_by_size(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    for k in range(40):  # 40 measurements of ~200 KiB each: ~8 MiB
        store.record(measurement(k * 64, 64, dims=(256, 256, 256)))
    store.close()
    before = on_disk(path)
    store = open_store(path, max_bytes=2 * 2**20)
    store.close()
    with StoreReader(path) as reader:
        seqs = [r.seq for r in reader.records()]
        assert 0 < len(seqs) < 40 and seqs == list(range(64 * (40 - len(seqs)), 40 * 64, 64))
        info = reader.info()
        assert info["store_bytes"] <= 2 * 2**20 + 512 * 1024
        assert info["blob_bytes"] >= len(seqs) * 64 * 512 * 4  # the survivors' x and y
        for r in reader.records():  # their arrays moved out of the pruned segment intact
            assert r.x.shape == (64, 256) and r.y.shape == (64, 256)
    assert on_disk(path) < 2 * 2**20 + 512 * 1024 < before
    assert Store(path).next_seq() == 40 * 64  # the high-water mark survives pruning


def on_disk(path: Path) -> int:
    """Bytes of the database file and its segment files."""
    return path.stat().st_size + sum(p.stat().st_size
                                     for p in segment_files(blobs_dir(path)).values())


def thetas_stored(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM thetas").fetchone()[0]
    finally:
        conn.close()


def test_repeated_theta_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    a, b = (RNG.standard_normal(64).astype(np.float32) for _ in range(2))
    sent = []
    for k, value in enumerate([a, a, b, a, b, b, a]):
        m = measurement(2 * k, dims=(3, 64, 4))  # equal values in a new array each time
        m = Measurement(**{**{f: getattr(m, f) for f in m.__slots__}, "theta": value.copy()})
        store.record(m)
        sent.append((m, value.copy()))
    # the same bytes on another system, with another shape, and per-row thetas
    other = measurement(100, rows=2, system="other", dims=(3, 64, 4))
    other = Measurement(**{**{f: getattr(other, f) for f in other.__slots__},
                           "theta": a.reshape(1, 64)})
    store.record(other)
    store.record(measurement(200, rows=3, system="rows", theta_rows=True))
    ring = store._ring.end - store._ring.base
    store.close()
    # a, b and the per-row theta; the ring held theta bytes four times (a, b, other, rows)
    assert thetas_stored(path) == 3
    assert ring < 8 * 400 + 4 * 64 * 4 + 9 * (12 + 32) * 4
    # and the segments each distinct theta once: a, b, rows
    x_y = 7 * 2 * (3 + 4) * 4 + 2 * (3 + 4) * 4 + 3 * (3 + 4) * 4
    assert on_disk(path) - path.stat().st_size == x_y + 2 * 64 * 4 + 3 * 2 * 4
    with StoreReader(path) as reader:
        recs = list(reader.records())
        for r, (m, value) in zip(recs, sent, strict=False):
            assert r.seq == m.seq
            np.testing.assert_array_equal(r.theta, value)
            np.testing.assert_array_equal(r.x, m.x)
        assert recs[7].theta.shape == (1, 64)
        np.testing.assert_array_equal(recs[7].theta, a.reshape(1, 64))
        theta = np.concatenate([b[1] for b in reader.iter_batches(system="sys")])
        np.testing.assert_array_equal(theta, np.repeat([v for _, v in sent], 2, axis=0))
        assert reader.count(system="sys") == (7, 14, 7 * (2 * 3 + 64 + 2 * 4) * 4)  # as sent
        assert reader.count() == (9, 19, 8 * (2 * 3 + 64 + 2 * 4) * 4 + 3 * (3 + 2 + 4) * 4)
        assert reader.info()["systems"]["sys"]["bytes"] == 7 * (2 * 3 + 64 + 2 * 4) * 4



def test_pruning_keeps_shared_thetas_and_drops_orphans(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    old = time.time() - 3 * 86400
    shared, gone = (RNG.standard_normal(2).astype(np.float32) for _ in range(2))

    def with_theta(seq: int, theta: np.ndarray, received: float | None = None) -> Measurement:
        m = measurement(seq, received=received)
        return Measurement(**{**{f: getattr(m, f) for f in m.__slots__}, "theta": theta.copy()})

    store.record(with_theta(0, gone, old))
    store.record(with_theta(2, shared, old))
    store.record(with_theta(4, shared))  # a reference to seq 2's theta, pruned below
    store.close()
    assert thetas_stored(path) == 2
    # pruning at start and then every 0.05 s while records referring to each other arrive
    store = open_store(path, max_age_days=1.0, prune_interval_s=0.05)
    for seq in range(6, 60, 2):
        store.record(with_theta(seq, shared, old if seq % 4 == 0 else None))
        time.sleep(0.01)
    store.close()
    with StoreReader(path) as reader:
        recs = list(reader.records())
    assert 4 in [r.seq for r in recs] and 0 not in [r.seq for r in recs]
    assert {s for s in range(6, 60, 2) if s % 4} <= {r.seq for r in recs}  # the recent ones
    for r in recs:
        np.testing.assert_array_equal(r.theta, shared)
    assert thetas_stored(path) == 1
    store = open_store(path, max_age_days=1e-9)  # everything is older than that
    store.close()
    with StoreReader(path) as reader:
        assert reader.count() == (0, 0, 0)
    assert thetas_stored(path) == 0


@pytest.mark.usefixtures("file_calls")
def test_synchronous_full_and_a_record_larger_than_the_ring(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """With a 64 KiB ring: records wrap around it (msync-ed in "full" mode), and one larger
    than the ring waits for ingestion and grows it; everything reads back."""
    monkeypatch.setattr(ring, "RING_BYTES", 64 * 1024)
    path = tmp_path / "m.sqlite"
    store = open_store(path, synchronous="full")
    sent = [measurement(2 * k, dims=(300, 7, 500)) for k in range(40)]  # ~6.5 KiB each
    sent.append(measurement(80, rows=64, dims=(300, 7, 500)))  # ~200 KiB
    sent.append(measurement(200, dims=(300, 7, 500)))
    for m in sent:
        store.record(m)
    assert store._ring.size >= 2 * 200 * 1024
    store.close()
    with StoreReader(path) as reader:
        recs = list(reader.records())
    assert [r.seq for r in recs] == [m.seq for m in sent]
    for r, m in zip(recs, sent, strict=True):
        np.testing.assert_array_equal(r.x, m.x)
        np.testing.assert_array_equal(r.theta, m.theta)
        np.testing.assert_array_equal(r.y, m.y)


@pytest.mark.usefixtures("file_calls")
def test_uncommitted_segment_bytes_are_cut_off(tmp_path: Path) -> None:
    """Bytes a writer appended to a segment without committing the rows (a crash in between)
    and segment files SQLite does not know are removed when the store is opened."""
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    sent = [measurement(0), measurement(2)]
    for m in sent:
        store.record(m)
    store.close()
    files = segment_files(blobs_dir(path))
    (newest,) = files.values()
    size = newest.stat().st_size
    with newest.open("ab") as fh:
        fh.write(b"\xff" * 1000)
    stray = blobs_dir(path) / "00000099.seg"
    stray.write_bytes(b"\xff" * 10)
    store = open_store(path)
    store.record(measurement(4))
    store.close()
    assert not stray.exists()
    assert newest.stat().st_size == size + (3 * 2 + 2 + 4 * 2) * 4  # x, theta and y of seq 4
    with StoreReader(path) as reader:
        recs = list(reader.records())
    assert [r.seq for r in recs] == [0, 2, 4]
    np.testing.assert_array_equal(recs[1].y, sent[1].y)


@pytest.mark.usefixtures("file_calls")
def test_rows_whose_arrays_a_power_loss_took_are_dropped(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """A segment shorter than SQLite committed (its last bytes never reached the disk) loses
    the measurements that refer past its end, with an error in the log; the rest reads back."""
    path = tmp_path / "m.sqlite"
    store = open_store(path)
    sent = [measurement(2 * k) for k in range(3)]
    for m in sent:
        store.record(m)
    store.close()
    (segment,) = segment_files(blobs_dir(path)).values()
    os.truncate(segment, segment.stat().st_size - 4)  # the last y's last float
    store = open_store(path)
    store.record(measurement(6))
    store.close()
    assert "lost their arrays" in caplog.text
    with StoreReader(path) as reader:
        recs = list(reader.records())
    assert [r.seq for r in recs] == [0, 2, 6]
    np.testing.assert_array_equal(recs[1].x, sent[1].x)


def test_the_store_imports_nothing_of_labd_outside_itself() -> None:
    """The store sits below the daemon, the trainer and the drivers: loading it loads none."""
    code = ("import sys, labd.store.reader, labd.store.writer; print(' '.join(m for m in "
            "sys.modules if m.split('.')[0] in ('labd', 'drivers', 'protocols')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded and {m for m in loaded if not m.startswith("labd.store")} == {"labd"}
