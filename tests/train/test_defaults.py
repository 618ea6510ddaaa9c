"""Runs on data no design was made for, through real daemons: validation split, best
checkpoint, early stopping, scaling, the design file, the yardstick, the CLI's errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labd.daemon.process import LocalDaemon

#: short runs: the design chosen for the data, with these overrides
QUICK = {"epochs": 14, "patience": 3, "twin_samples": 500}


def _csv(path: Path, seed: int = 0, n: int = 240) -> Path:
    """Three overlapping Gaussian classes in 4 features on unrelated scales."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 4)) + np.eye(3, 4)[y] * 1.5
    x = x * [1, 100, 0.01, 5] + [0, 500, -3, 0]
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["a", "b", "c", "d", "label"])
        for row, label in zip(x, y, strict=True):
            out.writerow([f"{v:.6g}" for v in row] + [["cat", "dog", "owl"][label]])
    return path


def _rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "metrics.csv").open()))


def test_csv_defaults_validate_keep_the_best_stop_early_and_repeat(daemon: LocalDaemon,
                                                                   tmp_path: Path) -> None:
    from labd.train.run import run_training

    data = _csv(tmp_path / "animals.csv")
    kw = dict(data=data, system="loopback", mode="pat", endpoints=[daemon.endpoint],
              backward="nominal", progress=False)
    s = run_training(out=tmp_path / "a", overrides=QUICK, **kw)
    assert s["classes"] == ["cat", "dog", "owl"]
    assert s["n_val"] > 0 and s["split"]["validation_fraction"] == 0.15
    assert s["n_train"] + s["n_val"] + s["n_test"] == 240
    assert s["scaling"]["kind"] == "standard" and len(s["scaling"]["shift"]) == 4
    assert s["arch"]["hybrid"] and s["arch"]["scaling"] == "standard"
    rows = _rows(tmp_path / "a")
    assert len(rows) == s["epochs"] and all(r["val_acc"] != "" for r in rows)
    best = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"])))
    assert s["best_epoch"] == int(best["epoch"]) and s["val_accuracy"] == float(best["val_acc"])
    if s["stopped_early"]:
        assert s["epochs"] - s["best_epoch"] == QUICK["patience"]
    else:
        assert s["epochs"] == QUICK["epochs"]
    saved = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert saved["epoch"] == s["best_epoch"]
    assert torch.equal(saved["network"]["blocks.0.shift"],
                       torch.tensor(s["scaling"]["shift"], dtype=torch.float32))
    assert s["test_accuracy"] > 0.6  # chance is 1/3
    yard = s["yardstick"]
    assert yard["logistic_regression"]["test_accuracy"] > 0.6
    assert yard["bypass"]["test_accuracy"] > 0.6
    assert (tmp_path / "a" / "bypass" / "metrics.csv").exists()
    # the design file written repeats the run exactly (the loopback is noiseless)
    again = run_training(out=tmp_path / "b", design_file=tmp_path / "a" / "design.toml", **kw)
    assert again["arch"] == s["arch"]
    timings = ("wall_s", "instrument_s")
    strip = [{k: v for k, v in r.items() if k not in timings} for r in _rows(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k not in timings}
                     for r in _rows(tmp_path / "b")]
    assert again["test_accuracy"] == s["test_accuracy"]


def test_early_stopping_is_the_same_pipelined_plain_and_resumed(
        daemon: LocalDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision to stop waits for the evaluation that decides it, so the pipelined loop
    (evaluations measured during the next epoch), the plain loop and a run resumed after a
    crash stop after the same epoch with the same rows."""
    from labd.train import loop
    from labd.train.run import run_training

    data = _csv(tmp_path / "d.csv", seed=3)
    kw = dict(data=data, system="loopback", mode="pat", endpoints=[daemon.endpoint],
              backward="nominal", progress=False, bypass_yardstick=False,
              overrides={**QUICK, "epochs": 40, "patience": 2, "lr": 0.2, "lr_digital": 0.1})
    plain = run_training(out=tmp_path / "plain", pipeline=False, **kw)
    piped = run_training(out=tmp_path / "piped", **kw)
    assert piped["pipelined"] and plain["stopped_early"]
    real_save = loop.Trainer.save_checkpoint
    calls = {"n": 0}

    def crash_after_three(self: loop.Trainer, *args: object) -> None:
        real_save(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "save_checkpoint", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_training(out=tmp_path / "resumed", **kw)
    monkeypatch.setattr(loop.Trainer, "save_checkpoint", real_save)
    resumed = run_training(out=tmp_path / "resumed", resume=True, **kw)

    def rows(name: str) -> list[tuple[str, ...]]:
        return [(r["epoch"], r["val_acc"], r["test_acc"], r["physical_queries"])
                for r in _rows(tmp_path / name)]

    assert rows("plain") == rows("piped") == rows("resumed")
    for key in ("epochs", "best_epoch", "test_accuracy", "physical_queries"):
        assert plain[key] == piped[key] == resumed[key], key


def test_bypass_of_a_system_with_more_outputs_than_inputs(tmp_path: Path) -> None:
    """Issue 14: ``--mode bypass`` crashed with 'a bypass cannot widen 12 inputs to 24
    outputs'. An SHG read in 24 pixel groups instead of 12."""
    from labd.config import default_config_text
    from labd.train.run import run_training

    text = default_config_text()
    shg = text.index("[systems.shg]")
    config = tmp_path / "wide.toml"
    config.write_text(text[:shg] + text[shg:].replace("output_dim = 12", "output_dim = 24", 1))
    with LocalDaemon(config=config) as d:
        s = run_training(data=_csv(tmp_path / "d.csv"), system="shg", mode="bypass",
                         out=tmp_path / "run", endpoints=[d.endpoint], progress=False,
                         overrides={"epochs": 3, "patience": 0})
    assert s["physical_queries"] == 0 and s["test_accuracy"] > 0.4


def _labd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True,
                          text=True, timeout=240)


def test_train_cli_prints_the_yardstick_and_bad_designs_in_one_line(daemon: LocalDaemon,
                                                                    tmp_path: Path) -> None:
    data = _csv(tmp_path / "d.csv")
    base = ["train", "--data", str(data), "--system", "loopback", "--mode", "pat",
            "--endpoint", daemon.endpoint, "--backward", "nominal", "--no-progress"]
    done = _labd(*base, "--out", str(tmp_path / "run"), "--epochs", "4", "--units", "2",
                 "--no-hybrid", "--lr-digital", "0.02", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "logistic regression" in done.stdout and "bypass (no physics)" in done.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert (summary["arch"]["units"], summary["arch"]["hybrid"]) == (2, False)
    assert summary["arch"]["lr_digital"] == 0.02 and summary["epochs"] <= 4
    (tmp_path / "bad.toml").write_text("[design]\ndepth = 'two'\n")
    for extra, message in ((["--design", str(tmp_path / "bad.toml")], "depth"),
                           (["--val-fraction", "0", "--patience", "3"], "validation split")):
        bad = _labd(*base, "--out", str(tmp_path / "bad"), *extra)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr + bad.stdout
        said = (bad.stdout + bad.stderr).strip()  # the one line (labd's trainer: stdout)
        assert message in said and len(said.splitlines()) == 1
    if not torch.cuda.is_available():
        no_cuda = _labd(*base, "--out", str(tmp_path / "bad"), "--device", "cuda")
        assert no_cuda.returncode == 2 and "no CUDA device" in no_cuda.stdout + no_cuda.stderr
