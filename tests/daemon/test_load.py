"""Load: 8 concurrent clients x 500 forwards on two systems, with the store recording.

Every request is answered exactly once, sequence numbers are unique and gap-free across both
systems, and the store holds every measurement exactly once.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from labd.client import LabClient
from labd.daemon.process import LocalDaemon
from labd.store.reader import StoreReader
from tests.configs import loopback, table

CLIENTS = 8
FORWARDS = 500


def test_eight_clients_five_hundred_forwards_each(tmp_path):
    config = tmp_path / "load.toml"
    config.write_text(table("server", queue_depth=64) + loopback("worker", 8, inline=False)
                      + loopback("inline", 8, inline=True))
    store = tmp_path / "load.sqlite"
    results: dict[int, list[tuple[str, str, int, int]]] = {}
    errors: list[BaseException] = []

    def client_run(k: int) -> None:
        rng = np.random.default_rng(k)
        mine = []
        try:
            with LabClient(daemon.endpoint, timeout_s=30, retries=5) as client:
                for i in range(FORWARDS):
                    system = "worker" if (i + k) % 2 else "inline"
                    rows = int(rng.integers(1, 4))
                    x = rng.uniform(0, 0.5, (rows, 8)).astype(np.float32)
                    theta = rng.uniform(0, 0.5, 8).astype(np.float32)
                    rid = client.send("forward", {"system": system},
                                      (("x", x), ("theta", theta)))
                    result = client.result(rid)
                    np.testing.assert_allclose(result.y, x + theta, rtol=1e-6)
                    mine.append((system, rid, result.seq, rows))
        except Exception as exc:  # noqa: BLE001 - reported by the test thread below
            errors.append(exc)
        results[k] = mine

    with LocalDaemon(config=config, store=store) as daemon:
        threads = [threading.Thread(target=client_run, args=(k,)) for k in range(CLIENTS)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        wall = time.perf_counter() - started
        with LabClient(daemon.endpoint) as client:
            status = client.status()
    assert not errors, errors[:3]
    answered = [r for k in range(CLIENTS) for r in results[k]]
    assert len(answered) == CLIENTS * FORWARDS
    assert len({rid for _, rid, _, _ in answered}) == len(answered)  # each answered once
    covered = sorted((seq, rows) for _, _, seq, rows in answered)
    expected = covered[0][0]
    for seq, rows in covered:  # unique and gap-free
        assert seq == expected, f"gap or overlap at seq {seq}, expected {expected}"
        expected += rows
    served = sum(s["served"] for s in status["systems"].values())
    assert served == CLIENTS * FORWARDS
    with StoreReader(store) as reader:
        stored = sorted((r.seq, r.rows, r.request_id) for r in reader.records())
    assert len(stored) == len(answered)
    assert [(s, n) for s, n, _ in stored] == covered
    print(f"load: {len(answered)} forwards from {CLIENTS} clients in {wall:.1f} s "
          f"({len(answered) / wall:.0f}/s), seqs {covered[0][0]}..{expected - 1} gap-free")
