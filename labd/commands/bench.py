"""``labd bench NAME``: run one benchmark of ``labd.bench`` and print (or save) its figures.

Benchmarks are found by module: every ``labd.bench.NAME`` module with ``DESCRIPTION``,
``add_arguments(parser)`` and ``main(args) -> dict`` becomes ``labd bench NAME``. Every
benchmark's figures get ``machine``: the CPU count and the 1-minute load average before and
after the run (other processes on the machine skew every timing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
from pathlib import Path
from typing import Any

import labd.bench


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark",
                       description="Run a benchmark and print its figures.")
    benches = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for info in sorted(pkgutil.iter_modules(labd.bench.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"labd.bench.{info.name}")
        b = benches.add_parser(info.name, help=module.DESCRIPTION,
                               description=module.DESCRIPTION)
        module.add_arguments(b)
        b.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
        b.set_defaults(func=run, bench_main=module.main)


def run(args: argparse.Namespace) -> int:
    before = os.getloadavg()[0]
    figures: dict[str, Any] = args.bench_main(args)
    # Other processes on the machine skew every timing: say how loaded it was.
    figures["machine"] = {"cpus": os.cpu_count(), "load_1min_before": round(before, 2),
                          "load_1min_after": round(os.getloadavg()[0], 2)}
    width = max(map(len, figures), default=0)
    for key, value in figures.items():
        if isinstance(value, list | dict):  # tables: the benchmark printed them; see --json
            shown = f"({len(value)} entries)"
        else:
            shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0
