"""One training run, end to end: daemon, data, digital model, network, training, run folder.

``run_training(...)`` (what ``labd train`` calls):

1. starts a ``LocalDaemon`` on ``config`` (default: the embedded configuration) when no
   endpoint is given (stopped at the end), else connects to the given endpoint(s): layer
   ``i`` lives on ``endpoints[i % len(endpoints)]``;
2. loads the task's data (``vowels``, ``mnist`` or a CSV);
3. gets each device's digital model: the nominal model (``insilico``, or ``pat`` with
   ``backward="nominal"``; also, unused, ``bypass``: the digital-only baseline whose physical
   layers are replaced by fixed window means, ``labd.train.arch.Bypass``), or a twin
   (``twin``, ``pat``): loaded from ``twin_path``, or collected and fitted into the run
   folder (``twin.pt``/``twin.json``/``twin_data.npz``, re-used on ``--resume``); one twin
   per (endpoint, system), since two daemons are two devices; the design's ``twin_family``
   and ``refine`` (``labd.train.arch.Arch``) apply;
4. builds the task's default network (``labd.train.arch``), initialises its rescalings on one
   batch, trains with ``Trainer`` (checkpoint every epoch);
5. writes ``metrics.csv``, ``summary.json``, ``learning_curves.png``, ``confusion.png``,
   ``physical_outputs.png`` into the run folder and returns the summary.

``physical_queries`` in the summary counts every shot: twin data collection, training
forwards (``pat``) and every evaluation on the hardware; ``queries`` breaks it down.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labd.train import plots
from labd.train.arch import Arch, build_network, default_arch
from labd.train.datasets import Dataset, load_task
from labd.train.hardware import Connections, Hardware
from labd.train.loop import LoopConfig, Trainer
from labd.train.twins import (
    Twin,
    TwinData,
    TwinRefiner,
    collect,
    fit_twin,
    load_twin,
    predict,
    save_twin,
)

MODES = ("pat", "insilico", "twin", "bypass")
DIGITAL_NOTE = ("physical: the PhysicalLayer forwards (measured on the daemon's system); "
                "digital: element-wise input rescaling of each physical layer, the readout "
                "({readout}){hybrid}")

BYPASS_NOTE = ("nothing physical: the same digital parts with each physical layer replaced by a "
               "fixed window mean of the same input and output sizes (digital-only baseline)")


@contextlib.contextmanager
def daemon_endpoints(endpoints: list[str] | None,
                     config: str | Path | None = None) -> Iterator[list[str]]:
    """The given endpoints, or one local daemon's for the duration of the block (on
    ``config``, default the embedded configuration; the file is loaded here first, which
    also puts its plugin folders on this process's path for its nominal models)."""
    if endpoints:
        yield list(endpoints)
        return
    from labd.config import load_config
    from labd.daemon.process import LocalDaemon

    if config is not None:
        load_config(config)
    with LocalDaemon(config=config) as daemon:
        yield [daemon.endpoint]


def twin_family(description: dict[str, Any]) -> str:
    """``residual`` when the system has a nominal model, else ``mlp``."""
    return "residual" if description.get("nominal") else "mlp"


def get_twin(hardware: Hardware, arch: Arch, folder: Path, tag: str, seed: int,
             progress: bool, family: str | None = None) -> tuple[Twin, TwinData, dict[str, Any]]:
    """The device's twin in ``folder`` (``twin-TAG.pt``), collected and fitted if absent."""
    path = folder / f"twin-{tag}.pt"
    data_path = folder / f"twin-{tag}-data.npz"
    if path.exists() and data_path.exists():
        meta = json.loads(path.with_suffix(".json").read_text())
        return load_twin(path), TwinData.load(data_path), meta["report"]
    data = collect(hardware, arch.twin_samples, arch.twin_repeats, seed=seed, progress=progress)
    data.save(data_path)
    twin, report = fit_twin(data, hardware.description,
                            family or twin_family(hardware.description),
                            hidden=arch.twin_hidden, epochs=arch.twin_epochs, seed=seed,
                            progress=progress)
    report["collect_queries"] = len(data.y) * data.repeats
    save_twin(path, twin, report)
    n = min(2000, len(data.y))
    plots.twin_scatter(predict(twin, data.x[-n:], data.theta[-n:]), data.y[-n:],
                       folder / f"twin-{tag}.png",
                       f"{hardware.system} twin ({twin.family}), "
                       f"held-out NRMSE {report['holdout_nrmse']:.3f}")
    return twin, data, report


