"""``run(...)``: the command line of one benchmark: its options and ``--json PATH``; prints its
figures with ``machine`` (CPU count, 1-minute load average before and after the run: other
processes on the machine skew every timing; ``null`` where the OS keeps none, as on Windows)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``--quick``: timed seconds per part (a smoke test).
QUICK_SECONDS = 0.5


def add_duration(p: argparse.ArgumentParser, default_s: float, per: str, quick: str) -> None:
    """The options of a benchmark timed for a while per part: ``--seconds`` (wall time per
    ``per``) and ``--quick`` (``quick``; ``QUICK_SECONDS`` each); read them with ``seconds``."""
    p.add_argument("--seconds", type=float, default=default_s,
                   help=f"wall time spent per {per} (default {default_s:g})")
    p.add_argument("--quick", action="store_true", help=f"{quick} (a smoke test)")


def seconds(args: argparse.Namespace) -> float:
    """The timed seconds per part that ``add_duration``'s options ask for."""
    return QUICK_SECONDS if args.quick else args.seconds


def run(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
        main: Callable[[argparse.Namespace], dict[str, Any]],
        argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    add_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    before = load_1min()
    figures = main(args)
    figures["machine"] = {"cpus": os.cpu_count(), "load_1min_before": before,
                          "load_1min_after": load_1min()}
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


def load_1min() -> float | None:
    """The 1-minute load average, to two decimals; ``None`` where there is none (Windows)."""
    getloadavg = getattr(os, "getloadavg", None)
    return round(getloadavg()[0], 2) if getloadavg is not None else None
