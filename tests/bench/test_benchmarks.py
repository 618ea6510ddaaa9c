"""Every benchmark runs from the command line (``python -m benchmarks.NAME``) in its quick form
and writes valid JSON with the figures the README quotes (bounds are generous: these are smoke
tests, not performance tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: The checkout: benchmarks are not installed, they run from there.
ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


@pytest.mark.timeout(60)
def test_transport(tmp_path: Path) -> None:
    figures = bench(tmp_path, "transport", "--quick")
    rows = figures["rows"]
    assert [r["payload_bytes"] for r in rows] == [48, 262144]
    for r in rows:
        assert r["labd_median_us"] > 0 and r["raw_median_us"] > 0
        assert 0.5 < r["ratio"] < 100
        assert r["labd_p99_us"] >= r["labd_p50_us"]
        # the floor server answered every round trip (it exits on a bad header or range)
        assert r["floor_median_us"] > 0 and 0.5 < r["floor_ratio"] < 100
        # the REQ/REP echo sends x and theta back: more bytes than the tight echo's y
        assert r["reqrep_median_us"] > 0 and 0.2 < r["reqrep_ratio"] < 100


@pytest.mark.timeout(60)
def test_sim(tmp_path: Path) -> None:
    figures = bench(tmp_path, "sim", "--quick")
    assert set(figures["systems"]) == {"shg", "plate", "oscillator"}
    assert all(v > 100 for v in figures["systems"].values())


@pytest.mark.timeout(90)
def test_duty(tmp_path: Path) -> None:
    figures = bench(tmp_path, "duty", "--quick")
    assert 0.05 < figures["duty_cycle"] <= 1.0
    # one epoch: 210 training vowels and the 49 test vowels (the evaluation), every layer
    assert figures["shots"] == (210 + 49) * figures["depth"]
    assert figures["labd_pipelined_steps"]["shots"] == 210 * figures["depth"]
    for name in ("reference", "labd_sync", "labd_pipelined", "labd_pipelined_steps"):
        assert 0.05 < figures[name]["duty_cycle"] <= 1.0
    for name in ("reference", "labd_sync", "labd_pipelined"):
        assert 0.0 <= figures[name]["final_test_accuracy"] <= 1.0


@pytest.mark.timeout(60)
def test_store(tmp_path: Path) -> None:
    figures = bench(tmp_path, "store", "--round-trips", "20", "--dim", "4096")
    assert figures["round_trips"] == 20 and 0.2 < figures["ratio"] < 20
