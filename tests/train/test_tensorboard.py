"""TensorBoard for training runs: event files in the run folder that TensorBoard's own reader
loads, with the metrics rows' scalars, the duty cycle and the run's figures; a resumed run
shows each epoch once; every trial of ``labd tune`` has them; without the package nothing
changes. TensorBoard is part of ``labd[dev]`` (``scripts/setup`` installs it): without it these
tests fail, they do not skip."""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from labd.daemon.process import LocalDaemon
from labd.train import loop
from labd.train import tensorboard as board
from labd.train.arch import default_arch

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:  # pragma: no cover - a broken setup, said plainly
    pytest.fail("tensorboard is not installed: scripts/setup installs it (labd[dev] includes "
                "labd[tensorboard])", pytrace=False)

#: a small PAT design on the loopback: a twin fitted in seconds, a few epochs
ARCH = replace(default_arch("vowels", "loopback"), epochs=3, twin_samples=1000, twin_epochs=4)
SCALARS = {"loss/train", "accuracy/train", "accuracy/test_hardware",
           "hardware/physical_queries", "hardware/instrument_s", "hardware/duty_cycle",
           "time/wall_s"}
FIGURES = {"figures/twin-0", "figures/learning_curves", "figures/confusion",
           "figures/physical_outputs"}


def _events(run: Path) -> dict:
    """The run folder as TensorBoard loads it: tag -> [(step, value)], images -> [(step, w, h)]."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in tags["images"]}
    return {"scalars": scalars, "images": images}


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_pat_run_writes_scalars_and_figures_tensorboard_reads(daemon: LocalDaemon,
                                                              tmp_path: Path) -> None:
    from labd.train.run import run_training

    run = tmp_path / "run"
    summary = run_training(task="vowels", system="loopback", mode="pat", out=run,
                           endpoints=[daemon.endpoint], seed=0, arch=ARCH, progress=False)
    assert list(run.glob("events.out.tfevents.*"))
    events = _events(run)
    scalars, rows = events["scalars"], _rows(run)
    assert set(scalars) >= SCALARS, sorted(scalars)
    assert len(rows) == ARCH.epochs
    for tag, key in (("loss/train", "train_loss"), ("accuracy/train", "train_acc"),
                     ("accuracy/test_hardware", "test_acc"),
                     ("hardware/physical_queries", "physical_queries"),
                     ("hardware/instrument_s", "instrument_s"), ("time/wall_s", "wall_s")):
        assert [s for s, _ in scalars[tag]] == [1, 2, 3], tag
        assert [v for _, v in scalars[tag]] == pytest.approx(
            [float(r[key]) for r in rows], rel=1e-6), tag
    # the duty cycle: the instrument's seconds over the wall's between rows
    wall = [0.0] + [float(r["wall_s"]) for r in rows]
    busy = [0.0] + [float(r["instrument_s"]) for r in rows]
    duty = [(busy[i + 1] - busy[i]) / (wall[i + 1] - wall[i]) for i in range(len(rows))]
    assert [v for _, v in scalars["hardware/duty_cycle"]] == pytest.approx(duty, rel=1e-5)
    assert all(0 < d < 1 for d in duty), duty
    # every shot of training and evaluation was measured: instrument time grew every epoch
    assert 0 < busy[1] < busy[2] < busy[3]
    assert int(rows[-1]["physical_queries"]) <= summary["queries"]["training_and_evaluation"]
    assert set(events["images"]) >= FIGURES, sorted(events["images"])
    assert events["images"]["figures/twin-0"][0][0] == 0  # fitted before the first epoch
    for tag in FIGURES - {"figures/twin-0"}:
        step, width, height = events["images"][tag][0]
        assert step == ARCH.epochs and width > 100 and height > 100, tag


def test_resumed_run_shows_each_epoch_once(daemon: LocalDaemon, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after epoch 2 of 3 and is resumed: TensorBoard's reader sees epochs
    1, 2, 3 once each, the values of metrics.csv (the purge of the crashed session's
    later steps, and the counters carried across the resume)."""
    from labd.train.run import run_training

    kw = dict(task="vowels", system="loopback", mode="pat", endpoints=[daemon.endpoint],
              seed=1, arch=ARCH, backward="nominal", progress=False, pipeline=False)
    real_close = loop.Trainer._close

    def crash_in_epoch_two(self: loop.Trainer, pending: loop._Pending) -> None:
        real_close(self, pending)
        if self.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_close", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(out=tmp_path, **kw)
    monkeypatch.setattr(loop.Trainer, "_close", real_close)
    run_training(out=tmp_path, resume=True, **kw)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    scalars, rows = _events(tmp_path)["scalars"], _rows(tmp_path)
    assert [s for s, _ in scalars["accuracy/test_hardware"]] == [1, 2, 3]
    assert [v for _, v in scalars["hardware/physical_queries"]] == [
        float(r["physical_queries"]) for r in rows]
    assert [v for _, v in scalars["hardware/instrument_s"]] == pytest.approx(
        [float(r["instrument_s"]) for r in rows], rel=1e-6)


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def _without_timings(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in ("wall_s", "instrument_s")}
            for r in _rows(run)]


