"""``labd reproduce``: the paper's experiments on the stand-ins, as one table.

Experiments (each over ``seeds``): SHG vowels with PAT, in silico and twin-trained; plate
MNIST; oscillator MNIST; hybrid SHG + digital MNIST (all PAT). Every run carries its digital
yardstick (``labd.train.yardstick``): the same design with its physical layers replaced by
fixed window means of the same sizes (``bypass``: what the physics adds is the difference)
and a logistic regression, on the same split; the table shows both beside each row.
``quick`` trains on MNIST subsets with fewer epochs (a smoke test of the whole pipeline, not
the paper's figures).

``combine(paths)`` merges the result files of several ``reproduce`` processes (e.g. run side by
side with disjoint ``only`` filters) into one report.

All runs use one local daemon (the embedded default configuration) unless ``endpoint`` is
given. Results: ``out/<experiment key>-s<seed>/`` run folders, ``out/results.json`` (or
``json_path``, rewritten after every run so an interrupted reproduction keeps what it
finished) with a ``results`` list (system, task, mode, seed, test_accuracy,
train_accuracy, physical_queries, wall_s, ...) and the printed table.
"""

from __future__ import annotations

import collections
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labd.train.arch import default_arch
from labd.train.run import daemon_endpoints, run_training


@dataclass(frozen=True)
class Experiment:
    """One row of the table: a task on a system in a mode, with the design's defaults
    (``refine`` overrides the design's twin refinement during PAT); ``name``: the system as
    the table names it."""

    task: str
    system: str
    mode: str
    name: str
    paper: str
    refine: bool | None = None

    @property
    def key(self) -> str:
        """``task:system:mode`` plus ``:norefine``/``:refine`` when ``refine`` is set."""
        base = f"{self.task}:{self.system}:{self.mode}"
        return base if self.refine is None else base + (":refine" if self.refine
                                                        else ":norefine")

    def label(self, arch: dict[str, Any]) -> str:
        """The row's system and design in words, from the design its runs recorded:
        ``SHG, 2 layers``, ``plate, 2 units``, ``SHG x16 + digital (hybrid)``."""
        depth, units = int(arch.get("depth", 1)), int(arch.get("units", 1))
        layers = f", {depth} layers" if depth > 1 else ""
        if arch.get("hybrid"):
            text = f"{self.name} x{units}{layers} + digital (hybrid)"
        else:
            text = self.name + layers + (f", {units} units" if units > 1 else "")
        return text + (", twin refined" if self.refine else "")


EXPERIMENTS = [
    Experiment("vowels", "shg", "pat", "SHG", "93%"),
    Experiment("vowels", "shg", "insilico", "SHG", "~40%"),
    Experiment("vowels", "shg", "twin", "SHG", "-"),
    Experiment("vowels", "shg", "pat", "SHG", "-", refine=True),
    Experiment("mnist", "plate", "pat", "plate", "87%"),
    Experiment("mnist", "oscillator", "pat", "oscillator", "93%"),
    Experiment("mnist", "shg", "pat", "SHG", "97%"),
]


class UnknownExperiment(ValueError):
    """An ``only`` prefix that no experiment's key starts with."""


def select(only: list[str] | None) -> list[Experiment]:
    """The experiments whose key starts with one of the prefixes ``only`` (every one without
    it); ``UnknownExperiment`` naming the first prefix that matches none."""
    for prefix in only or []:
        if not any(e.key.startswith(prefix) for e in EXPERIMENTS):
            raise UnknownExperiment(
                f"--only {prefix} matches no experiment; the experiments are "
                f"{', '.join(e.key for e in EXPERIMENTS)}")
    return [e for e in EXPERIMENTS if not only or any(e.key.startswith(o) for o in only)]


@dataclass(frozen=True)
class Budget:
    """What each run may spend: MNIST subset sizes ``(train, test)`` (``None``: all of it),
    epochs per task (absent: the design's) and overrides of the design's twin fields."""

    subset: tuple[int, int] | None = None
    epochs: dict[str, int] = field(default_factory=dict)
    twin: dict[str, int] = field(default_factory=dict)


#: The paper's budgets: the designs as they are.
FULL = Budget()
#: ``quick``: MNIST subsets, an epoch cap and smaller twins.
QUICK = Budget((4000, 1000), {"vowels": 40, "mnist": 2}, {"twin_samples": 3000,
                                                          "twin_epochs": 8})


def experiment_key(result: dict[str, Any]) -> str:
    """The result's ``experiment``, or ``task:system:mode`` for files written without it."""
    return str(result.get("experiment") or f"{result['task']}:{result['system']}:"
               f"{result['mode']}")


def _yard(rows: list[dict[str, Any]], which: str) -> str:
    """The mean test accuracy of the rows' yardstick ``which`` (``-``: none recorded)."""
    accs = [r["yardstick"][which]["test_accuracy"] for r in rows
            if which in r.get("yardstick", {})]
    return f"{100 * statistics.mean(accs):.1f}%" if accs else "-"


