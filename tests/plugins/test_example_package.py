"""The example plugin package (examples/duffing-chain): installed, it serves and trains by its
registered names; not installed, the same classes serve and train by their dotted paths
(issue 14 point 3). Both through the real commands, in subprocesses, on real sockets."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from labd.client import LabClient
from labd.daemon.process import free_port, wait_ready

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "duffing-chain"


def labd(python: Path | str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m labd ARGS``; fails the test (with the command's output) unless it exits 0."""
    done = subprocess.run([str(python), "-m", "labd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"labd {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with the example package installed (``pip install -e``) beside everything this
    test run has. A venv of its own, so that the test run's environment is left as it was: it
    sees the test run's packages (labd, torch...) through a ``.pth`` file that adds their
    site-packages as a site directory (``venv --system-site-packages`` would show the base
    interpreter's instead); pip installs into it with ``--python``."""
    venv = tmp_path_factory.mktemp("plugin-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "labd-test-run.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    isolation = [] if int(version("setuptools").split(".")[0]) < 68 else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", *isolation, "-e", str(EXAMPLE)], check=True, timeout=600)
    return python


@pytest.fixture(scope="module")
def classes_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three Gaussian classes in 6 features, 600 rows (the --data CSV format)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (3, 6))
    path = tmp_path_factory.mktemp("data") / "classes.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([f"f{i}" for i in range(6)] + ["label"])
        for k in range(600):
            label = k % 3
            out.writerow([f"{v:.4f}" for v in centres[label] + rng.normal(0, 0.6, 6)]
                         + [label])
    return path


@pytest.fixture
def served(plugin_python: Path) -> Iterator[str]:
    """``labd serve`` of the installed example's configuration, run by the plugin's Python."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [str(plugin_python), "-m", "labd", "--log-level", "warning", "serve", "--config",
         str(EXAMPLE / "duffing-chain.toml"), "--bind", endpoint, "--events", "",
         "--store", "", "--exit-with-parent", str(os.getpid())], cwd=ROOT)
    try:
        wait_ready(endpoint, 120, proc)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_installed_example_is_found_by_its_entry_points(plugin_python):
    out = labd(plugin_python, "plugins").stdout
    for name, target in (("duffing.piezo_dac", "labd_duffing.instruments:PiezoDAC"),
                         ("duffing.cap_adc", "labd_duffing.instruments:CapacitiveADC"),
                         ("duffing_chain", "labd_duffing.bench:DuffingChainBench"),
                         ("duffing_chain", "labd_duffing.physics:DuffingChainPhysics")):
        assert f"{target}  [labd-duffing-chain 0.1.0]" in out and name in out
    assert "drivers.sim.instruments:SimDAC  [labd 0.1.0]" in out
    out = labd(plugin_python, "config", "--check", "examples/duffing-chain/duffing-chain.toml")
    assert ("drive duffing.piezo_dac (limits [-3.0, 6.0]), detector duffing.cap_adc (100 "
            "samples), bench DuffingChainBench, nominal model duffing_chain") in out.stdout


def test_the_installed_example_serves_and_trains_with_pat(plugin_python, served, classes_csv,
                                                        tmp_path):
    """Served by its registered names; the trainer, in the plugin's environment, finds the
    nominal model the daemon describes: for PAT's backward pass and for a residual twin."""
    with LabClient(served) as client:
        d = client.describe("duffing")
        assert d["nominal"] == {"model": "duffing_chain",
                                "target": "labd_duffing.physics:DuffingChainPhysics",
                                "distribution": "labd-duffing-chain 0.1.0"}
    run = tmp_path / "run"
    labd(plugin_python, "train", "--data", str(classes_csv), "--system", "duffing", "--mode",
         "pat", "--backward", "nominal", "--endpoint", served, "--epochs", "3", "--out",
         str(run), "--no-progress")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["mode"], summary["system"], summary["backward"]) == ("pat", "duffing",
                                                                        "nominal")
    assert summary["physical_queries"] > 0
    assert summary["test_accuracy"] > 0.75, summary  # three classes: chance is 1/3
    data, twin = tmp_path / "twin-data.npz", tmp_path / "twin.pt"  # (a small one: the family)
    labd(plugin_python, "twin", "collect", "--endpoint", served, "--system", "duffing",
         "--samples", "300", "--repeats", "1", "--out", str(data))
    fitted = labd(plugin_python, "twin", "fit", "--data", str(data), "--out", str(twin),
                  "--epochs", "2").stdout
    assert "twin (residual:" in fitted  # the physics prior: the plugin's nominal model


def test_the_example_by_dotted_paths_trains_without_installing(classes_csv, tmp_path):
    """Nothing installed: the configuration's [plugins] path finds the classes, for the daemon
    that `labd train --config` starts and for the trainer itself (the nominal model)."""
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                            "print(u.find_spec('labd_duffing'))"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert probe.stdout.strip() == "None"  # not installed in this environment
    config = EXAMPLE / "duffing-chain-paths.toml"
    run = tmp_path / "run"
    labd(sys.executable, "train", "--config", str(config), "--data", str(classes_csv),
         "--system", "duffing", "--mode", "pat", "--backward", "nominal", "--epochs", "3",
         "--out", str(run), "--no-progress")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["mode"], summary["backward"]) == ("pat", "nominal")
    assert summary["test_accuracy"] > 0.75, summary
    data = tmp_path / "twin-data.npz"
    out = labd(sys.executable, "twin", "collect", "--config", str(config), "--system",
               "duffing", "--samples", "100", "--repeats", "1", "--out", str(data)).stdout
    assert "100 points x 1 repeats of duffing" in out