def test_without_tensorboard_nothing_changes(daemon: LocalDaemon, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """TensorBoard missing: the run folder of the same run with it, less its event files; no
    error, no warning; one info line per process says how to get it."""
    from labd.train.run import run_training

    kw = dict(task="vowels", system="loopback", mode="insilico", endpoints=[daemon.endpoint],
              seed=0, arch=replace(ARCH, epochs=2), progress=False)
    run_training(out=tmp_path / "with", **kw)
    with monkeypatch.context() as patch:
        for name in ("tensorboard", "torch.utils.tensorboard"):
            patch.setitem(sys.modules, name, None)  # what an import finds when not installed
        patch.setattr(board, "_told_missing", False)
        caplog.set_level(logging.INFO)
        for name in ("without", "again"):
            run_training(out=tmp_path / name, **kw)
    events = {f for f in _files(tmp_path / "with") if f.startswith("events.out.tfevents.")}
    assert events
    assert _files(tmp_path / "without") == _files(tmp_path / "again") == \
        _files(tmp_path / "with") - events
    assert _without_timings(tmp_path / "without") == _without_timings(tmp_path / "with")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    told = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(told) == 1 and "labd[tensorboard]" in told[0], told
    epochs = [r.getMessage() for r in caplog.records if ": epoch " in r.getMessage()]
    assert len(epochs) == 4 and epochs[0].startswith("without: epoch 1: loss "), epochs


def test_every_trial_of_labd_tune_gets_event_files(daemon: LocalDaemon,
                                                   tmp_path: Path) -> None:
    """A tune trial is a run folder made by run_training: its event files carry the
    validation curves the study is pruned on."""
    pytest.importorskip("optuna")
    from labd.train.tune import TuneConfig, tune
    from tests.train.test_defaults import _csv

    (tmp_path / "base.toml").write_text(
        "[design]\nepochs = 2\ntwin_samples = 400\ntwin_epochs = 2\ntwin_hidden = [32]\n")
    tune(TuneConfig(system="loopback", out=tmp_path / "tune", data=_csv(tmp_path / "d.csv"),
                    endpoints=[daemon.endpoint], n_trials=1, search=["lr"],
                    design=tmp_path / "base.toml", progress=False))
    trial = tmp_path / "tune" / "trials" / "trial-0000"
    scalars, rows = _events(trial)["scalars"], _rows(trial)
    assert len(rows) == 2
    for tag, key in (("accuracy/validation", "val_acc"), ("loss/validation", "val_loss"),
                     ("accuracy/test_hardware", "test_acc")):
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
        assert [v for _, v in scalars[tag]] == pytest.approx(
            [float(r[key]) for r in rows], rel=1e-6), tag
