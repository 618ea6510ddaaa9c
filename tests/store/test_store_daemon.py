"""The store behind a real daemon subprocess: exactly what the client sent and received is
recorded, acknowledged measurements survive ``kill -9``, sequence numbers never repeat across
restarts (unrecorded systems included), and ``labd data info|export`` read it back. The
crash and ordering tests run on the native and the portable file calls (``file_calls``)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from labd.client import LabClient, LabError
from labd.daemon.process import LocalDaemon, free_port
from labd.store.reader import StoreReader
from tests.configs import loopback


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store-config") / "rig.toml"
    rig = {"input_range": [-1.0, 1.0], "param_range": [-1.0, 1.0], "physics": {"gain": 0.5},
           "bench": {"seed": 0, "timing": "fast"}}
    path.write_text(loopback("inline", 8, inline=True, record=True, **rig)
                    + loopback("worker", 8, inline=False, record=True, **rig)
                    + loopback("quiet", 8, inline=False, record=False, **rig))
    return path


#: Shared thetas (as a training minibatch repeats one): the store journals a reference to an
#: earlier measurement's theta instead of the bytes.
POOL = np.random.default_rng(7).uniform(-1, 1, (3, 8)).astype(np.float32)


def request(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows = int(rng.integers(1, 5))
    x = rng.uniform(-1, 1, (rows, 8)).astype(np.float32)
    if rng.random() < 0.5:
        return x, POOL[int(rng.integers(len(POOL)))].copy()
    return x, rng.uniform(-1, 1, (rows, 8)).astype(np.float32)


@pytest.mark.usefixtures("file_calls")
def test_every_forward_recorded_exactly(tmp_path: Path, config: Path) -> None:
    store = tmp_path / "m.sqlite"
    rng = np.random.default_rng(1)
    sent: dict[int, tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {}
    with LocalDaemon(config=config, store=store) as daemon, LabClient(daemon.endpoint) as client:
        for k in range(60):
            system = ("inline", "worker", "quiet")[k % 3]
            x, theta = request(rng)
            r = client.measure(system, x, theta)
            sent[r.seq] = (system, x, theta, np.array(r.y))
        ceiling = client.status()["next_seq"]
    recorded = {s: v for s, v in sent.items() if v[0] != "quiet"}
    with StoreReader(store) as reader:
        recs = list(reader.records())
        assert len(recs) == len(recorded) == 40
        for rec in recs:
            system, x, theta, y = recorded[rec.seq]
            assert rec.system == system and rec.rows == x.shape[0]
            np.testing.assert_array_equal(rec.x, x)
            np.testing.assert_array_equal(rec.theta, theta)
            np.testing.assert_array_equal(rec.y, y)
        info = reader.info()
        assert info["unrecorded"]["quiet"]["requests"] == 20
        assert info["next_seq"] == ceiling  # unrecorded numbers are covered too
        (run,) = reader.runs()
        assert set(run["devices"]) == {"inline", "worker", "quiet"}
        assert run["config"]["systems"]["quiet"]["record"] is False
    # numbers taken by the unrecorded system at the very end are not handed out again
    with LocalDaemon(config=config, store=store) as daemon, LabClient(daemon.endpoint) as client:
        assert client.measure("quiet", *request(rng)).seq == ceiling


@pytest.mark.usefixtures("file_calls")
def test_kill_9_under_load(tmp_path: Path, config: Path) -> None:
    store = tmp_path / "m.sqlite"
    acked: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(endpoint: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with LabClient(endpoint, timeout_s=2.0, retries=0) as client:
            while not stop.is_set():
                system = ("inline", "worker")[int(rng.integers(2))]
                x, theta = request(rng)
                try:
                    r = client.measure(system, x, theta)
                except LabError:
                    return  # the daemon is gone
                with lock:
                    acked.append((system, r.seq, x, theta, np.array(r.y)))

    daemon = LocalDaemon(config=config, store=store).start()
    threads = [threading.Thread(target=hammer, args=(daemon.endpoint, i)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    daemon.kill()  # SIGKILL mid-flight
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 50
    conn = sqlite3.connect(store)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with StoreReader(store) as reader:
        stored = {}
        for rec in reader.records():
            assert rec.seq not in stored  # none twice
            stored[rec.seq] = rec
    for system, seq, x, theta, y in acked:
        rec = stored[seq]
        assert rec.system == system
        np.testing.assert_array_equal(rec.x, x)
        np.testing.assert_array_equal(rec.theta, theta)
        np.testing.assert_array_equal(rec.y, y)
    top = max(r.seq + r.rows for r in stored.values())
    with LocalDaemon(config=config, store=store) as again, LabClient(again.endpoint) as client:
        assert client.measure("worker", *request(np.random.default_rng(9))).seq >= top


def labd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_data_info_and_export(tmp_path: Path, config: Path) -> None:
    store = tmp_path / "m.sqlite"
    rng = np.random.default_rng(2)
    sent = []
    with LocalDaemon(config=config, store=store) as daemon, LabClient(daemon.endpoint) as client:
        for _ in range(10):
            x, theta = request(rng)
            r = client.measure("worker", x, theta)
            sent.append((r.seq, x, np.broadcast_to(theta, (x.shape[0], 8)), np.array(r.y)))
        client.measure("inline", *request(rng))
    done = labd("data", "info", "--store", str(store), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["systems"]["worker"]["measurements"] == 10
    assert info["systems"]["worker"]["rows"] == sum(len(s[1]) for s in sent)
    text = labd("data", "info", "--store", str(store))
    assert text.returncode == 0 and "worker" in text.stdout and "runs: 1" in text.stdout
    assert "array segments" in text.stdout  # the store's size counts its segment files
    out = tmp_path / "worker.npz"
    done = labd("data", "export", "--store", str(store), "--system", "worker", "--since",
                "2000-01-01T00:00:00", "--out", str(out))
    assert done.returncode == 0, done.stderr
    with np.load(out) as data:
        np.testing.assert_array_equal(data["x"], np.concatenate([s[1] for s in sent]))
        np.testing.assert_array_equal(data["theta"], np.concatenate([s[2] for s in sent]))
        np.testing.assert_array_equal(data["y"], np.concatenate([s[3] for s in sent]))
        np.testing.assert_array_equal(
            data["seq"], np.concatenate([np.arange(s[0], s[0] + len(s[1])) for s in sent]))
    assert labd("data", "export", "--store", str(store), "--out", str(out)).returncode == 0
    assert labd("data", "export", "--store", str(store), "--system", "none",
                "--out", str(out)).returncode == 2


@pytest.mark.usefixtures("file_calls")
def test_a_second_daemon_on_the_same_store_is_refused_clearly(tmp_path: Path,
                                                               config: Path) -> None:
    store = tmp_path / "m.sqlite"
    with LocalDaemon(config=config, store=store):
        out = labd("serve", "--config", str(config), "--store", str(store), "--bind",
                   f"tcp://127.0.0.1:{free_port()}", "--events", "")
    assert out.returncode == 2, out.stderr
    assert "cannot open the measurement store" in out.stderr and "locked by another" in \
        out.stderr and "Traceback" not in out.stderr


def test_a_retry_across_kill_9_is_answered_from_the_record(tmp_path):
    """The reply to a recorded measurement is lost with the daemon; the client retries the
    same id at the restarted daemon and gets the recorded measurement, not a second one."""
    store = tmp_path / "m.sqlite"
    first = LocalDaemon(store=store).start()
    x = np.full((3, 12), 0.25, np.float32)
    theta = np.full(12, 0.5, np.float32)
    with LabClient(first.endpoint, timeout_s=30) as client:
        rid = client.send("forward", {"system": "loopback"}, (("x", x), ("theta", theta)))
        before = client.result(rid)
        first.kill()
        second = LocalDaemon(store=store, port=first.port).start()
        try:
            again = client.result(client.send("forward", {"system": "loopback"},
                                              (("x", x), ("theta", theta)), request_id=rid))
        finally:
            second.stop()
    assert again.seq == before.seq
    np.testing.assert_array_equal(again.y, before.y)
    with StoreReader(store) as reader:
        assert [r.request_id for r in reader.records()].count(rid) == 1
