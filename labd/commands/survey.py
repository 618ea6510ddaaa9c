"""``labd survey``: measure one random batch on every system of a daemon and tabulate it.

A quick health check of a rig: shapes, output ranges, the repeat noise (two measurements of the
same batch) and the throughput of each system. Without ``--endpoint`` it starts a local daemon
on ``--config FILE`` (default: the embedded configuration, the simulated rigs) and stops it
afterwards.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from labd.client import LabClient
from labd.daemon.process import LocalDaemon


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("survey", help="measure a random batch on every system, tabulate it",
                       description=__doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--endpoint", help="daemon control endpoint (default: a local daemon)")
    where.add_argument("--config", metavar="FILE",
                       help="start the local daemon on this configuration (default: the "
                            "embedded one)")
    p.add_argument("--batch", type=int, default=64, help="shots per system (default 64)")
    p.set_defaults(func=run)


def survey(endpoint: str, batch: int, seed: int = 0) -> list[dict]:
    """One random batch through every system: shapes, value ranges and the repeat noise."""
    rng = np.random.default_rng(seed)
    rows = []
    with LabClient(endpoint, timeout_s=120) as client:
        for name in client.hello()["systems"]:
            d = client.describe(name)
            x = rng.uniform(*d["input_range"], (batch, d["input_dim"])).astype(np.float32)
            theta = rng.uniform(*d["param_range"], d["param_dim"]).astype(np.float32)
            started = time.perf_counter()
            first = client.measure(name, x, theta)
            wall = time.perf_counter() - started
            again = client.forward(name, x, theta)
            spread = float(np.std(again - first.y) / (np.std(first.y) + 1e-12))
            rows.append({"system": name, "kind": d["kind"], "simulated": d["simulated"],
                         "x": f"{batch}x{d['input_dim']}", "theta": d["param_dim"],
                         "y": "x".join(map(str, first.y.shape)),
                         "y_min": float(first.y.min()), "y_max": float(first.y.max()),
                         "repeat_diff": spread, "wall_ms": 1e3 * wall,
                         "shots_per_s": batch / max(first.elapsed_s, 1e-9)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'system':<11}{'kind':<11}{'x':>9}{'theta':>6}{'y':>8}{'y range':>20}"
          f"{'repeat diff':>12}{'wall ms':>9}{'shots/s':>10}")
    for r in rows:
        span = f"[{r['y_min']:.3g}, {r['y_max']:.3g}]"
        print(f"{r['system']:<11}{r['kind']:<11}{r['x']:>9}{r['theta']:>6}{r['y']:>8}"
              f"{span:>20}{r['repeat_diff']:>12.3f}{r['wall_ms']:>9.1f}{r['shots_per_s']:>10.0f}")
    print("repeat diff: std of (second - first measurement of the same batch) / std of y")


def run(args: argparse.Namespace) -> int:
    if args.endpoint:
        print_table(survey(args.endpoint, args.batch))
        return 0
    print(f"starting a local labd on {args.config or 'the embedded default (simulated rigs)'}"
          "...")
    with LocalDaemon(config=args.config) as daemon:
        print(f"daemon at {daemon.endpoint}; {args.batch} shots on every system")
        print_table(survey(daemon.endpoint, args.batch))
    print("daemon stopped cleanly")
    return 0
