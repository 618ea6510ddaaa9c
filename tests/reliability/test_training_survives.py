"""PAT training through the failures a lab sees: instrument faults and a daemon killed and
restarted in the middle of a run. Short runs of the SHG vowel network (the paper's design)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from labd.client import LabClient
from labd.config import default_config_text
from labd.daemon.process import LocalDaemon

SPECTROMETER = 'detector = { driver = "sim.spectrometer" }'
#: 2% of shots-batches fail: dropped links, garbled traces, and calls that time out.
FAULTS = ('detector = { driver = "sim.spectrometer", faults = { disconnect = 0.005, '
          'garbage = 0.01, timeout = 0.005, hang_s = 0.05 } }')


def train(endpoint: str, out: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "labd", "--log-level", "warning", "train", "--task", "vowels",
         "--system", "shg", "--mode", "pat", "--endpoint", endpoint, "--out", str(out),
         "--epochs", str(epochs), "--seed", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_pat_with_two_percent_instrument_faults(tmp_path):
    assert SPECTROMETER in default_config_text()
    faulty = tmp_path / "faulty.toml"
    faulty.write_text(default_config_text().replace(SPECTROMETER, FAULTS))
    results = {}
    for name, config in (("clean", None), ("faulty", faulty)):
        with LocalDaemon(config=config) as daemon:
            proc = train(daemon.endpoint, tmp_path / name, epochs=30)
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            with LabClient(daemon.endpoint) as client:
                results[name] = (summary(tmp_path / name),
                                 client.status()["systems"]["shg"]["errors"])
    (clean, _), (faulty_summary, faults) = results["clean"], results["faulty"]
    assert faults > 0, "no fault was injected"
    print(f"2% faults: {faults} instrument faults answered; test accuracy "
          f"{faulty_summary['test_accuracy']:.3f} vs {clean['test_accuracy']:.3f} fault-free")
    assert faulty_summary["test_accuracy"] >= clean["test_accuracy"] - 0.1


def test_pat_survives_kill_9_of_the_daemon(tmp_path):
    out = tmp_path / "run"
    first = LocalDaemon().start()
    proc = train(first.endpoint, out, epochs=40)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists():  # training is under way
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        first.kill()
        time.sleep(1.0)  # the lab notices, restarts the daemon where it was
        second = LocalDaemon(port=first.port).start()
        try:
            _, err = proc.communicate(timeout=600)
        finally:
            second.stop()
        assert proc.returncode == 0, err[-3000:]
        result = summary(out)
        assert result["mode"] == "pat" and result["test_accuracy"] > 0.3
        epochs = (out / "metrics.csv").read_text().splitlines()[1:]
        assert len(epochs) == 40  # every epoch ran, none twice
    finally:
        if proc.poll() is None:
            proc.kill()
        first.kill()