def run_training(*, task: str | None = None, data: str | Path | None = None, system: str,
                 mode: str, out: str | Path, endpoints: list[str] | None = None,
                 config: str | Path | None = None, seed: int = 0,
                 epochs: int | None = None, resume: bool = False,
                 mnist_dir: str | Path | None = None, subset: tuple[int, int] | None = None,
                 twin_path: str | Path | None = None, backward: str = "twin",
                 refine: bool | None = None, arch: Arch | None = None,
                 progress: bool = True, pipeline: bool = True) -> dict[str, Any]:
    """Train one network and write its run folder; returns the summary (see module doc).

    ``refine`` (twin refinement during PAT) and ``epochs`` default to the design's;
    ``pipeline=False``: PAT with the plain synchronous loop (``labd.train.loop``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    started = time.perf_counter()
    torch.set_num_threads(1)  # the daemon's physics needs the other core(s)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset: Dataset = load_task(task, data, mnist_dir)
    if subset is not None:
        dataset = dataset.subset(*subset, seed=seed)
    task_name = task or dataset.name
    arch = arch or default_arch(task_name, system, epochs=epochs)
    refine = arch.refine if refine is None else refine
    with daemon_endpoints(endpoints, config) as eps, Connections() as conns:
        hardware: dict[tuple[str, str], Hardware] = {}
        models: dict[tuple[str, str], nn.Module] = {}
        twin_reports: dict[str, Any] = {}
        refiners: list[TwinRefiner] = []
        layers = []
        for i in range(arch.depth):
            key = (eps[i % len(eps)], system)
            if key not in hardware:
                hw = conns.hardware(*key)
                hardware[key] = hw
                models[key], refiner, report = _model_for(
                    hw, mode, arch, out, f"{len(hardware) - 1}", seed, twin_path, backward,
                    refine, progress)
                if refiner is not None:
                    refiners.append(refiner)
                if report is not None:
                    twin_reports[hw.endpoint] = report
            layers.append((hardware[key].description, models[key], hardware[key]))
        collect_queries = sum(int(r.get("collect_queries", 0)) for r in twin_reports.values())
        network = build_network(arch, dataset.n_features, dataset.n_classes, layers, seed,
                                bypass=mode == "bypass")
        for layer in network.physical_layers():
            for refiner in refiners:
                if layer.model is refiner.twin:
                    layer.recorder = refiner.record
        cfg = LoopConfig(mode=mode, epochs=arch.epochs, batch_size=arch.batch_size,
                         lr=arch.lr, lr_digital=arch.lr_digital, seed=seed, progress=progress,
                         pipeline=pipeline)
        trainer = Trainer(network, dataset, cfg, out, list(hardware.values()), refiners)
        if not (resume and trainer.checkpoint_path.exists()):
            _initialise(network, dataset, mode, seed)
        result = trainer.run(resume=resume)
    summary = {
        "task": task_name, "system": system, "mode": mode, "seed": seed,
        "test_accuracy": result["test_accuracy"], "train_accuracy": result["train_accuracy"],
        "train_accuracy_samples": result["train_accuracy_samples"],
        "test_accuracy_model": result["test_accuracy_model"],
        "physical_queries": int(collect_queries + result["training_queries"]),
        "queries": {"twin_collection": int(collect_queries),
                    "training_and_evaluation": int(result["training_queries"])},
        "wall_s": round(time.perf_counter() - started, 2),
        "training_wall_s": round(result["training_wall_s"], 2),
        "epochs": result["epochs"], "endpoints": eps, "backward": backward,
        "refine_twin": mode == "pat" and refine, "pipelined": trainer.pipelined(),
        "arch": arch.to_dict(),
        "physical_vs_digital": BYPASS_NOTE if mode == "bypass" else DIGITAL_NOTE.format(
            readout="class bins averaged, element-wise affine per class" if arch.readout == "groups"
            else "digital linear layer",
            hybrid="; trainable digital linear layers before each physical layer (hybrid)"
            if arch.hybrid else ""),
        "twins": twin_reports,
        "n_train": len(dataset.y_train), "n_test": len(dataset.y_test),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    title = f"{task_name} on {system}, {mode}, seed {seed}"
    plots.learning_curves(trainer.rows, out / "learning_curves.png", title)
    plots.confusion(result["confusion"], out / "confusion.png",
                    f"{title}: test acc {result['test_accuracy']:.3f}")
    if result["examples"]:
        plots.physical_outputs(result["examples"], result["example_labels"],
                               out / "physical_outputs.png")
    return summary


def _model_for(hw: Hardware, mode: str, arch: Arch, out: Path, tag: str, seed: int,
               twin_path: str | Path | None, backward: str, refine: bool, progress: bool
               ) -> tuple[nn.Module, TwinRefiner | None, dict[str, Any] | None]:
    """The digital model of one device for this mode, its refiner, and its twin report."""
    from drivers.physics.nominal import nominal_model

    if mode in ("insilico", "bypass") or (mode == "pat" and backward == "nominal"):
        return nominal_model(hw.description), None, None
    if twin_path is not None:
        twin = load_twin(twin_path)
        report = json.loads(Path(twin_path).with_suffix(".json").read_text())["report"]
        return twin, None, report
    twin, data, report = get_twin(hw, arch, out, tag, seed, progress, arch.twin_family)
    refiner = TwinRefiner(twin, data, seed=seed) if (refine and mode == "pat") else None
    return twin, refiner, report


def _initialise(network: nn.Module, dataset: Dataset, mode: str, seed: int) -> None:
    """Standardise rescalings and readout on one batch along the training path."""
    n = min(512, len(dataset.y_train))
    idx = np.random.default_rng(seed).permutation(len(dataset.y_train))[:n]
    network.set_path("pat" if mode == "pat" else "model")  # type: ignore[operator]
    with torch.no_grad():
        network.initialise(torch.from_numpy(dataset.x_train[idx]))  # type: ignore[operator]
