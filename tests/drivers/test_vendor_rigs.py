"""End to end on the vendor-library rigs, as a lab rehearses them: the example configurations
served by a real ``labd serve`` whose ``nidaqmx``, ``sounddevice`` and ``seabreeze`` are the
fakes (``drivers/emulators/vendor`` first on the daemon's ``PYTHONPATH``), talking to the
emulated hardware in its own process (``drivers.emulators.hardware_server``), real sockets
throughout. Each family serves a forward whose ``y`` follows the stand-in's physics; PAT trains
through the DAQ and the sound-card plate configurations with ``labd train --endpoint``."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vendor_rigs import EXAMPLES, correlation, nominal_y

from drivers.emulators.rehearse import daemon_env, rehearsal_config, start_hardware
from labd.client import LabClient
from labd.daemon.process import LocalDaemon, free_port, wait_ready

#: example, system, hardware clock speed (the plate's 6.7 s batches in ~30 ms)
RIGS = {"nidaq": ("plate-nidaq.toml", "plate", 200.0),
        "sound": ("plate-soundcard.toml", "plate", 200.0),
        "seabreeze": ("shg-seabreeze.toml", "shg", 50.0)}


@contextlib.contextmanager
def rehearsal(family: str, tmp: Path):
    example, system, speed = RIGS[family]
    hardware, info = start_hardware(EXAMPLES / example, system, seed=3, speed=speed)
    saved = dict(os.environ)
    try:
        config = rehearsal_config(EXAMPLES / example, info, tmp / example)
        os.environ.update(daemon_env(info))  # LocalDaemon passes its environment on
        with LocalDaemon(config=config) as daemon:
            yield daemon, system
    finally:
        os.environ.clear()
        os.environ.update(saved)
        hardware.terminate()
        hardware.wait(10)


@pytest.fixture(scope="module", params=sorted(RIGS))
def rig(request, tmp_path_factory):
    with rehearsal(request.param, tmp_path_factory.mktemp(request.param)) as served:
        yield request.param, *served


def test_forward_through_the_vendor_library_shows_the_physics(rig):
    family, daemon, system = rig
    with LabClient(daemon.endpoint, timeout_s=60) as client:
        d = client.describe(system)
        assert d["simulated"] is False
        assert d["instruments"]["detector"].split(".")[0] in ("nidaqmx", "sounddevice",
                                                             "seabreeze")
        rng = np.random.default_rng(5)
        lo, hi = d["input_range"]
        x = rng.uniform(lo, hi, (16, d["input_dim"])).astype(np.float32)
        theta = rng.uniform(*d["param_range"], d["param_dim"]).astype(np.float32)
        y = client.forward(system, x, theta)
        assert y.shape == (16, d["output_dim"]) and np.all(np.isfinite(y))
        corr = correlation(y, nominal_y(d, x, theta))
        assert corr > 0.9, f"{family}: y does not follow the stand-in's physics ({corr=:.3f})"
        health = client.status()["systems"][system]
        assert health["state"] != "fault", health


def _blobs(path: Path, dim: int, lo: float, hi: float) -> Path:
    """Three separable classes in ``dim`` features within [lo, hi] (96 rows, 1/4 test)."""
    rng = np.random.default_rng(0)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    centres = mid + 0.6 * half * rng.uniform(-1, 1, (3, dim))
    labels = np.repeat(np.arange(3), 32)
    features = np.clip(centres[labels] + 0.1 * half * rng.standard_normal((96, dim)), lo, hi)
    rows = [",".join([f"x{i}" for i in range(dim)] + ["label", "split"])]
    for k, (f, label) in enumerate(zip(features, labels, strict=True)):
        rows.append(",".join([f"{v:.4f}" for v in f]
                             + [str(label), "test" if k % 4 == 0 else "train"]))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("rig", ["nidaq", "sound"], indirect=True)
def test_pat_trains_through_the_plate_on_a_vendor_library(rig, tmp_path):
    """A short PAT run (5 epochs of 72 rows, the generic design, the nominal model's backward:
    no twin to fit) whose every forward goes through the vendor library's driver, started as
    a lab would. The budget is too small for the generic design to separate the classes (it
    needs tens of epochs); what is checked is that every step was measured on the hardware
    and that the training loss fell from the first epoch to the last."""
    family, daemon, system = rig
    with LabClient(daemon.endpoint) as client:
        d = client.describe(system)
    data = _blobs(tmp_path / "blobs.csv", d["input_dim"], *d["input_range"])
    run = subprocess.run(
        [sys.executable, "-m", "labd", "train", "--data", str(data), "--system", system,
         "--mode", "pat", "--backward", "nominal", "--endpoint", daemon.endpoint,
         "--epochs", "5", "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["physical_queries"] >= 5 * 72  # every training row, each epoch
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        loss = [float(row["train_loss"]) for row in csv.DictReader(fh)]
    assert len(loss) == 5 and all(np.isfinite(loss))
    assert loss[-1] < loss[0] - 0.01, f"{family}: PAT did not lower the loss: {loss}"


def test_rehearse_serves_a_lab_configuration_and_stops_cleanly():
    """``python -m drivers.emulators.rehearse``, as the docs tell a lab to run it."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.emulators.rehearse", "--config",
         str(EXAMPLES / "plate-nidaq.toml"), "--speed", "200", "--", "--bind", endpoint,
         "--events", "", "--store", ""], stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(endpoint, 120, proc)
        bus = proc.stderr.readline().rsplit("(", 1)[1].rstrip(")\n")
        assert Path(bus).exists()
        with LabClient(endpoint, timeout_s=60) as client:
            y = client.forward("plate", np.zeros((2, 16), np.float32), np.zeros(16, np.float32))
        assert y.shape == (2, 16)
    finally:
        proc.terminate()
        code = proc.wait(60)
    assert code == 0
    assert not Path(bus).exists(), "the hardware server outlived the rehearsal"
