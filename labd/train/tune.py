"""``labd tune``: a search over designs with Optuna, against one or more daemons.

Contract of ``tune(TuneConfig)``:

* the study lives in Optuna's storage: ``sqlite:///OUT/study.db`` by default, or any URL
  Optuna accepts (``postgresql://...``, ``mysql://...``): trainers on several machines that
  name the same storage and study share it, each against its own rigs. The study remembers
  the task, data, system and mode it was made for (a CSV by the SHA-256 of its bytes: each
  machine keeps its copy where and under what name it likes); another one under the same
  name is refused.
* every trial is a normal run folder, ``OUT/trials/trial-NNNN`` (``labd.train.run``): its
  ``design.toml``, ``metrics.csv``, ``summary.json`` and plots. The objective is the run's
  best validation accuracy (the rows the design never trains on; never the test set). A
  trial whose validation accuracy after an epoch falls below the median of earlier trials
  at the same epoch is pruned (Optuna's ``MedianPruner``; not before ``patience`` epochs).
* the designs searched start from the run's default design (the task's hand-made one, or the
  one ``choose_design`` makes for the data; ``--design FILE`` replaces it) and vary the keys
  of ``SPACE`` (``search`` restricts them). A new study's first trial is the base design
  itself (its values of the searched keys that lie in ``SPACE``; the others drawn), so the
  best design is never one the study never compared with the default. A base design
  without a validation split gets ``VAL_FRACTION``: tuning must not look at the test rows.
* with ``n`` endpoints, ``n`` trials run at once, one per daemon; each daemon's twin is
  collected and fitted once (``OUT/twins/``) and used by every trial on it.
* ``n_trials`` is the study's budget of finished (complete or pruned) trials: run the same
  command again after an interruption and it carries on where it stopped; trials of this
  machine left running by a dead process are marked failed and their designs tried again.
  ``timeout`` (seconds) bounds one invocation.
* after every finished trial the best design so far (highest validation accuracy; ties: the
  lower validation loss) is written to ``OUT/best-design.toml``, which
  ``labd train --design`` reads. Every trial keeps its design in the study, so the best one
  is written on any machine, also when another machine ran it.

Expected failures (Optuna missing, a storage URL that cannot be opened, an unreachable
daemon, a study made for other data) raise ``TuneError`` with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from labd.train.datasets import DataError
from labd.train.space import SPACE

if TYPE_CHECKING:
    from labd.train.arch import Arch

VAL_FRACTION = 0.15
TUNE_EXTRA = "pip install 'labd[tune]'"


class TuneError(Exception):
    """An expected failure of ``labd tune`` (the message says what to do)."""


@dataclass
class TuneConfig:
    system: str
    out: Path
    task: str | None = None
    data: str | Path | None = None
    mode: str = "pat"
    endpoints: list[str] | None = None
    n_trials: int = 30
    timeout: float | None = None
    storage: str | None = None
    study: str = "labd"
    seed: int = 0
    #: keys of ``SPACE`` to search (default: all)
    search: list[str] = field(default_factory=lambda: list(SPACE))
    #: the base design (default: the run's default design for the data)
    design: Path | None = None
    mnist_dir: str | None = None
    device: str = "auto"
    progress: bool = True


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise TuneError(f"labd tune needs Optuna, which is not installed: {TUNE_EXTRA}"
                        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def sample(trial: Any, base: Arch, keys: list[str]) -> Arch:
    """``base`` with the keys ``keys`` of ``SPACE`` drawn by the trial."""
    values: dict[str, Any] = {}
    for key in keys:
        kind, args = SPACE[key]
        if kind == "int":
            values[key] = trial.suggest_int(key, *args)
        elif kind == "log":
            values[key] = trial.suggest_float(key, *args, log=True)
        else:
            values[key] = trial.suggest_categorical(key, list(args))
    return dataclasses.replace(base, **values)


def base_params(base: Arch, keys: list[str]) -> dict[str, Any]:
    """The values of ``keys`` in ``base`` that ``SPACE`` can draw (a trial's fixed params)."""
    params: dict[str, Any] = {}
    for key in keys:
        kind, args = SPACE[key]
        value = getattr(base, key)
        if value in args if kind == "choice" else args[0] <= value <= args[1]:
            params[key] = value
    return params


def open_study(cfg: TuneConfig, what: dict[str, Any]) -> Any:
    """The study (created, or loaded to carry on), checked to be the same task."""
    optuna = _optuna()
    url = cfg.storage or f"sqlite:///{(cfg.out / 'study.db').resolve()}"
    try:
        storage: Any = url
        if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
            # stale trials of dead processes on other machines are failed after 3 minutes
            with warnings.catch_warnings():  # "experimental" since Optuna 2.9, and stable
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, heartbeat_interval=60,
                                                     grace_period=180)
        study = optuna.create_study(
            storage=storage, study_name=cfg.study, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=5),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=10))
    except Exception as exc:  # noqa: BLE001 - any storage failure: one line, what to do
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"cannot open the study storage {url!r}: {first} (give --storage "
                        f"a database URL Optuna accepts, e.g. sqlite:///study.db)") from None
    made_for = study.user_attrs.get("labd")
    if made_for is None:
        study.set_user_attr("labd", what)
    elif made_for != what:
        raise TuneError(f"study {cfg.study!r} in {url} was made for {made_for}, not {what}: "
                        f"name another --study or --storage")
    return study


