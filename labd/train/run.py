"""One training run, end to end: daemon, data, digital model, network, training, run folder.

``run_training(...)`` (what ``labd train`` calls):

1. starts a ``LocalDaemon`` on ``config`` (default: the embedded configuration) when no
   endpoint is given (stopped at the end), else connects to the given endpoint(s): layer
   ``i`` lives on ``endpoints[i % len(endpoints)]``;
2. loads the task's data (``vowels``, ``mnist`` or a CSV) and resolves the design
   (``resolve_design``): the task's hand-made design, or the one ``choose_design`` makes for
   the data and the system; then a design file's values, then single overrides; on
   ``--resume`` the run folder's own ``design.toml``. The design is written to
   ``design.toml`` (``labd.train.designfile``); its validation split is carved from the
   training rows and its feature scaling fitted on the rest;
3. gets each device's digital model: the nominal model (``insilico``, or ``pat`` with
   ``backward="nominal"``; a system without one is refused in one line), none (``bypass``:
   the digital-only baseline whose physical layers are replaced by fixed window means,
   ``labd.train.arch.Bypass``), or a twin (``twin``, ``pat``): loaded from ``twin_path``,
   or collected and fitted into the run folder as ``twin-N.pt`` (weights), ``twin-N.json``
   (family, sizes, report), ``twin-N-data.npz`` (the measurements) and ``twin-N.png``
   (predicted against measured), re-used on ``--resume``; ``N`` counts the devices from 0,
   one twin per (endpoint, system), since two daemons are two devices; the design's
   ``twin_family`` (default: residual on the nominal model, from the measurements alone
   where the system has none, said in a warning) and ``refine`` (``labd.train.arch.Arch``)
   apply;
4. builds the network (``labd.train.arch.build_network``) on the device (``--device``),
   initialises its rescalings on one batch, trains with ``Trainer`` (checkpoint every epoch,
   the best validation network kept, early stopping);
5. the digital yardstick (``labd.train.yardstick``): a logistic regression, and the same design
   with its physical layers bypassed trained in ``bypass/`` (a run folder of its own), on the
   same split;
6. writes ``metrics.csv``, ``summary.json``, ``learning_curves.png``, ``confusion.png``,
   ``physical_outputs.png`` into the run folder and returns the summary (``forward`` and
   ``backward``: what computed training's passes, ``training_passes``).

Every epoch is reported as it ends (``labd.train.report``): a log line, and TensorBoard event
files in the run folder (scalars and every figure above) when TensorBoard is installed.

``physical_queries`` in the summary counts every shot: twin data collection, training
forwards (``pat``) and every evaluation on the hardware; ``queries`` breaks it down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labd.train import designfile, plots, yardstick
from labd.train.arch import DEFAULTS, Arch, build_network, choose_design
from labd.train.datasets import Dataset, fit_scaling, load_task
from labd.train.devices import resolve_device
from labd.train.hardware import Connections, Hardware
from labd.train.loop import EpochCallback, LoopConfig, Trainer
from labd.train.report import reporting
from labd.train.twins import (
    NO_NOMINAL_TWIN,
    Twin,
    TwinData,
    TwinRefiner,
    collect,
    default_family,
    fit_twin,
    load_twin,
    predict,
    save_twin,
)

log = logging.getLogger(__name__)

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


def get_twin(hardware: Hardware, arch: Arch, folder: Path, tag: str, seed: int,
             progress: bool, family: str | None = None, device: str = "cpu"
             ) -> tuple[Twin, TwinData, dict[str, Any]]:
    """The device's twin in ``folder`` (``twin-TAG.pt``), collected and fitted if absent."""
    path = folder / f"twin-{tag}.pt"
    data_path = folder / f"twin-{tag}-data.npz"
    if path.exists() and data_path.exists():
        meta = json.loads(path.with_suffix(".json").read_text())
        return load_twin(path, device), TwinData.load(data_path), meta["report"]
    family = family or default_family(hardware.description)
    log.info("no twin given (--twin): measuring and fitting one for %s into %s",
             hardware.system, path)
    if family == "mlp" and arch.twin_family is None:
        log.warning(NO_NOMINAL_TWIN, hardware.system)
    data = collect(hardware, arch.twin_samples, arch.twin_repeats, seed=seed, progress=progress)
    data.save(data_path)
    twin, report = fit_twin(data, hardware.description, family, hidden=arch.twin_hidden,
                            epochs=arch.twin_epochs, seed=seed, progress=progress,
                            device=device)
    report["collect_queries"] = len(data.y) * data.repeats
    save_twin(path, twin, report)
    n = min(2000, len(data.y))
    plots.twin_scatter(predict(twin, data.x[-n:], data.theta[-n:]), data.y[-n:],
                       folder / f"twin-{tag}.png",
                       f"{hardware.system} twin ({twin.family}), "
                       f"held-out NRMSE {report['holdout_nrmse']:.3f}")
    return twin, data, report


