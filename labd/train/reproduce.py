"""``labd reproduce``: the paper's experiments on the stand-ins, as one table.

Experiments (each over ``seeds``): SHG vowels with PAT, in silico and twin-trained; plate
MNIST; oscillator MNIST; hybrid SHG + digital MNIST (all PAT). ``quick`` trains on MNIST
subsets with fewer epochs (a smoke test of the whole pipeline, not the paper's figures).

All runs use one local daemon (the embedded default configuration) unless ``endpoint`` is
given. Results: ``out/<system>-<task>-<mode>-s<seed>/`` run folders, ``out/results.json``
(or ``json_path``) with a ``results`` list (system, task, mode, seed, test_accuracy,
train_accuracy, physical_queries, wall_s, ...) and the printed table.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labd.train.run import daemon_endpoints, run_training


@dataclass(frozen=True)
class Experiment:
    task: str
    system: str
    mode: str
    label: str
    paper: str


EXPERIMENTS = [
    Experiment("vowels", "shg", "pat", "SHG, 5 layers", "93%"),
    Experiment("vowels", "shg", "insilico", "SHG, 5 layers", "~40%"),
    Experiment("vowels", "shg", "twin", "SHG, 5 layers", "-"),
    Experiment("mnist", "plate", "pat", "plate", "87%"),
    Experiment("mnist", "oscillator", "pat", "oscillator", "93%"),
    Experiment("mnist", "shg", "pat", "SHG + digital (hybrid)", "97%"),
]

#: quick mode: MNIST subset sizes (train, test) and an epoch cap.
QUICK_SUBSET = (6000, 1000)
QUICK_EPOCHS = {"vowels": 60, "mnist": 3}


def table(results: list[dict[str, Any]]) -> str:
    """Mean and spread over seeds per experiment, beside the paper's figure."""
    lines = [f"{'task':<7}{'system':<24}{'mode':<9}{'seeds':>5}{'test acc (mean±sd)':>21}"
             f"{'paper':>7}{'queries':>12}{'wall s':>9}  physical / digital"]
    for exp in EXPERIMENTS:
        rows = [r for r in results if (r["task"], r["system"], r["mode"])
                == (exp.task, exp.system, exp.mode)]
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
        lines.append(f"{exp.task:<7}{exp.label:<24}{exp.mode:<9}{len(rows):>5}"
                     f"{100 * statistics.mean(accs):>14.1f}% ±{100 * sd:4.1f}"
                     f"{exp.paper:>7}{queries:>12.3g}{wall:>9.0f}  {note}")
    return "\n".join(lines)


def reproduce(out: str | Path, quick: bool = False, seeds: int = 3,
              json_path: str | Path | None = None, endpoint: str | None = None,
              only: list[str] | None = None, mnist_dir: str | Path | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run the experiments; ``only`` filters by ``task:system:mode`` prefixes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    chosen = [e for e in EXPERIMENTS
              if not only or any(f"{e.task}:{e.system}:{e.mode}".startswith(o) for o in only)]
    with daemon_endpoints([endpoint] if endpoint else None) as eps:
        for exp in chosen:
            for seed in range(seeds):
                run_dir = out / f"{exp.system}-{exp.task}-{exp.mode}-s{seed}"
                summary = run_training(
                    task=exp.task, system=exp.system, mode=exp.mode, out=run_dir,
                    endpoints=eps, seed=seed,
                    epochs=QUICK_EPOCHS[exp.task] if quick else None,
                    subset=QUICK_SUBSET if quick and exp.task == "mnist" else None,
                    mnist_dir=mnist_dir, progress=progress)
                summary["run_dir"] = str(run_dir)
                results.append(summary)
                print(f"{exp.task} {exp.system} {exp.mode} seed {seed}: test "
                      f"{summary['test_accuracy']:.3f}, {summary['physical_queries']} queries, "
                      f"{summary['wall_s']:.0f} s", flush=True)
    report = {"quick": quick, "seeds": seeds, "wall_s": round(time.perf_counter() - started, 1),
              "results": results, "table": table(results)}
    path = Path(json_path) if json_path else out / "results.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(report["table"])
    return report
