"""Command-line entry points of the trainer, for ``labd/cli.py`` to wire in.

Each command has ``add_*_arguments(parser)`` and a function taking the parsed
``argparse.Namespace`` and returning an exit code; ``register(subparsers)`` adds them all
(``train``, ``twin collect``, ``twin fit``, ``reproduce``, ``demo``):

* ``labd train (--task vowels|mnist | --data FILE.csv) --system NAME
  --mode pat|insilico|twin|bypass
  [--endpoint E ... | --config FILE] [--seed N] --out DIR [--resume] [--design FILE.toml]
  [design flags] [--device auto|cpu|cuda]``
* ``labd tune (--task T | --data FILE.csv) --system NAME --out DIR [--n-trials N]
  [--timeout S] [--storage URL] [--study NAME] [--endpoint E ...]``
* ``labd twin collect --system S --out FILE.npz [--endpoint E | --config FILE] [--samples N]
  [--repeats R]``
* ``labd twin fit (--data FILE.npz | --from-store STORE --system S) --out TWIN.pt
  [--family mlp|residual]``
* ``labd reproduce [--quick] [--json PATH] [--out DIR] [--seeds N] [--only T:S:M ...]``,
  ``labd reproduce --combine PART.json ... --json PATH``
* ``labd demo [--out DIR]``

Without ``--endpoint`` a local daemon runs for the command's duration, on ``--config FILE``
(``train``, ``twin collect``) or the embedded default configuration. Progress bars are drawn
on stderr when it is a terminal (``labd.cli``); a training run logs a line per epoch
(``labd.train.report``).

Expected failures (bad data, a missing file, a daemon that cannot be reached or refuses a
request) end the command with one line naming what failed and what to do, exit code
1 (2 for bad data or arguments); the traceback only with ``labd --log-level debug``. A run
folder keeps every finished epoch (``--resume`` continues it); ``labd reproduce --resume``
keeps the finished runs and resumes the others.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from drivers.plugins import PluginError
from labd.client import LabError, ReplyTimeout, Unreachable, reach
from labd.config import ConfigError
from labd.daemon.process import DaemonStartError
from labd.train.datasets import DataError

log = logging.getLogger("labd.train")

NO_PROGRESS = "no progress bars (the default when stderr is not a terminal)"
#: Failures of normal use: reported in one line, not as a traceback.
EXPECTED = (LabError, DataError, OSError, ConfigError, PluginError, DaemonStartError)


def _failed(command: str, exc: Exception, then: str = "") -> int:
    """Print one line for an expected failure of ``labd COMMAND`` and return its exit code
    (the traceback is logged at debug level)."""
    log.debug("labd %s failed", command, exc_info=exc)
    if isinstance(exc, Unreachable):
        what = exc.message
    elif isinstance(exc, ReplyTimeout):
        what = f"{exc.message} (is the daemon running? `labd status --endpoint E` tells)"
    elif isinstance(exc, LabError):
        what = f"the daemon refused a request: {exc}"
    else:
        what = str(exc)
    print(f"labd {command}: {what}{then}")
    return 2 if isinstance(exc, DataError | ConfigError) else 1


def _unreachable(command: str, endpoints: list[str] | str | None) -> int | None:
    """First contact with the given daemons, before the trainer loads (seconds, not the long
    wait for a measurement): ``_failed``'s exit code if one does not answer, else None."""
    if not endpoints:
        return None
    try:
        reach([endpoints] if isinstance(endpoints, str) else endpoints)
    except LabError as exc:
        return _failed(command, exc)
    return None


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=["vowels", "mnist"], help="a built-in task")
    src.add_argument("--data", metavar="FILE.csv",
                     help="a CSV data set: feature columns, 'label', optional 'split'")
    p.add_argument("--system", required=True, help="the daemon's system to train on")
    p.add_argument("--mode", required=True, choices=["pat", "insilico", "twin", "bypass"],
                   help="pat: hardware forward, twin backward; bypass: digital-only baseline "
                        "(physical layers replaced by fixed window means); "
                        "insilico: nominal model, then "
                        "evaluated on the hardware; twin: twin-trained, evaluated on hardware")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--endpoint", action="append", metavar="E",
                       help="daemon control endpoint; repeat to spread layers over daemons "
                            "(layer i on endpoint i mod n). Default: start a local daemon")
    where.add_argument("--config", metavar="FILE",
                       help="start the local daemon on this configuration (default: the "
                            "embedded one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt, with DIR/design.toml")
    add_design_arguments(p)
    p.add_argument("--no-yardstick", action="store_true",
                   help="do not train the digital-only bypass beside the run (the logistic "
                        "regression, milliseconds, is always fitted)")
    p.add_argument("--twin", metavar="TWIN.pt", help="use this twin instead of fitting one")
    p.add_argument("--backward", choices=["twin", "nominal"], default="twin",
                   help="pat mode: the model whose gradient is used (default: twin)")
    p.add_argument("--refine-twin", action=argparse.BooleanOptionalAction,
                   help="pat mode: keep refining the twin on the measurements PAT makes "
                        "(default: the design's, off)")
    p.add_argument("--mnist-dir", metavar="DIR", help="directory of the 4 MNIST IDX files")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the digital parts, the twin and its fitting run (default: "
                        "auto, CUDA when torch sees it)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="pat mode: the plain synchronous training loop (one request per layer "
                        "and minibatch, the test evaluation after each epoch) instead of the "
                        "pipelined one (the same algorithm, the instrument kept busy)")


#: ``labd train`` / ``labd tune`` flags that set one design key (``labd.train.arch.Arch``)
DESIGN_FLAGS = {"depth": int, "units": int, "readout": str, "epochs": int, "batch_size": int,
                "lr": float, "lr_digital": float, "twin_samples": int, "twin_epochs": int,
                "val_fraction": float, "patience": int, "scaling": str}


def add_design_arguments(p: argparse.ArgumentParser) -> None:
    """``--design FILE.toml`` and one flag per usual design key (they win over the file)."""
    g = p.add_argument_group("design", "the network and its training (default: the task's "
                             "hand-made design, or one chosen for the data; docs/training.md)")
    g.add_argument("--design", metavar="FILE.toml",
                   help="a design file (a run folder's design.toml, labd tune's "
                        "best-design.toml); the flags below override it")
    g.add_argument("--depth", type=int, metavar="N", help="physical layers")
    g.add_argument("--units", type=int, metavar="N",
                   help="side-by-side copies of the system in each physical layer")
    g.add_argument("--hybrid", action=argparse.BooleanOptionalAction,
                   help="trained digital linear layers before each physical layer")
    g.add_argument("--readout", choices=["linear", "groups"],
                   help="class scores: a digital linear layer, or the mean of class bins")
    g.add_argument("--epochs", type=int, metavar="N", help="epochs (at most, with --patience)")
    g.add_argument("--batch-size", type=int, metavar="N")
    g.add_argument("--lr", type=float, metavar="LR", help="learning rate of the physical "
                                                          "parameters")
    g.add_argument("--lr-digital", type=float, metavar="LR",
                   help="learning rate of the digital parameters")
    g.add_argument("--twin-samples", type=int, metavar="N", help="twin data points")
    g.add_argument("--twin-epochs", type=int, metavar="N", help="twin fitting epochs")
    g.add_argument("--twin-hidden", type=int, nargs="+", metavar="N",
                   help="the twin MLP's hidden layer sizes")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help="training rows held out for validation (0: none)")
    g.add_argument("--patience", type=int, metavar="N",
                   help="early stopping after N epochs without a better validation score "
                        "(0: never)")
    g.add_argument("--scaling", choices=["standard", "minmax", "none"],
                   help="input feature mapping fitted on the training rows")


