"""End to end with real drivers: a daemon drives the oscillator rig through the Keysight AWG and
scope drivers (SCPI over TCP, binary blocks) talking to protocol emulators with the simulated
circuit behind them. An emulator that stops answering yields a retryable ``instrument_fault``;
service resumes when it answers again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.physics.nominal import nominal_model
from labd.client import InstrumentFault, LabClient
from labd.daemon.process import LocalDaemon

EXAMPLE = Path(__file__).parents[2] / "examples" / "oscillator-emulated.toml"
pytest.importorskip("pyvisa_py")


@pytest.fixture(scope="module")
def emulated_rig(tmp_path_factory):
    config = tmp_path_factory.mktemp("rig") / "rig.toml"
    config.write_text(EXAMPLE.read_text().replace("timeout_s = 20.0", "timeout_s = 10.0"))
    emulators = subprocess.Popen(
        [sys.executable, "-m", "drivers.emulators.scpi_server", "--config", str(config),
         "--system", "oscillator", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE, text=True)
    try:
        addresses = json.loads(emulators.stdout.readline())
        text = config.read_text()
        text = text.replace('resource = "TCPIP::127.0.0.1::15025::SOCKET"',
                            f'resource = "{addresses["awg"]}"')
        text = text.replace('resource = "TCPIP::127.0.0.1::15026::SOCKET"',
                            f'resource = "{addresses["scope"]}"')
        config.write_text(text)
        with LocalDaemon(config=config) as daemon:
            yield daemon, emulators
    finally:
        emulators.terminate()
        emulators.wait(10)


def test_forward_through_real_drivers_returns_the_physics(emulated_rig):
    daemon, _ = emulated_rig
    with LabClient(daemon.endpoint, timeout_s=30) as client:
        d = client.describe("oscillator")
        assert d["simulated"] is False
        assert d["instruments"] == {"drive": "keysight.33500b",
                                    "detector": "keysight.infiniivision"}
        rng = np.random.default_rng(3)
        x = rng.uniform(-1, 1, (32, d["input_dim"])).astype(np.float32)
        theta = rng.uniform(-1, 1, d["param_dim"]).astype(np.float32)
        y = client.forward("oscillator", x, theta)
        assert y.shape == (32, d["output_dim"]) and np.all(np.isfinite(y))
        nominal = nominal_model(d)(torch.from_numpy(x), torch.from_numpy(theta)).numpy()
        corr = np.corrcoef(y.ravel(), nominal.ravel())[0, 1]
        assert corr > 0.8, f"the emulated rig does not follow the circuit's physics ({corr=})"


def test_emulator_that_stops_answering_faults_then_recovers(emulated_rig):
    daemon, emulators = emulated_rig
    x = np.zeros((2, 16), np.float32)
    theta = np.zeros(16, np.float32)
    with LabClient(daemon.endpoint, timeout_s=60, retries=0) as client:
        client.forward("oscillator", x, theta)
        emulators.send_signal(signal.SIGUSR1)  # mute (the signal lands asynchronously)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.forward("oscillator", x, theta)
            except InstrumentFault as err:
                assert err.retryable
                break
            assert time.monotonic() < deadline, "the muted emulator kept answering"
        assert client.status()["systems"]["oscillator"]["errors"] >= 1
        emulators.send_signal(signal.SIGUSR1)  # answer again
        deadline = time.monotonic() + 30
        while True:
            try:
                y = client.forward("oscillator", x, theta)
                break
            except InstrumentFault:
                assert time.monotonic() < deadline, "service did not resume"
                time.sleep(0.5)
        assert np.all(np.isfinite(y))


def test_pat_trains_through_the_emulated_instruments(emulated_rig, tmp_path):
    """A short PAT run whose every forward pass goes through the AWG and scope drivers."""
    from labd.train.arch import Arch
    from labd.train.run import run_training

    daemon, _ = emulated_rig
    rng = np.random.default_rng(0)
    centres = rng.uniform(-0.6, 0.6, (3, 16))
    labels = np.repeat(np.arange(3), 60)
    features = centres[labels] + rng.normal(0, 0.15, (180, 16))
    rows = ["," .join([f"x{i}" for i in range(16)] + ["label", "split"])]
    for k, (f, lab) in enumerate(zip(features, labels, strict=True)):
        rows.append(",".join([f"{v:.4f}" for v in f] + [str(lab),
                                                      "test" if k % 5 == 0 else "train"]))
    csv = tmp_path / "blobs.csv"
    csv.write_text("\n".join(rows) + "\n")
    arch = Arch(depth=1, readout="linear", epochs=4, batch_size=36, lr=0.05, lr_digital=0.05,
                twin_samples=256, twin_repeats=1, twin_epochs=20, twin_hidden=(64,))
    summary = run_training(data=csv, system="oscillator", mode="pat", out=tmp_path / "run",
                           endpoints=[daemon.endpoint], arch=arch, progress=False)
    assert summary["physical_queries"] > 256 + 4 * 144  # twin data and every training shot
    assert summary["test_accuracy"] > 0.6, summary  # chance is 1/3