def _retry_dead_trials(study: Any) -> int:
    """Trials this machine left running in a process that no longer exists: failed, and
    their designs queued again. Returns how many."""
    optuna = _optuna()
    host = socket.gethostname()
    retried = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or pid is None or psutil.pid_exists(int(pid)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        retried += 1
    return retried


def finished(study: Any) -> list[Any]:
    """The study's complete and pruned trials."""
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def best_trial(study: Any) -> Any | None:
    """The complete trial of highest validation accuracy (ties: lower validation loss)."""
    optuna = _optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return None
    return max(done, key=lambda t: (t.value, -t.user_attrs.get("val_loss", 0.0), -t.number))


def write_best(study: Any, out: Path, command: str) -> Path | None:
    """``OUT/best-design.toml``: the best trial's design, as the study keeps it (the trial
    may have run on another machine); None: no trial completed."""
    from labd.train import designfile
    from labd.train.arch import Arch

    trial = best_trial(study)
    if trial is None:
        return None
    attrs = trial.user_attrs
    arch = designfile.apply(Arch(), attrs["design"], f"trial {trial.number}'s design")
    comment = (f"Best design of study {study.study_name!r} after {len(finished(study))} "
               f"trials: trial {trial.number},\nvalidation accuracy {trial.value:.4f}, test "
               f"accuracy {attrs.get('test_accuracy', float('nan')):.4f} (run folder "
               f"{attrs['run_dir']} on {attrs.get('host', '?')}).\nTrain with it: {command}")
    path = out / "best-design.toml"
    tmp = path.with_suffix(".tmp")
    designfile.save(tmp, arch, comment)
    tmp.replace(path)
    return path


def data_identity(data: str | Path) -> str:
    """A CSV as a study remembers it: the SHA-256 of its bytes (the same on every machine,
    wherever the copy sits and whatever its name)."""
    path = Path(data)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise TuneError(f"cannot read {path}: {exc.strerror}") from None
    return f"sha256:{digest.hexdigest()}"


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run the study until it has ``n_trials`` finished trials or ``timeout`` passes; returns
    the report written to ``OUT/tune.json``."""
    optuna = _optuna()
    unknown = sorted(set(cfg.search) - set(SPACE))
    if unknown:
        raise TuneError(f"cannot search {unknown}; searchable: {sorted(SPACE)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    what = {"task": cfg.task, "data": data_identity(cfg.data) if cfg.data else None,
            "system": cfg.system, "mode": cfg.mode}
    study = open_study(cfg, what)
    _reach(cfg.endpoints or [])
    from labd.train import run  # (torch: after the daemons answered)
    retried = _retry_dead_trials(study)
    started = time.perf_counter()
    source = f"--task {cfg.task}" if cfg.task else f"--data {cfg.data}"
    command = (f"labd train {source} --system {cfg.system} --mode {cfg.mode} --seed {cfg.seed} "
               f"--design {cfg.out / 'best-design.toml'} --out RUN")
    with run.daemon_endpoints(cfg.endpoints) as eps:
        setup = _prepare(cfg, eps)
        base: Arch = setup["design"]
        _start_from(study, base, cfg)
        free: queue.Queue[str] = queue.Queue()
        for endpoint in eps:
            free.put(endpoint)

        def objective(trial: Any) -> float:
            endpoint = free.get()
            try:
                return _trial(trial, cfg, sample(trial, base, cfg.search), endpoint, setup)
            finally:
                free.put(endpoint)

        def on_finished(study: Any, _trial: Any) -> None:
            write_best(study, cfg.out, command)

        remaining = cfg.n_trials - len(finished(study))
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, timeout=cfg.timeout,
                           n_jobs=len(eps), callbacks=[optuna.study.MaxTrialsCallback(
                               cfg.n_trials, states=(optuna.trial.TrialState.COMPLETE,
                                                     optuna.trial.TrialState.PRUNED)),
                               on_finished])
    best = best_trial(study)
    best_path = write_best(study, cfg.out, command)
    report = {
        "study": cfg.study, "storage": cfg.storage or f"sqlite:///{cfg.out / 'study.db'}",
        **what, "n_trials": cfg.n_trials, "finished_trials": len(finished(study)),
        "pruned_trials": sum(t.state == optuna.trial.TrialState.PRUNED
                             for t in finished(study)),
        "retried_trials": retried, "wall_s": round(time.perf_counter() - started, 1),
        "logistic_regression": setup["logistic_regression"],
        "best": None if best is None else {
            "trial": best.number, "val_accuracy": best.value, **best.user_attrs,
            "params": best.params, "design": str(best_path)},
        "train_best": command,
    }
    (cfg.out / "tune.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def _start_from(study: Any, base: Arch, cfg: TuneConfig) -> None:
    """``OUT/base-design.toml``; a new study's first trial: the base design."""
    from labd.train import designfile

    designfile.save(cfg.out / "base-design.toml", base,
                    "The design labd tune started from (the searched keys vary).")
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(base_params(base, cfg.search), user_attrs={"base": True})


@contextlib.contextmanager
def _daemon_errors(eps: list[str]) -> Iterator[None]:
    """The daemons' expected failures as ``TuneError``."""
    from labd.client import LabError, ReplyTimeout

    try:
        yield
    except ReplyTimeout:
        raise TuneError(f"no daemon answers at {' or '.join(eps)}: start one there "
                        f"(`labd serve --bind E`) or give the right --endpoint") from None
    except LabError as exc:
        raise TuneError(f"the daemon refused: {exc}") from None


def _reach(eps: list[str]) -> None:
    """First contact with every daemon in ``eps``, in seconds: before the trainer loads."""
    from labd.client import reach

    with _daemon_errors(eps):
        reach(eps)


def _prepare(cfg: TuneConfig, eps: list[str]) -> dict[str, Any]:
    """``labd.train.run.prepare_tuning``, its expected failures as ``TuneError``."""
    from labd.train import run
    from labd.train.designfile import DesignError
    from labd.train.devices import DeviceError

    try:
        with _daemon_errors(eps):
            return run.prepare_tuning(cfg.task, cfg.data, cfg.system, cfg.mode, eps, cfg.out,
                                      cfg.design, cfg.seed, cfg.mnist_dir, cfg.progress,
                                      cfg.device, VAL_FRACTION)
    except (DataError, DesignError, DeviceError) as exc:
        raise TuneError(str(exc)) from None


def _trial(trial: Any, cfg: TuneConfig, arch: Arch, endpoint: str,
           setup: dict[str, Any]) -> float:
    """One trial: a run folder trained with ``arch`` on ``endpoint``, pruned from its
    validation curve; returns its best validation accuracy."""
    from labd.train.run import run_training

    optuna = _optuna()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    if arch.readout == "groups" and arch.units * setup["output_dim"] < setup["n_classes"]:
        raise optuna.TrialPruned("fewer physical outputs than classes for a groups readout")
    run_dir = cfg.out / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("design", arch.to_dict())
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("endpoint", endpoint)

    def report(row: dict[str, Any]) -> None:
        if row.get("val_acc") is None:
            return
        trial.report(float(row["val_acc"]), int(row["epoch"]))
        if row["epoch"] > arch.patience and trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {row['val_acc']:.3f} at epoch "
                                     f"{row['epoch']} below the median of earlier trials")

    summary = run_training(task=cfg.task, data=cfg.data, system=cfg.system, mode=cfg.mode,
                           out=run_dir, endpoints=[endpoint], seed=cfg.seed, arch=arch,
                           twin_path=setup["twins"].get(endpoint), mnist_dir=cfg.mnist_dir,
                           progress=False, on_epoch=report, bypass_yardstick=False,
                           device=cfg.device)
    trial.set_user_attr("test_accuracy", summary["test_accuracy"])
    trial.set_user_attr("val_loss", summary["val_loss"])
    trial.set_user_attr("best_epoch", summary["best_epoch"])
    return float(summary["val_accuracy"])
