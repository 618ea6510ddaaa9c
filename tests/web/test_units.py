"""The monitor's parts on their own: the daemon's statistics, run folders as they grow."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from labd.daemon.metrics import BOUNDS, WINDOW_S, BusyWindow, Histogram, SystemStats
from labd.web import runs as runs_module
from labd.web.runs import RunWatch


def test_histogram_counts_each_value_in_the_first_bucket_at_least_as_large():
    h = Histogram()
    for v in (0.0, BOUNDS[0], BOUNDS[0] * 1.01, BOUNDS[-1], BOUNDS[-1] * 2):
        h.observe(v)
    assert h.counts[0] == 2  # 0 and exactly the first bound (Prometheus' le)
    assert h.counts[1] == 1
    assert h.counts[len(BOUNDS) - 1] == 1 and h.counts[len(BOUNDS)] == 1  # +Inf
    assert h.sum == pytest.approx(BOUNDS[0] * 2.01 + BOUNDS[-1] * 3)


def test_busy_window_is_the_last_minute_and_forgets_older_seconds():
    w = BusyWindow(now=1000.0)
    w.add(1000.5, 0.25)
    assert w.fraction(1001.0) == pytest.approx(0.25)  # over the one second since it began
    w.began = 900.0
    for t in range(1001, 1000 + WINDOW_S):
        w.add(t + 0.5, 0.5)
    # the window: the current second and the WINDOW_S - 1 before it
    assert w.fraction(999.5 + WINDOW_S) == pytest.approx((0.25 + 0.5 * (WINDOW_S - 1))
                                                         / WINDOW_S)
    # a minute after it, the first second's 0.25 s has left the window
    assert w.fraction(1000.0 + WINDOW_S) == pytest.approx(0.5 * (WINDOW_S - 1) / WINDOW_S)
    assert w.fraction(1000.0 + 3 * WINDOW_S) == 0.0


def test_system_stats_keep_a_copy_of_the_last_first_row():
    s = SystemStats(now=0.0)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    theta = np.ones((2, 3), np.float32)
    y = x * 2
    s.measured("alice", 7, x, theta, y, elapsed_s=0.002, received=10.0, done=10.01)
    x[0] = -1  # the request's buffers are reused: the monitor keeps its own copy
    arrays = dict(s.last_arrays("sys"))
    np.testing.assert_array_equal(arrays["sys/x"], [0, 1, 2])
    np.testing.assert_array_equal(arrays["sys/theta"], [1, 1, 1])
    np.testing.assert_array_equal(arrays["sys/y"], [0, 2, 4])
    s.answered("busy", "bob")
    s.fault("alice")
    out = s.to_json(now=10.5)
    assert out["requests"] == {"ok": 1, "busy": 1, "instrument_fault": 1}
    assert out["shots"] == 2 and out["faults"] == 1 and s.served == 1
    assert out["clients"]["alice"]["requests"] == 2 and out["clients"]["bob"]["requests"] == 1
    assert out["latency_s"]["sum"] == pytest.approx(0.01)
    assert out["last"] == {"seq": 7, "time": 10.01, "client": "alice", "rows": 2}


def _rows(path, n: int, settled: bool = True, cut: int = 0) -> None:
    """A metrics.csv of ``n`` epochs (its last ``cut`` characters missing), as old as a
    settled file or just written."""
    lines = ["epoch,train_loss,train_acc,test_acc,test_acc_model,physical_queries,wall_s"]
    lines += [f"{e},{1 / e:.3f},0.{e},0.{e},,{100 * e},{e}.5" for e in range(1, n + 1)]
    text = "\n".join(lines) + "\n"
    path.write_text(text[:len(text) - cut])
    if settled:
        old = time.time() - 2 * runs_module.SETTLE_S
        os.utime(path, (old, old))


def test_runs_are_found_read_as_they_grow_and_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_module, "SCAN_S", 0.0)
    (tmp_path / "a" / "seed0").mkdir(parents=True)
    _rows(tmp_path / "a" / "seed0" / "metrics.csv", 2)
    watch = RunWatch([tmp_path])
    [run] = watch.runs()
    assert run["name"] == "a/seed0" and run["epoch"] == 2 and run["status"] == "running"
    assert run["rows"][1] == {"epoch": 2, "train_loss": 0.5, "train_acc": 0.2,
                              "test_acc": 0.2, "test_acc_model": None,
                              "physical_queries": 200, "wall_s": 2.5}
    metrics = tmp_path / "a" / "seed0" / "metrics.csv"
    # caught mid-write: fewer epochs, or a cut line, keep the previous reading ...
    _rows(metrics, 1, settled=False)
    assert watch.runs()[0]["epoch"] == 2
    _rows(metrics, 3, settled=False, cut=4)
    assert watch.runs()[0]["epoch"] == 2
    # ... a complete file with more epochs is read at once, however fast the trainer is
    _rows(metrics, 3, settled=False)
    assert watch.runs()[0]["epoch"] == 3
    # and fewer epochs, once the file has settled, are real (a run started again)
    _rows(metrics, 1)
    assert watch.runs()[0]["epoch"] == 1
    _rows(metrics, 3)
    assert watch.runs()[0]["epoch"] == 3
    summary = tmp_path / "a" / "seed0" / "summary.json"
    summary.write_text('{"task": "vowels", "epochs": 3, "physical_queries": 999, '
                       '"test_accuracy": 0.9}')
    old = time.time() - runs_module.SETTLE_S * 2 + 0.1
    os.utime(summary, (old, old))
    [run] = watch.runs()
    assert run["status"] == "finished" and run["physical_queries"] == 999
    assert run["summary"]["test_accuracy"] == 0.9