def design_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The design keys set on the command line."""
    out = {key: getattr(args, key) for key in DESIGN_FLAGS}
    out["hybrid"] = args.hybrid
    out["twin_hidden"] = tuple(args.twin_hidden) if args.twin_hidden else None
    return {k: v for k, v in out.items() if v is not None}


def train(args: argparse.Namespace) -> int:
    if (failed := _unreachable("train", args.endpoint)) is not None:
        return failed
    from drivers.physics.nominal import NoNominalModel
    from labd.train.designfile import DesignError
    from labd.train.devices import DeviceError
    from labd.train.run import run_training
    from labd.train.yardstick import table

    try:
        summary = run_training(task=args.task, data=args.data, system=args.system,
                               mode=args.mode, out=args.out, endpoints=args.endpoint,
                               config=args.config, seed=args.seed, resume=args.resume,
                               mnist_dir=args.mnist_dir, twin_path=args.twin,
                               backward=args.backward, refine=args.refine_twin,
                               design_file=args.design, overrides=design_overrides(args),
                               progress=not args.no_progress, pipeline=not args.no_pipeline,
                               device=args.device, bypass_yardstick=not args.no_yardstick)
    except (DesignError, DeviceError) as exc:
        _failed("train", exc)
        return 2
    except (*EXPECTED, NoNominalModel) as exc:
        return _failed("train", exc, f"; {args.out} keeps every finished epoch: run the same "
                       f"command with --resume to continue" if Path(args.out).exists() else "")
    print(table(summary))
    print(json.dumps({k: summary[k] for k in ("task", "system", "mode", "seed",
                                              "test_accuracy", "train_accuracy",
                                              "val_accuracy", "best_epoch", "epochs",
                                              "physical_queries", "device", "wall_s")},
                     indent=2))
    return 0


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    from labd.train.tune import SPACE

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=["vowels", "mnist"], help="a built-in task")
    src.add_argument("--data", metavar="FILE.csv", help="a CSV data set")
    p.add_argument("--system", required=True, help="the daemon's system to train on")
    p.add_argument("--mode", default="pat", choices=["pat", "insilico", "twin", "bypass"])
    p.add_argument("--out", required=True, metavar="DIR",
                   help="trial run folders (DIR/trials), twins, best-design.toml, tune.json")
    p.add_argument("--endpoint", action="append", metavar="E",
                   help="daemon control endpoint; repeat to run one trial at a time on each "
                        "(default: start a local daemon)")
    p.add_argument("--n-trials", type=int, default=30, metavar="N",
                   help="the study's budget of finished trials (default 30); the same "
                        "command again carries on up to it")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S s")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage (default sqlite:///DIR/study.db; any database URL "
                        "Optuna accepts, shared by trainers on several machines)")
    p.add_argument("--study", default="labd", metavar="NAME", help="the study's name")
    p.add_argument("--search", nargs="+", choices=sorted(SPACE), metavar="KEY",
                   help=f"design keys to search (default all: {', '.join(SPACE)})")
    p.add_argument("--design", metavar="FILE.toml", help="the design to start from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-dir", metavar="DIR")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def tune(args: argparse.Namespace) -> int:
    from labd.train.tune import SPACE, TuneConfig, TuneError
    from labd.train.tune import tune as run_tune

    cfg = TuneConfig(system=args.system, out=Path(args.out), task=args.task, data=args.data,
                     mode=args.mode, endpoints=args.endpoint, n_trials=args.n_trials,
                     timeout=args.timeout, storage=args.storage, study=args.study,
                     seed=args.seed, search=args.search or list(SPACE), design=args.design,
                     mnist_dir=args.mnist_dir, device=args.device,
                     progress=not args.no_progress)
    try:
        report = run_tune(cfg)
    except TuneError as exc:
        _failed("tune", exc)
        return 2
    except EXPECTED as exc:
        return _failed("tune", exc, "; the study keeps every finished trial: run the same "
                                    "command again to carry on")
    best = report["best"]
    lr = report["logistic_regression"]
    print(f"{report['finished_trials']} trials finished ({report['pruned_trials']} pruned) "
          f"in study {report['study']!r}, {report['storage']}")
    if best is None:
        print("no trial completed yet: run the same command again to carry on")
        return 0
    print(f"best: trial {best['trial']}, validation {100 * best['val_accuracy']:.1f}%, "
          f"test {100 * best['test_accuracy']:.1f}% (logistic regression: test "
          f"{100 * lr['test_accuracy']:.1f}%, validation "
          f"{100 * (lr['val_accuracy'] or 0):.1f}%)")
    print(f"best design: {best['design']}\ntrain with it: {report['train_best']}")
    return 0


def add_twin_collect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", required=True)
    p.add_argument("--out", required=True, metavar="FILE.npz", help="measurements file")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--endpoint", help="daemon endpoint (default: start a local daemon)")
    where.add_argument("--config", metavar="FILE",
                       help="start the local daemon on this configuration (default: the "
                            "embedded one)")
    p.add_argument("--samples", type=int,
                   help="random (x, theta) points (default: 20000, or 40000 for a system "
                        "without a nominal model, whose twin learns from the data alone)")
    p.add_argument("--repeats", type=int, default=2, help="shots per point, averaged")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def twin_collect(args: argparse.Namespace) -> int:
    if (failed := _unreachable("twin collect", args.endpoint)) is not None:
        return failed
    from labd.train.hardware import Connections
    from labd.train.run import daemon_endpoints
    from labd.train.twins import SAMPLES, collect, default_family

    try:
        with daemon_endpoints([args.endpoint] if args.endpoint else None, args.config) as eps, \
                Connections() as conns:
            hw = conns.hardware(eps[0], args.system)
            samples = args.samples or SAMPLES[default_family(hw.description)]
            data = collect(hw, samples, args.repeats, seed=args.seed,
                           progress=not args.no_progress)
        data.save(args.out)
    except EXPECTED as exc:
        return _failed("twin collect", exc, f"; nothing was written to {args.out}")
    print(f"{len(data.y)} points x {data.repeats} repeats of {args.system} -> {args.out} "
          f"(noise std {data.noise_std:.4g})")
    return 0


def add_twin_fit_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="FILE.npz", help="from `labd twin collect`")
    src.add_argument("--from-store", metavar="STORE",
                     help="fit from the measurements a daemon recorded (needs --system)")
    p.add_argument("--system", help="with --from-store: the system whose measurements to use")
    p.add_argument("--since", metavar="ISO-TIME", help="with --from-store: only measurements "
                                                       "received from then on")
    p.add_argument("--run", type=int, help="with --from-store: only this daemon run")
    p.add_argument("--out", required=True, metavar="TWIN.pt", help="twin (+ TWIN.json sidecar)")
    p.add_argument("--family", choices=["mlp", "residual"],
                   help="residual: the system's nominal model with a learned correction "
                        "(the default when it has one); mlp: from the measurements alone "
                        "(the default otherwise, said in a warning)")
    p.add_argument("--epochs", type=int, help="default: the family's (labd.train.twins.EPOCHS)")
    p.add_argument("--hidden", type=int, nargs="+",
                   help="hidden layer sizes; default: the family's (labd.train.twins.HIDDEN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def _stored(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """(chunks to fit, system description, a first chunk to plot) from ``--from-store``."""
    from labd.store.reader import StoreReader

    if not args.system:
        raise DataError("--from-store needs --system NAME")
    reader = StoreReader(args.from_store)
    runs = [r for r in reader.runs() if args.system in r["devices"]
            and (args.run is None or r["id"] == args.run)]
    if not runs:
        raise DataError(f"{args.from_store} has no run that served system {args.system!r}")
    description = runs[-1]["devices"][args.system]

    def chunks() -> Any:
        return reader.iter_batches(system=args.system, since=args.since, run=args.run,
                                   chunk_rows=8192)

    first = next(chunks(), None)
    if first is None:
        raise DataError(f"{args.from_store} holds no measurement of {args.system!r} matching "
                        f"the filters")
    return chunks(), description, first


def twin_fit(args: argparse.Namespace) -> int:
    from drivers.physics.nominal import NoNominalModel
    from labd.train import plots
    from labd.train.twins import (
        NO_NOMINAL_TWIN,
        WHAT,
        TwinData,
        default_family,
        fit_twin,
        predict,
        save_twin,
    )

    try:
        if args.from_store:
            source, description, (x, theta, y) = _stored(args)
        else:
            data = TwinData.load(args.data)
            source, description, (x, theta, y) = data, data.description, (
                data.x, data.theta, data.y)
        family = args.family or default_family(description)
        if family == "mlp" and not args.family:
            log.warning(NO_NOMINAL_TWIN, description.get("name"))
        twin, report = fit_twin(source, description, family,
                                hidden=tuple(args.hidden) if args.hidden else None,
                                epochs=args.epochs, seed=args.seed,
                                progress=not args.no_progress)
    except (*EXPECTED, NoNominalModel) as exc:
        return _failed("twin fit", exc, f"; nothing was written to {args.out}")
    sidecar = save_twin(args.out, twin, report)
    n = min(2000, len(y))
    png = Path(args.out).with_suffix(".png")
    plots.twin_scatter(predict(twin, x[-n:], theta[-n:]), y[-n:], png,
                       f"{description.get('name')} twin ({family})")
    print(f"twin ({family}: {WHAT[family]}) held-out NRMSE {report['holdout_nrmse']:.4f} -> "
          f"{args.out}, {sidecar}, {png}")
    return 0


def add_reproduce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="MNIST subsets and fewer epochs (pipeline check, minutes)")
    p.add_argument("--json", metavar="PATH", help="results JSON (default OUT/results.json)")
    p.add_argument("--out", default="reproduce", metavar="DIR", help="run folders")
    p.add_argument("--seeds", type=int,
                   help="seeds per experiment (default 3; 1 with --quick)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed (to add seeds to an earlier reproduction)")
    p.add_argument("--endpoint", help="daemon endpoint (default: start a local daemon)")
    p.add_argument("--only", action="append", metavar="TASK:SYSTEM:MODE",
                   help="run only experiments matching this prefix (repeatable)")
    p.add_argument("--mnist-dir", metavar="DIR")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    p.add_argument("--resume", action="store_true",
                   help="keep the runs OUT already finished and continue the others from "
                        "their checkpoints (after an interruption or a failure)")
    p.add_argument("--combine", nargs="+", metavar="PART.json",
                   help="train nothing: merge these result files (reproduce processes run "
                        "side by side; --only filters them) into --json and print the table")


def reproduce(args: argparse.Namespace) -> int:
    if (failed := _unreachable("reproduce", args.endpoint)) is not None:
        return failed
    from labd.train.reproduce import UnknownExperiment, combine, select
    from labd.train.reproduce import reproduce as run

    try:
        select(args.only)
    except UnknownExperiment as exc:
        _failed("reproduce", exc)
        return 2
    if args.combine:
        combine(args.combine, args.json or Path(args.out) / "results.json", args.only)
        return 0
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    try:
        run(args.out, quick=args.quick, seeds=seeds, first_seed=args.first_seed,
            json_path=args.json, endpoint=args.endpoint, only=args.only,
            mnist_dir=args.mnist_dir, progress=not args.no_progress, resume=args.resume)
    except EXPECTED as exc:
        return _failed("reproduce", exc, f"; {args.out} keeps the finished runs and epochs: "
                       f"run the same command with --resume to continue")
    return 0


def demo(out_dir: str | Path = "demo-run", progress: bool = True) -> dict[str, Any]:
    """Start a local daemon, train the SHG vowel network with PAT and in silico, print both."""
    from labd.train.reproduce import table
    from labd.train.run import daemon_endpoints, run_training

    out = Path(out_dir)
    results = []
    with daemon_endpoints(None) as eps:
        for mode in ("pat", "insilico"):
            results.append(run_training(task="vowels", system="shg", mode=mode,
                                        out=out / f"shg-vowels-{mode}", endpoints=eps,
                                        progress=progress))
    print(table(results))
    print(f"plots and summaries in {out}/shg-vowels-pat and {out}/shg-vowels-insilico")
    return {"results": results}


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-run", metavar="DIR")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``twin`` (``collect``, ``fit``), ``tune``, ``reproduce`` and ``demo``."""
    p = sub.add_parser("train", help="train a physical neural network",
                       description="Train a network of physical layers (PAT, in silico or "
                                   "twin-trained) and write a run folder.")
    add_train_arguments(p)
    p.set_defaults(func=train)
    twin = sub.add_parser("twin", help="collect data for and fit digital twins")
    tsub = twin.add_subparsers(dest="twin_command", metavar="ACTION", required=True)
    p = tsub.add_parser("collect", help="measure random (x, theta) on a system")
    add_twin_collect_arguments(p)
    p.set_defaults(func=twin_collect)
    p = tsub.add_parser("fit", help="fit a twin to collected measurements")
    add_twin_fit_arguments(p)
    p.set_defaults(func=twin_fit)
    p = sub.add_parser("tune", help="search designs with Optuna (needs labd[tune])",
                       description="Search network designs and training settings with Optuna "
                                   "against one or more daemons; every trial is a run folder, "
                                   "the best design a file `labd train --design` reads.")
    add_tune_arguments(p)
    p.set_defaults(func=tune)
    p = sub.add_parser("reproduce", help="the paper's experiments on the stand-ins")
    add_reproduce_arguments(p)
    p.set_defaults(func=reproduce)
    p = sub.add_parser("demo", help="SHG vowels: PAT against in silico on a local daemon")
    add_demo_arguments(p)
    p.set_defaults(func=lambda a: demo(a.out, progress=not a.no_progress) and 0)
