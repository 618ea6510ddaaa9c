"""``python -m benchmarks.monitor`` runs in its quick form and writes its figures (a smoke
test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_bench_monitor(tmp_path):
    out = tmp_path / "monitor.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.monitor", "--quick", "--json",
                           str(out)], capture_output=True, text=True, timeout=170, check=False,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["payload_bytes"] for r in rows] == [48, 262144]
    for r in rows:
        assert r["plain_median_us"] > 0 and r["watched_median_us"] > 0
        assert 0.05 < r["ratio"] < 20  # a smoke test: both measured (noise is large here)
