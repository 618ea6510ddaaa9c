"""Expected failures of the trainer's commands: one line naming what failed and what to do, no
traceback, and a run folder that ``--resume`` continues."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from labd.client import InstrumentFault
from labd.daemon.process import LocalDaemon


def _labd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_unknown_system_and_missing_files_are_one_line(daemon: LocalDaemon,
                                                       tmp_path: Path) -> None:
    runs = [
        (_labd("train", "--task", "vowels", "--system", "nosuch", "--mode", "pat",
               "--endpoint", daemon.endpoint, "--out", str(tmp_path / "run"), "--no-progress"),
         "nosuch"),
        (_labd("twin", "fit", "--data", str(tmp_path / "missing.npz"), "--out",
               str(tmp_path / "twin.pt")), "missing.npz"),
        (_labd("twin", "collect", "--system", "nosuch", "--endpoint", daemon.endpoint,
               "--out", str(tmp_path / "data.npz")), "nosuch"),
    ]
    for done, named in runs:
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], done.stdout
    assert not (tmp_path / "data.npz").exists()


def test_reproduce_refuses_an_only_filter_that_matches_no_experiment(tmp_path: Path) -> None:
    """A mistyped ``--only`` names the experiments instead of printing an empty table."""
    for extra in ([], ["--combine", str(tmp_path / "part.json")]):
        done = _labd("reproduce", "--only", "mnist:nosuch", "--out", str(tmp_path / "r"),
                     "--no-progress", *extra)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1 and "mnist:nosuch" in lines[0], done.stdout
        assert "mnist:plate:pat" in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_failure_mid_training_leaves_the_run_resumable(
        daemon: LocalDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An instrument fault that outlasts the retries in epoch 2: one line that says to
    resume; ``--resume`` then finishes the run from epoch 1's checkpoint."""
    from labd.cli import main
    from labd.train.pipeline import Pipeline

    real_step = Pipeline.step
    calls = {"n": 0}

    def failing_step(self: Pipeline, *args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 10:  # 7 minibatches an epoch: in epoch 2
            raise InstrumentFault("loopback: detector timed out", retryable=True)
        return real_step(self, *args)

    monkeypatch.setattr(Pipeline, "step", failing_step)
    out = tmp_path / "run"
    argv = ["train", "--task", "vowels", "--system", "loopback", "--mode", "pat",
            "--backward", "nominal", "--epochs", "3", "--endpoint", daemon.endpoint,
            "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    said = capsys.readouterr()
    assert "Traceback" not in said.out + said.err and len(said.out.strip().splitlines()) == 1
    assert "detector timed out" in said.out and "--resume" in said.out
    # epoch 1's test evaluation was still being measured in epoch 2's gaps: its checkpoint
    # is there, its metrics row comes when resuming measures that evaluation
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main([*argv, "--resume"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert (out / "summary.json").exists()
