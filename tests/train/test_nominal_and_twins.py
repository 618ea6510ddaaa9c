"""The trainer on systems with no nominal model or a lab's own, and what it says of its twins.

A real daemon serves, from a configuration file: ``bare``, a loopback told it has no nominal
model; ``unmodelled``, a saturating amplifier (a lab's class, named by its path) with none; and
``amp``, the same amplifier whose configuration names the lab's nominal model by its path.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import labd.nn as pnn
from drivers.physics.nominal import NoNominalModel
from labd.cli import main
from labd.config import load_config
from labd.daemon.process import LocalDaemon
from labd.train.arch import Arch
from labd.train.run import run_training
from labd.train.twins import NO_NOMINAL_TWIN
from tests.configs import loopback, table
from tests.plugins.test_plugins import SCRIPT

ROOT = Path(__file__).resolve().parents[2]

#: A small design for a 4-input system: 1 hybrid layer, 2 epochs, a small quick twin.
ARCH = Arch(depth=1, hybrid=True, readout="linear", epochs=2, batch_size=30,
            twin_samples=1000, twin_epochs=40, twin_hidden=(32,))
#: run_training's quick settings here: the small design, no progress bars, no bypass beside.
QUICK = {"arch": ARCH, "progress": False, "bypass_yardstick": False}
AMP = {"kind": "tanh_amp", "input_dim": 4, "param_dim": 4, "output_dim": 4,
       "input_range": [-1.0, 1.0], "param_range": [-1.0, 1.0], "encoding": {"layout": "add"},
       "physics": {"gain": 0.8}, "drive": {"driver": "sim.dac"},
       "detector": {"driver": "sim.adc"}}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDaemon]:
    folder = tmp_path_factory.mktemp("lab")
    (folder / "tanh_rig.py").write_text(textwrap.dedent(SCRIPT))
    bench = {"type": "tanh_rig:TanhBench", "seed": 0}
    config = folder / "rig.toml"
    config.write_text(loopback("bare", 4, nominal="")
                      + table("systems.unmodelled", **AMP, bench=bench)
                      + table("systems.amp", **AMP, bench=bench,
                              nominal="tanh_rig:TanhPhysics"))
    load_config(config)  # as `labd train --config` does: the lab's folder on this path too
    with LocalDaemon(config=config) as daemon:
        yield daemon


def test_pat_on_a_system_without_a_nominal_model_fits_its_twin_from_data(
        rig: LocalDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="labd.train"):
        s = run_training(task="vowels", system="unmodelled", mode="pat", out=tmp_path,
                         endpoints=[rig.endpoint], **QUICK)
    report = s["twins"][rig.endpoint]
    assert report["family"] == "mlp" and "nominal_nrmse" not in report
    assert report["holdout_nrmse"] < 0.3
    assert (s["forward"], s["backward"]) == ("hardware", "twin")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [NO_NOMINAL_TWIN % "unmodelled"]
    said = caplog.text
    for line in ("no twin given (--twin): measuring and fitting one for unmodelled into",
                 "collecting twin data: 1000 random points x 2 repeats of unmodelled (2000 shots)",
                 "collected 2000 shots of unmodelled in",
                 "fitting a twin of unmodelled (mlp: an MLP of the measurements alone): 40 epochs",
                 "fitted the mlp twin of unmodelled in"):
        assert line in said, said


@pytest.mark.parametrize(("argv", "need"), [
    (["--mode", "insilico"], "--mode insilico trains on"),
    (["--mode", "pat", "--backward", "nominal"], "--backward nominal takes its gradients on"),
])
def test_what_needs_a_nominal_model_is_refused_in_one_line(
        rig: LocalDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: list[str], need: str) -> None:
    for system, kind in (("bare", "loopback"), ("unmodelled", "tanh_amp")):
        code = main(["train", "--task", "vowels", "--system", system, *argv, "--endpoint",
                     rig.endpoint, "--out", str(tmp_path / system), "--no-progress"])
        out = capsys.readouterr()
        assert code == 1 and "Traceback" not in out.out + out.err
        lines = out.out.strip().splitlines()
        assert len(lines) == 1, out.out
        assert lines[0].startswith(f"labd train: system {system!r} (kind {kind!r}) has no "
                                   f"nominal model, which {need}: train with --mode pat"), lines
        assert not (tmp_path / system / "metrics.csv").exists()
    with pnn.connect(rig.endpoint, "bare") as bare, pytest.raises(NoNominalModel):
        pnn.PhysicalLayer(bare, "nominal")


def test_bypass_needs_no_nominal_model(rig: LocalDaemon, tmp_path: Path) -> None:
    s = run_training(task="vowels", system="bare", mode="bypass", out=tmp_path,
                     endpoints=[rig.endpoint], **QUICK)
    assert s["physical_queries"] == 0 and s["backward"] == "digital"


def test_twin_fit_says_when_it_fits_from_data_only(
        rig: LocalDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "unmodelled.npz"
    assert main(["twin", "collect", "--system", "unmodelled", "--endpoint", rig.endpoint,
                 "--samples", "500", "--out", str(data)]) == 0
    capsys.readouterr()
    fit = ["twin", "fit", "--data", str(data), "--epochs", "3", "--hidden", "16"]
    with caplog.at_level(logging.WARNING):
        assert main([*fit, "--out", str(tmp_path / "t.pt")]) == 0
    assert [r.getMessage() for r in caplog.records] == [NO_NOMINAL_TWIN % "unmodelled"]
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("twin (mlp: an MLP of the measurements alone) held-out NRMSE")
    assert json.loads((tmp_path / "t.json").read_text())["family"] == "mlp"
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # asked for: no warning
        assert main([*fit, "--family", "mlp", "--out", str(tmp_path / "u.pt")]) == 0
    assert not caplog.records
    capsys.readouterr()
    assert main([*fit, "--family", "residual", "--out", str(tmp_path / "r.pt")]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = out.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "labd twin fit: system 'unmodelled' (kind 'tanh_amp') has no nominal model"), lines
    assert lines[0].endswith(f"; nothing was written to {tmp_path / 'r.pt'}")
    assert not (tmp_path / "r.pt").exists()


def test_a_labs_own_nominal_model_serves_insilico_and_the_residual_twin(
        rig: LocalDaemon, tmp_path: Path) -> None:
    with pnn.connect(rig.endpoint, "amp") as amp:
        assert amp.description["nominal"]["model"] == "tanh_rig:TanhPhysics"
        twin, report = pnn.fit_twin(pnn.collect(amp, 1000, 2), epochs=5, hidden=(32,))
    assert twin.family == "residual" and type(twin.nominal.physics).__name__ == "TanhPhysics"
    # the lab's model is close to its rig (5% gain spread, 1% noise); the twin closer still
    assert report["holdout_nrmse"] < report["nominal_nrmse"] < 0.2
    s = run_training(task="vowels", system="amp", mode="insilico", out=tmp_path / "insilico",
                     endpoints=[rig.endpoint], **QUICK)
    assert (s["forward"], s["backward"]) == ("nominal", "nominal")
    s = run_training(task="vowels", system="amp", mode="pat", out=tmp_path / "pat",
                     endpoints=[rig.endpoint], **QUICK)
    assert s["twins"][rig.endpoint]["family"] == "residual"


def test_pat_without_a_twin_logs_what_it_collects_and_fits(tmp_path: Path) -> None:
    """`labd train --no-progress` without --twin: plain log lines while the twin is measured
    and fitted (it used to print nothing for minutes), no progress bar."""
    done = subprocess.run(
        [sys.executable, "-m", "labd", "train", "--task", "vowels", "--system", "loopback",
         "--mode", "pat", "--epochs", "1", "--no-progress", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for said in ("INFO    labd.train.run: no twin given (--twin): measuring and fitting one "
                 f"for loopback into {tmp_path / 'twin-0.pt'}",
                 "INFO    labd.train.twins: collecting twin data: 2000 random points x 2 "
                 "repeats of loopback (4000 shots)",
                 "INFO    labd.train.twins: collected 4000 shots of loopback in ",
                 "INFO    labd.train.twins: fitting a twin of loopback (residual: the nominal "
                 "model with a learned per-output gain and offset and an MLP correction): "
                 "20 epochs over 1800 points, 200 held out",
                 "INFO    labd.train.twins: fitting residual twin: epoch 5 of 20, training loss",
                 "INFO    labd.train.twins: fitted the residual twin of loopback in "):
        assert said in done.stderr, done.stderr
    assert "it/s" not in done.stderr and "epoch/s" not in done.stderr  # no tqdm bar
    assert torch.load(tmp_path / "twin-0.pt", weights_only=True)
    # the twin files the README names are the ones written
    named = set(re.findall(r"`(twin-0[^`]*)`", (ROOT / "README.md").read_text()))
    assert named == {p.name for p in tmp_path.glob("twin-*")}, named
