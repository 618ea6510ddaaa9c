"""Training through real daemon subprocesses: improvement, checkpoints, two daemons."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from labd.client import LabClient
from labd.daemon.process import LocalDaemon
from labd.train import loop
from labd.train.arch import default_arch

#: A small hybrid design on the loopback (its physics is linear, so the digital layers carry
#: the class boundaries; what is tested is the machinery, not the physics).
ARCH = replace(default_arch("vowels", "loopback"), epochs=6, twin_samples=1000, twin_epochs=8)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_short_pat_run_improves_accuracy(daemon: LocalDaemon, tmp_path: Path) -> None:
    from labd.train.run import run_training

    s = run_training(task="vowels", system="loopback", mode="pat", out=tmp_path,
                     endpoints=[daemon.endpoint], seed=0, arch=ARCH, progress=False)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == ARCH.epochs
    assert float(rows[-1]["test_acc"]) > float(rows[0]["test_acc"])
    assert s["test_accuracy"] > 0.6  # chance is 1/7
    assert _summary(tmp_path)["test_accuracy"] == s["test_accuracy"]
    for key in ("test_accuracy", "train_accuracy", "mode", "system", "task", "seed",
                "physical_queries", "wall_s"):
        assert key in s
    assert s["queries"]["twin_collection"] == ARCH.twin_samples * ARCH.twin_repeats
    assert s["physical_queries"] > s["queries"]["twin_collection"]
    assert s["twins"][daemon.endpoint]["holdout_nrmse"] < 0.1
    for png in ("learning_curves.png", "confusion.png", "physical_outputs.png", "twin-0.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_checkpoint_resume_continues_the_same_run(daemon: LocalDaemon, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after epoch 2 and is resumed ends exactly where an unbroken run does
    (loopback is noiseless; shuffles, optimiser and schedule come back from the checkpoint)."""
    from labd.train.run import run_training

    arch = replace(ARCH, epochs=4)
    kw = dict(task="vowels", system="loopback", mode="pat", endpoints=[daemon.endpoint],
              seed=1, arch=arch, backward="nominal", progress=False)
    whole = run_training(out=tmp_path / "whole", **kw)

    real_save = loop.Trainer.save_checkpoint
    calls = {"n": 0}

    def crash_after_two(self: loop.Trainer, state: dict | None = None) -> None:
        real_save(self, state)
        if state is not None and "unevaluated" in state:
            return  # the checkpoint written before the epoch's evaluation was measured
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "save_checkpoint", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(out=tmp_path / "broken", **kw)
    monkeypatch.setattr(loop.Trainer, "save_checkpoint", real_save)
    assert len(list(csv.DictReader((tmp_path / "broken" / "metrics.csv").open()))) == 2
    resumed = run_training(out=tmp_path / "broken", resume=True, **kw)

    def metrics(p: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wall_s", "instrument_s")}
                for r in csv.DictReader((p / "metrics.csv").open())]

    assert metrics(tmp_path / "broken") == metrics(tmp_path / "whole")
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert resumed["physical_queries"] == whole["physical_queries"]
    assert resumed["epochs"] == 4


def test_network_spread_over_two_daemons_trains(tmp_path: Path) -> None:
    from labd.train.run import run_training

    with LocalDaemon() as a, LocalDaemon() as b:
        s = run_training(task="vowels", system="loopback", mode="pat", out=tmp_path,
                         endpoints=[a.endpoint, b.endpoint], seed=2, arch=ARCH,
                         backward="nominal", progress=False)
        served = []
        for d in (a, b):
            with LabClient(d.endpoint) as c:
                served.append(c.status()["systems"]["loopback"]["served"])
    assert s["endpoints"] == [a.endpoint, b.endpoint]
    assert all(n > 0 for n in served)
    assert s["test_accuracy"] > 0.6