def resolve_design(task: str | None, system: str, dataset: Dataset,
                   description: dict[str, Any], *, arch: Arch | None = None,
                   design_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None,
                   run_dir: Path | None = None) -> Arch:
    """The run's design (module docstring, step 2). ``run_dir``: resuming, its
    ``design.toml`` wins over everything else."""
    if run_dir is not None and (run_dir / "design.toml").exists():
        return designfile.load(run_dir / "design.toml", arch or Arch())
    if arch is None:
        arch = DEFAULTS.get((task or "", system)) or choose_design(
            dataset.n_features, dataset.n_classes, len(dataset.y_train), description)
    if design_file is not None:
        arch = designfile.load(design_file, arch)
    return designfile.apply(arch, overrides or {}, "command line")


@reporting
def run_training(*, task: str | None = None, data: str | Path | None = None, system: str,
                 mode: str, out: str | Path, endpoints: list[str] | None = None,
                 config: str | Path | None = None, seed: int = 0,
                 epochs: int | None = None, resume: bool = False,
                 mnist_dir: str | Path | None = None, subset: tuple[int, int] | None = None,
                 twin_path: str | Path | None = None, backward: str = "twin",
                 refine: bool | None = None, arch: Arch | None = None,
                 design_file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, progress: bool = True,
                 pipeline: bool = True, device: str = "auto",
                 on_epoch: EpochCallback | None = None,
                 bypass_yardstick: bool = True) -> dict[str, Any]:
    """Train one network and write its run folder; returns the summary (see module doc).

    The design: ``arch`` (else the default for the task or data), then ``design_file``, then
    ``overrides`` (design keys; ``epochs`` and ``refine`` are two of them);
    ``pipeline=False``: PAT with the plain synchronous loop (``labd.train.loop``);
    ``on_epoch``: called with each epoch's metrics row; ``bypass_yardstick=False``: no bypass
    trained beside (the logistic regression is always fitted).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    started = time.perf_counter()
    torch.set_num_threads(1)  # the daemon's physics needs the other core(s)
    device = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset: Dataset = load_task(task, data, mnist_dir)
    if subset is not None:
        dataset = dataset.subset(*subset, seed=seed)
    task_name = task or dataset.name
    overrides = {**(overrides or {}), **{k: v for k, v in (("epochs", epochs),
                                                            ("refine", refine)) if v is not None}}
    with daemon_endpoints(endpoints, config) as eps, Connections() as conns:
        arch = resolve_design(task, system, dataset, conns.hardware(eps[0], system).description,
                              arch=arch, design_file=design_file, overrides=overrides,
                              run_dir=out if resume else None)
        designfile.save(out / "design.toml", arch, DESIGN_COMMENT.format(
            task=task_name, system=system, mode=mode, seed=seed))
        dataset = dataset.carve_validation(arch.val_fraction, seed)
        scaling = fit_scaling(dataset.x_train, arch.scaling)
        built = _build(arch, dataset, scaling, system, mode, eps, conns, out, seed, twin_path,
                       backward, progress, device)
        cfg = LoopConfig(mode=mode, epochs=arch.epochs, batch_size=arch.batch_size,
                         lr=arch.lr, lr_digital=arch.lr_digital, seed=seed, progress=progress,
                         pipeline=pipeline, patience=arch.patience, device=device)
        trainer, result = _train(built["network"], dataset, cfg, out, resume, built["hardware"],
                                 built["refiners"], [on_epoch] if on_epoch else None)
    yard = _yardstick(arch, dataset, scaling, built["descriptions"], cfg, out / "bypass",
                      resume, bypass=bypass_yardstick and mode != "bypass")
    summary = _summary(task_name, system, mode, seed, arch, dataset, scaling, result, built,
                       trainer, yard, backward, eps, device, started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    _plots(trainer, result, out, f"{task_name} on {system}, {mode}, seed {seed}")
    return summary


DESIGN_COMMENT = ("The design of this run ({task} on {system}, {mode}, seed {seed}).\n"
                  "Repeat it with: labd train ... --design design.toml")


def _build(arch: Arch, dataset: Dataset, scaling: dict[str, Any], system: str, mode: str,
           eps: list[str], conns: Connections, out: Path, seed: int,
           twin_path: str | Path | None, backward: str, progress: bool, device: str
           ) -> dict[str, Any]:
    """The network on ``device`` and what it runs on: each layer's hardware and digital model
    (layer ``i`` on ``eps[i % n]``), refiners, twin reports."""
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
                arch.refine, progress, device)
            if refiner is not None:
                refiners.append(refiner)
            if report is not None:
                twin_reports[hw.endpoint] = report
        layers.append((hardware[key].description, models[key], hardware[key]))
    network = build_network(arch, dataset.n_features, dataset.n_classes, layers, seed,
                            bypass=mode == "bypass", scaling=scaling).to(device)
    for layer in network.physical_layers():
        for refiner in refiners:
            if layer.model is refiner.twin:
                layer.recorder = refiner.record
    collect_queries = sum(int(r.get("collect_queries", 0)) for r in twin_reports.values())
    return {"network": network, "hardware": list(hardware.values()), "refiners": refiners,
            "twin_reports": twin_reports, "collect_queries": collect_queries,
            "descriptions": [d for d, _, _ in layers]}


def _train(network: nn.Module, dataset: Dataset, cfg: LoopConfig, folder: Path, resume: bool,
           hardware: list[Hardware], refiners: list[TwinRefiner] | None = None,
           on_epoch: list[EpochCallback] | None = None) -> tuple[Trainer, dict[str, Any]]:
    """Train ``network`` into the run folder ``folder``: from its checkpoint when resuming
    and there is one, else from rescalings initialised on one batch; the trainer and its
    result (``Trainer.run``)."""
    trainer = Trainer(network, dataset, cfg, folder, hardware, refiners, on_epoch)
    if not (resume and trainer.checkpoint_path.exists()):
        _initialise(network, dataset, cfg)
    return trainer, trainer.run(resume=resume)


def _yardstick(arch: Arch, dataset: Dataset, scaling: dict[str, Any],
               descriptions: list[dict[str, Any]], cfg: LoopConfig, folder: Path,
               resume: bool, bypass: bool) -> dict[str, Any]:
    """The digital yardstick on the run's split: the logistic regression and, if ``bypass``,
    the same design and split with its physical layers replaced by fixed window means,
    trained digitally in ``folder`` (a run folder of its own; resumable)."""
    yard: dict[str, Any] = {"logistic_regression": yardstick.logistic_regression(dataset)}
    if not bypass:
        return yard
    started = time.perf_counter()
    network = build_network(arch, dataset.n_features, dataset.n_classes,
                            [(d, nn.Identity(), None) for d in descriptions], cfg.seed,
                            bypass=True, scaling=scaling).to(cfg.device)
    _, result = _train(network, dataset, replace(cfg, mode="bypass", progress=False), folder,
                       resume, [])
    best = result["best"] or {}
    yard["bypass"] = {"test_accuracy": result["test_accuracy"],
                      "train_accuracy": result["train_accuracy"],
                      "val_accuracy": best.get("val_acc"), "epochs": result["epochs"],
                      "best_epoch": best.get("epoch"), "run_dir": folder.name,
                      "wall_s": round(time.perf_counter() - started, 2),
                      "what": BYPASS_NOTE}
    return yard


def _summary(task_name: str, system: str, mode: str, seed: int, arch: Arch, dataset: Dataset,
             scaling: dict[str, Any], result: dict[str, Any], built: dict[str, Any],
             trainer: Trainer, yard: dict[str, Any], backward: str, eps: list[str],
             device: str, started: float) -> dict[str, Any]:
    best = result["best"] or {}
    return {
        "task": task_name, "system": system, "mode": mode, "seed": seed,
        "test_accuracy": result["test_accuracy"], "train_accuracy": result["train_accuracy"],
        "train_accuracy_samples": result["train_accuracy_samples"],
        "test_accuracy_model": result["test_accuracy_model"],
        "val_accuracy": best.get("val_acc"), "val_loss": best.get("val_loss"),
        "best_epoch": best.get("epoch"), "stopped_early": result["stopped_early"],
        "yardstick": yard,
        "physical_queries": int(built["collect_queries"] + result["training_queries"]),
        "queries": {"twin_collection": int(built["collect_queries"]),
                    "training_and_evaluation": int(result["training_queries"])},
        "wall_s": round(time.perf_counter() - started, 2),
        "training_wall_s": round(result["training_wall_s"], 2),
        "epochs": result["epochs"], "endpoints": eps, "device": device,
        **training_passes(mode, backward),
        "refine_twin": mode == "pat" and arch.refine, "pipelined": trainer.pipelined(),
        "arch": arch.to_dict(), "design_file": "design.toml",
        "physical_vs_digital": BYPASS_NOTE if mode == "bypass" else DIGITAL_NOTE.format(
            readout="class bins averaged, element-wise affine per class" if arch.readout == "groups"
            else "digital linear layer",
            hybrid="; trainable digital linear layers before each physical layer (hybrid)"
            if arch.hybrid else ""),
        "twins": built["twin_reports"],
        "n_train": len(dataset.y_train), "n_val": len(dataset.y_val),
        "n_test": len(dataset.y_test), "classes": dataset.classes,
        "split": dataset.split, "scaling": scaling,
    }


def _plots(trainer: Trainer, result: dict[str, Any], out: Path, title: str) -> None:
    plots.learning_curves(trainer.rows, out / "learning_curves.png", title,
                          (result["best"] or {}).get("epoch"))
    plots.confusion(result["confusion"], out / "confusion.png",
                    f"{title}: test acc {result['test_accuracy']:.3f}")
    if result["examples"]:
        plots.physical_outputs(result["examples"], result["example_labels"],
                               out / "physical_outputs.png")


def probe(endpoint: str, system: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The system's description from the daemon at ``endpoint``, asked once with a short
    timeout (``ReplyTimeout`` when nothing answers, ``UnknownSystem``...)."""
    from labd.client import LabClient

    with LabClient(endpoint, timeout_s=timeout_s, retries=0) as client:
        return client.describe(system)


