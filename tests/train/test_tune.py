"""``labd tune`` with a tiny budget against a real daemon: trial folders, the study in its
storage, resumption (also after a dead process), the best design file, clear errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labd.daemon.process import LocalDaemon, free_port
from tests.train.test_defaults import _csv

optuna = pytest.importorskip("optuna")

BASE = """[design]
epochs = 4
patience = 2
twin_samples = 400
twin_epochs = 2
twin_hidden = [32]
"""


def _labd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True,
                          text=True, timeout=timeout)


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="labd", storage=f"sqlite:///{out / 'study.db'}")


def test_tune_tiny_budget_resumes_and_writes_the_best_design(daemon: LocalDaemon,
                                                             tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv")
    (tmp_path / "base.toml").write_text(BASE)
    out = tmp_path / "tune"
    cmd = ["tune", "--data", str(data), "--system", "loopback", "--endpoint", daemon.endpoint,
           "--out", str(out), "--design", str(tmp_path / "base.toml"), "--search", "lr",
           "units", "--no-progress"]
    first = _labd(*cmd, "--n-trials", "2")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "2 trials finished" in first.stdout
    trials = sorted(p.name for p in (out / "trials").iterdir())
    assert trials == ["trial-0000", "trial-0001"]
    for name in trials:  # each trial a normal run folder
        summary = json.loads((out / "trials" / name / "summary.json").read_text())
        assert summary["val_accuracy"] is not None and summary["n_val"] > 0
        assert (out / "trials" / name / "design.toml").exists()
        assert "bypass" not in summary["yardstick"]  # trials skip it (tune.json has the LR)
    assert (out / "twins" / "twin-0.pt").exists()  # fitted once, shared by the trials
    study = _study(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.user_attrs["labd"]["system"] == "loopback"
    # the first trial is the base design itself, the second one drawn
    from labd.train import designfile
    from labd.train.arch import Arch

    base = designfile.load(out / "base-design.toml", Arch())
    assert study.trials[0].params == {"lr": pytest.approx(base.lr), "units": base.units}
    assert study.trials[0].user_attrs["base"] and "base" not in study.trials[1].user_attrs

    # a trial left running by a process that died: failed, and its design tried again
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(3e-3, 0.1, log=True),
                        "units": optuna.distributions.IntDistribution(1, 8)})
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", int(dead.stdout))
    params = dict(orphan.params)

    again = _labd(*cmd, "--n-trials", "3")  # the same command, a bigger budget: carries on
    assert again.returncode == 0, again.stderr + again.stdout
    study = _study(out)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[3].params == params
    report = json.loads((out / "tune.json").read_text())
    assert report["finished_trials"] == 3 and report["retried_trials"] == 1
    assert report["logistic_regression"]["test_accuracy"] > 0.5
    best = report["best"]
    values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    assert best["val_accuracy"] == max(values)

    # the best design file is what `labd train --design` reads
    from labd.train.run import run_training
    from labd.train.tune import TuneConfig, tune

    design = out / "best-design.toml"
    text = design.read_text()
    assert f"trial {best['trial']}" in text and "[design]" in text
    final = run_training(data=data, system="loopback", mode="pat", endpoints=[daemon.endpoint],
                         design_file=design, out=tmp_path / "final", progress=False,
                         bypass_yardstick=False, backward="nominal")
    assert final["arch"]["units"] == best["params"]["units"]
    assert final["arch"]["lr"] == pytest.approx(best["params"]["lr"])

    # nothing left to do: the budget is spent
    report = tune(TuneConfig(system="loopback", out=out, data=data, n_trials=3,
                             endpoints=[daemon.endpoint], search=["lr", "units"],
                             design=tmp_path / "base.toml", progress=False))
    assert report["finished_trials"] == 3 and len(_study(out).trials) == 4


def test_tune_errors_are_one_line(daemon: LocalDaemon, tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv")
    common = ["tune", "--data", str(data), "--system", "loopback", "--n-trials", "1",
              "--no-progress"]
    cases = [
        (["--endpoint", daemon.endpoint, "--out", str(tmp_path / "a"), "--storage",
          "nosuchdb://user@nowhere/x"], "cannot open the study storage"),
        (["--endpoint", daemon.endpoint, "--out", str(tmp_path / "b"), "--storage",
          f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 's.db'}"],
         "cannot open the study storage"),
        (["--endpoint", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path / "c")],
         "no daemon answers"),
    ]
    for extra, message in cases:
        done = _labd(*common, *extra, timeout=120)
        assert done.returncode == 2, done.stderr
        said = (done.stdout + done.stderr).strip()  # the one line (labd's trainer: stdout)
        assert message in said and "Traceback" not in said and len(said.splitlines()) == 1
    # a study made for other data is refused, not mixed (other rows, not another path)
    _csv(tmp_path / "other.csv", seed=1)
    shared = ["--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "d"),
              "--endpoint", f"tcp://127.0.0.1:{free_port()}"]
    _labd(*common, *shared)
    other = _labd("tune", "--data", str(tmp_path / "other.csv"), "--system", "loopback",
                  "--n-trials", "1", *shared)
    assert other.returncode == 2 and "was made for" in other.stdout + other.stderr


def test_a_study_shared_by_two_machines(daemon: LocalDaemon, tmp_path: Path) -> None:
    """Machine B joins machine A's study through the storage URL with its own copy of the
    data (another path, another name) and writes the best design, which A's trial found and
    whose run folder exists only on A."""
    from labd.train import designfile
    from labd.train.arch import Arch
    from labd.train.tune import TuneConfig, tune

    (tmp_path / "base.toml").write_text(BASE)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = dict(system="loopback", n_trials=1, endpoints=[daemon.endpoint], storage=storage,
                  study="shared", search=["lr"], design=tmp_path / "base.toml", progress=False)
    (tmp_path / "a").mkdir()
    data_a = _csv(tmp_path / "a" / "d.csv")
    tune(TuneConfig(out=tmp_path / "a" / "tune", data=data_a, **common))
    (tmp_path / "b").mkdir()
    data_b = tmp_path / "b" / "mine.csv"
    data_b.write_bytes(data_a.read_bytes())
    for folder in (tmp_path / "a" / "tune" / "trials").iterdir():  # on machine A only
        for path in folder.rglob("*"):
            if path.is_file():
                path.unlink()
    report = tune(TuneConfig(out=tmp_path / "b" / "tune", data=data_b, **common))
    assert report["finished_trials"] == 1 and report["best"]["trial"] == 0
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 1  # the budget was spent on A: B ran nothing
    best = designfile.load(tmp_path / "b" / "tune" / "best-design.toml", Arch())
    assert best.lr == pytest.approx(study.trials[0].params["lr"])
    assert best.epochs == 4 and best.twin_hidden == (32,)  # the rest of A's base design


def test_base_params_keep_only_what_the_space_can_draw() -> None:
    from labd.train.arch import Arch
    from labd.train.tune import SPACE, base_params

    base = Arch(units=16, batch_size=21, lr=0.05, hybrid=True, scaling="standard")
    assert base_params(base, list(SPACE)) == {
        "depth": 1, "hybrid": True, "readout": "groups", "lr": 0.05, "lr_digital": 0.01,
        "scaling": "standard"}  # units 16 > 8 and batch 21 are drawn instead
    assert base_params(base, ["lr"]) == {"lr": 0.05}