def test_insilico_and_twin_modes_evaluate_on_hardware(daemon: LocalDaemon,
                                                      tmp_path: Path) -> None:
    from labd.train.run import run_training

    for mode in ("insilico", "twin"):
        s = run_training(task="vowels", system="loopback", mode=mode, out=tmp_path / mode,
                         endpoints=[daemon.endpoint], seed=0, arch=replace(ARCH, epochs=3),
                         progress=False)
        rows = list(csv.DictReader((tmp_path / mode / "metrics.csv").open()))
        assert rows[-1]["test_acc_model"] != ""
        # digital training makes no physical forward during training: only evaluations
        assert s["queries"]["training_and_evaluation"] == (3 + 1) * 49 * 2 + 210 * 2


def test_pat_with_twin_refinement_checkpoints_the_refined_twin(daemon: LocalDaemon,
                                                               tmp_path: Path) -> None:
    import torch

    from labd.train.run import run_training

    # an MLP twin (the residual one is exact on the loopback: nothing left to refine)
    s = run_training(task="vowels", system="loopback", mode="pat", out=tmp_path,
                     endpoints=[daemon.endpoint], seed=0,
                     arch=replace(ARCH, epochs=2, twin_family="mlp"), refine=True,
                     progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    saved = torch.load(tmp_path / "twin-0.pt", weights_only=True)
    assert s["refine_twin"] is True and len(state["twins"]) == 1
    assert any(not torch.equal(state["twins"][0][k], saved[k]) for k in saved)


def test_bypass_baseline_has_no_physical_layer_and_makes_no_query(daemon: LocalDaemon,
                                                                  tmp_path: Path) -> None:
    """The digital-only baseline: same digital parts, physical layers -> fixed window means."""
    from labd.train.run import run_training

    s = run_training(task="vowels", system="loopback", mode="bypass", out=tmp_path,
                     endpoints=[daemon.endpoint], seed=0, arch=replace(ARCH, epochs=2),
                     progress=False)
    assert s["physical_queries"] == 0 and s["twins"] == {}
    assert "nothing physical" in s["physical_vs_digital"]
    assert 0.0 <= s["test_accuracy"] <= 1.0


def test_combine_merges_reproduce_parts(tmp_path: Path) -> None:
    from labd.train.reproduce import combine

    row = {"task": "vowels", "system": "shg", "mode": "pat", "experiment": "vowels:shg:pat",
           "test_accuracy": 0.9, "physical_queries": 10, "wall_s": 1.0,
           "arch": {"readout": "groups"}}
    for i, acc in enumerate((0.9, 0.94)):
        part = {"quick": False, "seeds": 1, "wall_s": 5.0 + i,
                "results": [{**row, "seed": i, "test_accuracy": acc}]}
        (tmp_path / f"p{i}.json").write_text(json.dumps(part))
    report = combine([tmp_path / "p0.json", tmp_path / "p1.json"], tmp_path / "all.json")
    assert len(report["results"]) == 2 and report["wall_s"] == 6.0
    assert "92.0%" in report["table"]
    assert json.loads((tmp_path / "all.json").read_text())["results"] == report["results"]


def test_reproduce_rows_name_the_design_their_runs_used() -> None:
    from labd.train.reproduce import EXPERIMENTS

    rows = {e.key: e for e in EXPERIMENTS}
    assert rows["vowels:shg:pat"].label({"depth": 2, "units": 1}) == "SHG, 2 layers"
    assert (rows["vowels:shg:pat:refine"].label({"depth": 2, "units": 3})
            == "SHG, 2 layers, 3 units, twin refined")
    assert rows["mnist:oscillator:pat"].label({"depth": 1, "units": 6}) == "oscillator, 6 units"
    assert (rows["mnist:shg:pat"].label({"depth": 1, "units": 32, "hybrid": True})
            == "SHG x32 + digital (hybrid)")


def test_pipelined_training_equals_the_plain_loop(daemon: LocalDaemon, tmp_path: Path) -> None:
    """``Trainer`` through ``Pipeline`` (the default) against ``pipeline=False`` on a real daemon
    (the loopback is noiseless): the same losses, accuracies, shots and parameters; and the
    pipelined run really was pipelined (its requests: 2 chunks per layer and minibatch, the
    evaluations in chunks)."""
    from labd.train.run import run_training

    arch = replace(ARCH, epochs=3)
    kw = dict(task="vowels", system="loopback", mode="pat", endpoints=[daemon.endpoint],
              seed=3, arch=arch, backward="nominal", progress=False)
    served = []
    runs = {}
    with LabClient(daemon.endpoint) as c:
        for name, pipeline in (("plain", False), ("piped", True)):
            before = c.status()["systems"]["loopback"]["served"]
            runs[name] = run_training(out=tmp_path / name, pipeline=pipeline, **kw)
            served.append(c.status()["systems"]["loopback"]["served"] - before)
    plain, piped = runs["plain"], runs["piped"]
    assert piped["pipelined"] and not plain["pipelined"]
    steps = -(-210 // arch.batch_size)  # 7 minibatches of 30
    # plain: one request per layer and minibatch, one per layer for each evaluation (3 epochs,
    # then the final train and test evaluations) and for the initialisation; pipelined: the
    # first epoch two per layer and minibatch, the evaluations in chunks
    assert served[0] == 3 * (2 * steps + 2) + 6
    assert served[1] > served[0] + 2 * steps

    def rows(name: str) -> list[dict]:
        return list(csv.DictReader((tmp_path / name / "metrics.csv").open()))

    assert len(rows("piped")) == len(rows("plain")) == 3
    for a, b in zip(rows("plain"), rows("piped"), strict=True):
        assert a["epoch"] == b["epoch"] and a["physical_queries"] == b["physical_queries"]
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-5)
        assert (a["train_acc"], a["test_acc"]) == (b["train_acc"], b["test_acc"])
    for key in ("test_accuracy", "train_accuracy", "physical_queries"):
        assert piped[key] == plain[key], key
    import torch

    nets = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["network"]
            for name in ("plain", "piped")]
    for key in nets[0]:
        torch.testing.assert_close(nets[1][key], nets[0][key], rtol=1e-4, atol=1e-5, msg=key)


