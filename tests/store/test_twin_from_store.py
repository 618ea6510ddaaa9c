"""A digital twin fitted from the measurement store matches one fitted from a fresh collection.

The daemon records a twin collection on the SHG stand-in; one twin is fitted from the store's
rows (streamed by ``StoreReader.iter_batches``), another from a second, fresh collection; both
are judged on a third, held-out measurement set.
"""

from __future__ import annotations

import json
import subprocess
import sys

from labd.client import LabClient
from labd.daemon.process import LocalDaemon
from labd.store.reader import StoreReader
from labd.train.hardware import Hardware
from labd.train.twins import collect, fit_twin, nrmse

FIT = {"family": "residual", "hidden": (64, 64), "epochs": 12, "seed": 0, "progress": False}


def test_twin_from_store_matches_twin_from_fresh_collection(tmp_path):
    store = tmp_path / "m.sqlite"
    with LocalDaemon(store=store) as daemon, LabClient(daemon.endpoint, timeout_s=60) as client:
        shg = Hardware(client, "shg")
        recorded = collect(shg, 3000, seed=1, progress=False)  # goes into the store
        with LabClient(daemon.endpoint) as other:  # a second client: not in the store's filter
            fresh = collect(Hardware(other, "shg"), 3000, seed=2, progress=False)
            judge = collect(Hardware(other, "shg"), 1000, seed=3, progress=False)
        description = shg.description
    with StoreReader(store) as reader:
        assert reader.count(system="shg")[1] == 3000 + 3000 + 1000
        clients = {r.client for r in reader.records(system="shg")}
        first, = (c for c in clients if reader.count(system="shg", client=c)[1] == 3000)
        x0, theta0, y0 = next(reader.iter_batches(system="shg", client=first, chunk_rows=64))
        n = len(x0)  # the first stored request, as the client sent and received it
        assert (x0 == recorded.x[:n]).all() and (theta0 == recorded.theta[:n]).all()
        assert (y0 == recorded.y[:n]).all()
        from_store, _ = fit_twin(reader.iter_batches(system="shg", client=first,
                                                     chunk_rows=1024), description, **FIT)
    from_fresh, _ = fit_twin(fresh, description, **FIT)
    e_store = nrmse(from_store, judge.x, judge.theta, judge.y)
    e_fresh = nrmse(from_fresh, judge.x, judge.theta, judge.y)
    print(f"held-out NRMSE: twin from store {e_store:.6f}, from a fresh collection "
          f"{e_fresh:.6f}")
    assert e_store < 0.2 and e_fresh < 0.2
    assert abs(e_store - e_fresh) < 0.25 * max(e_store, e_fresh)


def test_twin_fit_command_reads_the_store(tmp_path):
    store = tmp_path / "m.sqlite"
    with LocalDaemon(store=store) as daemon, LabClient(daemon.endpoint, timeout_s=60) as client:
        collect(Hardware(client, "shg"), 1000, seed=1, progress=False)
    out = tmp_path / "twin.pt"
    done = subprocess.run(
        [sys.executable, "-m", "labd", "twin", "fit", "--from-store", str(store), "--system",
         "shg", "--out", str(out), "--epochs", "3", "--hidden", "32"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held-out NRMSE" in done.stdout
    assert out.exists() and out.with_suffix(".json").exists() and out.with_suffix(".png").exists()
    assert json.loads(out.with_suffix(".json").read_text())["description"]["name"] == "shg"
    missing = subprocess.run(
        [sys.executable, "-m", "labd", "twin", "fit", "--from-store", str(store), "--system",
         "plate", "--out", str(tmp_path / "none.pt")], capture_output=True, text=True,
        timeout=120)
    assert missing.returncode == 2 and "no measurement of 'plate'" in missing.stdout