def prepare_tuning(task: str | None, data: str | Path | None, system: str, mode: str,
                   eps: list[str], out: Path, design_file: str | Path | None, seed: int,
                   mnist_dir: str | Path | None, progress: bool, device: str,
                   val_fraction: float) -> dict[str, Any]:
    """What every trial of ``labd tune`` shares: the base design (with at least
    ``val_fraction`` of validation rows), each endpoint's twin (``out/twins/twin-I.pt``,
    collected and fitted once, ``pat`` and ``twin`` modes), the logistic regression on the
    trials' split, the data's shape."""
    dataset = load_task(task, data, mnist_dir)
    descriptions = [probe(endpoint, system) for endpoint in eps]
    arch = resolve_design(task, system, dataset, descriptions[0], design_file=design_file)
    if not arch.val_fraction:
        arch = replace(arch, val_fraction=val_fraction)
    twins: dict[str, Path] = {}
    if mode in ("pat", "twin"):
        (out / "twins").mkdir(parents=True, exist_ok=True)
        with Connections() as conns:
            for i, endpoint in enumerate(eps):
                get_twin(conns.hardware(endpoint, system), arch, out / "twins", str(i), seed,
                         progress, arch.twin_family, resolve_device(device))
                twins[endpoint] = out / "twins" / f"twin-{i}.pt"
    split = dataset.carve_validation(arch.val_fraction, seed)
    return {"design": arch, "twins": twins, "n_classes": dataset.n_classes,
            "output_dim": int(descriptions[0]["output_dim"]),
            "logistic_regression": yardstick.logistic_regression(split)}