def test_pipelined_steps_retry_instrument_faults(tmp_path: Path) -> None:
    """A retryable failure (here a garbled trace, 20% of requests) is sent again as
    ``LabClient.measure`` does, not raised: the pipelined steps complete, each shot counted
    once."""
    import torch
    from torch import nn

    from drivers.physics.nominal import nominal_model
    from labd.config import default_config_text
    from labd.train.arch import build_network
    from labd.train.datasets import load_task
    from labd.train.hardware import Hardware
    from labd.train.pipeline import Pipeline

    spectrometer = 'detector = { driver = "sim.spectrometer" }'
    assert spectrometer in default_config_text()
    config = tmp_path / "faulty.toml"
    config.write_text(default_config_text().replace(
        spectrometer, 'detector = { driver = "sim.spectrometer", faults = { garbage = 0.2 } }'))
    data = load_task("vowels", None, None)
    arch = default_arch("vowels", "shg")
    with LocalDaemon(config=config) as d, LabClient(d.endpoint) as client:
        hw = Hardware(client, "shg", d.endpoint)
        net = build_network(arch, data.n_features, data.n_classes,
                            [(hw.description, nominal_model(hw.description), hw)] * arch.depth)
        pipe = Pipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11)
        for i in range(0, 105, 21):
            step = pipe.step(torch.from_numpy(data.x_train[i:i + 21]),
                             torch.from_numpy(data.y_train[i:i + 21]))
            assert step.scores.shape == (21, data.n_classes)
        errors = client.status()["systems"]["shg"]["errors"]
    assert errors > 0, "no fault was injected"
    assert hw.queries == 5 * 21 * arch.depth * arch.units