def table(results: list[dict[str, Any]]) -> str:
    """Mean and spread over seeds per experiment, beside the paper's figure and the digital
    yardstick (bypass and logistic regression, mean test accuracy over the same seeds)."""
    lines = [f"{'task':<7}{'system':<30}{'mode':<9}{'seeds':>5}{'test acc (mean±sd)':>21}"
             f"{'paper':>7}{'bypass':>8}{'LR':>7}{'queries':>12}{'wall s':>9}"
             f"  physical / digital"]
    for exp in EXPERIMENTS:
        rows = [r for r in results if experiment_key(r) == exp.key]
        if not rows:
            continue
        accs = [r["test_accuracy"] for r in rows]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        queries = statistics.mean(r["physical_queries"] for r in rows)
        wall = statistics.mean(r["wall_s"] for r in rows)
        arch = rows[0].get("arch", {})
        note = ("digital linear layers + rescaling" if arch.get("hybrid")
                else "rescaling + " + ("class-bin readout" if arch.get("readout") == "groups"
                                       else "linear readout"))
        if exp.mode == "bypass":
            note = "no physics: " + note + ", physical layer -> fixed window mean"
        lines.append(f"{exp.task:<7}{exp.label(arch):<30}{exp.mode:<9}{len(rows):>5}"
                     f"{100 * statistics.mean(accs):>14.1f}% ±{100 * sd:4.1f}"
                     f"{exp.paper:>7}{_yard(rows, 'bypass'):>8}"
                     f"{_yard(rows, 'logistic_regression'):>7}{queries:>12.3g}{wall:>9.0f}"
                     f"  {note}")
    return "\n".join(lines)


def reproduce(out: str | Path, quick: bool = False, seeds: int = 3, first_seed: int = 0,
              json_path: str | Path | None = None, endpoint: str | None = None,
              only: list[str] | None = None, mnist_dir: str | Path | None = None,
              progress: bool = True, budget: Budget | None = None,
              resume: bool = False) -> dict[str, Any]:
    """Run the experiments for seeds ``first_seed .. first_seed + seeds - 1``; ``only``
    filters by prefixes of ``Experiment.key`` (``select``); ``budget`` (default ``QUICK``
    if ``quick``, else ``FULL``) sizes each run. ``resume``: a run whose folder has its
    ``summary.json`` is taken as it is, the others continue from their checkpoints."""
    chosen = select(only)
    budget = budget or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    path = Path(json_path) if json_path else out / "results.json"

    def write() -> dict[str, Any]:
        report = {"quick": quick, "seeds": seeds,
                  "wall_s": round(time.perf_counter() - started, 1), "results": results,
                  "table": table(results)}
        path.write_text(json.dumps(report, indent=2, default=float) + "\n")
        return report

    with daemon_endpoints([endpoint] if endpoint else None) as eps:
        for exp in chosen:
            for seed in range(first_seed, first_seed + seeds):
                run_dir = out / f"{exp.key.replace(':', '-')}-s{seed}"
                done = run_dir / "summary.json"
                if resume and done.exists():
                    summary = json.loads(done.read_text())
                else:
                    arch = default_arch(exp.task, exp.system, refine=exp.refine,
                                        epochs=budget.epochs.get(exp.task), **budget.twin)
                    summary = run_training(
                        task=exp.task, system=exp.system, mode=exp.mode, out=run_dir,
                        endpoints=eps, seed=seed, arch=arch, resume=resume,
                        subset=budget.subset if exp.task == "mnist" else None,
                        mnist_dir=mnist_dir, progress=progress)
                summary["run_dir"] = str(run_dir)
                summary["experiment"] = exp.key
                results.append(summary)
                print(f"{exp.key} seed {seed}: test "
                      f"{summary['test_accuracy']:.3f}, {summary['physical_queries']} queries, "
                      f"{summary['wall_s']:.0f} s", flush=True)
                write()
    report = write()
    print(report["table"])
    return report


def combine(paths: list[str | Path], json_path: str | Path,
            only: list[str] | None = None) -> dict[str, Any]:
    """One report from several ``reproduce`` result files (processes run side by side);
    ``only`` keeps the results whose experiment key starts with one of these prefixes
    (``select``'s ``UnknownExperiment`` for a prefix no experiment has).

    ``results`` are concatenated; ``seeds`` is the most runs of any one experiment;
    ``wall_s`` is the longest part's (they ran concurrently);
    ``parts`` keeps each file's path, wall time and experiments. Writes ``json_path`` and
    prints the table.
    """
    select(only)
    parts = [json.loads(Path(p).read_text()) for p in paths]
    results = [r for part in parts for r in part["results"]
               if not only or any(experiment_key(r).startswith(o) for o in only)]
    per_experiment = collections.Counter(experiment_key(r) for r in results)
    report = {"quick": any(p["quick"] for p in parts),
              "seeds": max(per_experiment.values(), default=0),
              "wall_s": max(p["wall_s"] for p in parts),
              "parts": [{"path": str(path), "wall_s": part["wall_s"],
                         "runs": len(part["results"])} for path, part in zip(paths, parts,
                                                                           strict=True)],
              "results": results, "table": table(results)}
    Path(json_path).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(report["table"])
    return report