def training_passes(mode: str, backward: str) -> dict[str, str]:
    """What computed training's forward and backward passes: ``hardware`` (measured),
    ``twin``, ``nominal`` (the nominal model) or ``digital`` (bypass: no physical layer)."""
    model = {"pat": backward, "insilico": "nominal", "twin": "twin", "bypass": "digital"}[mode]
    return {"forward": "hardware" if mode == "pat" else model, "backward": model}


def _model_for(hw: Hardware, mode: str, arch: Arch, out: Path, tag: str, seed: int,
               twin_path: str | Path | None, backward: str, refine: bool, progress: bool,
               device: str) -> tuple[nn.Module, TwinRefiner | None, dict[str, Any] | None]:
    """The digital model of one device for this mode (on ``device``), its refiner, and its
    twin report. ``NoNominalModel`` (one line, what to do) when the mode needs a nominal
    model the system does not have."""
    from drivers.physics.nominal import NoNominalModel, nominal_model

    if mode == "bypass":
        return nn.Identity(), None, None
    if mode == "insilico" or (mode == "pat" and backward == "nominal"):
        if not hw.description.get("nominal"):
            need = "--mode insilico trains" if mode == "insilico" else "--backward nominal " \
                "takes its gradients"
            raise NoNominalModel(
                f"system {hw.system!r} (kind {hw.description.get('kind')!r}) has no nominal "
                f"model, which {need} on: train with --mode pat (forward on the hardware, "
                f"backward through a twin fitted from its measurements) or --mode twin, or "
                f"give the system a nominal model (docs/plugins.md)")
        return nominal_model(hw.description).to(device), None, None
    if twin_path is not None:
        twin = load_twin(twin_path, device)
        report = json.loads(Path(twin_path).with_suffix(".json").read_text())["report"]
        return twin, None, report
    twin, data, report = get_twin(hw, arch, out, tag, seed, progress, arch.twin_family,
                                  device)
    refiner = TwinRefiner(twin, data, seed=seed) if (refine and mode == "pat") else None
    return twin, refiner, report


def _initialise(network: nn.Module, dataset: Dataset, cfg: LoopConfig) -> None:
    """Standardise rescalings and readout on one batch along the training path."""
    n = min(512, len(dataset.y_train))
    idx = np.random.default_rng(cfg.seed).permutation(len(dataset.y_train))[:n]
    network.set_path("pat" if cfg.mode == "pat" else "model")  # type: ignore[operator]
    with torch.no_grad():
        network.initialise(  # type: ignore[operator]
            torch.from_numpy(dataset.x_train[idx]).to(cfg.device))
