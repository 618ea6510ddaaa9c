"""``labd config``: print the embedded default configuration, or check a configuration file.

``--check PATH`` builds everything ``labd serve`` would, short of opening the instruments: the
file is validated, every driver, bench and nominal model it names is loaded and checked against
its interface and its constructor's signature, the drive's limits against the encoding, and
each nominal model is made and run once on the middle of the system's ranges. Every problem
is listed; the exit code is 2 if there is one.
"""

from __future__ import annotations

import argparse
from typing import Any

from labd.config import ConfigError, default_config_text, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the default config or check a config file",
                       description="Without arguments, print the embedded default "
                                   "configuration (a starting point for a lab's own file: "
                                   "`labd config > rig.toml`). With --check PATH, build every "
                                   "system of a file without opening any instrument, and list "
                                   "its systems or every problem found.")
    p.add_argument("--check", metavar="PATH", help="check this configuration file")
    p.set_defaults(func=run)


def _nominal_problem(system: Any) -> str | None:
    """Why the system's nominal model cannot be made and run once here, or None."""
    import torch

    from drivers.physics.nominal import NominalModel, build_physics
    from drivers.plugins import PluginError

    m = system.mapping
    try:
        model = NominalModel(m, build_physics(system.nominal["model"], m, system.config.physics))
        x = torch.full((1, m.input_dim), sum(m.input_range) / 2)
        theta = torch.full((m.param_dim,), sum(m.param_range) / 2)
        with torch.no_grad():
            y = model(x, theta)
    except PluginError as exc:
        return f"nominal: {exc}"
    except Exception as exc:  # noqa: BLE001 - whatever a plugin's forward raises is reported
        return f"nominal: model {system.nominal['model']!r} fails on this system: " \
               f"{type(exc).__name__}: {exc}"
    if tuple(y.shape) != (1, m.output_dim):
        return f"nominal: model {system.nominal['model']!r} gives y of shape {list(y.shape)}, " \
               f"expected [1, {m.output_dim}]"
    return None


def _line(name: str, system: Any) -> str:
    m, c = system.mapping, system.config
    nominal = system.nominal["model"] if system.nominal else "none"
    bench = f", bench {type(system.drive.bench).__name__}" if system.simulated else ""
    return (f"{name}: {c.kind}, x {m.input_dim} -> y {m.output_dim}, theta {m.param_dim}, "
            f"drive {c.drive.driver} (limits {list(system.drive.limits)}), detector "
            f"{c.detector.driver} ({system.detector.samples} samples){bench}, nominal model "
            f"{nominal}")


def check(path: str) -> int:
    from labd.daemon.system import try_build

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc)
        return 2
    systems, problems = try_build(config)
    for name, system in systems.items():
        problem = _nominal_problem(system) if system.nominal else None
        if problem:
            problems.append(f"systems.{name}.{problem}")
    if problems:
        print(f"{path}: {len(problems)} problem(s); nothing was opened:")
        for problem in problems:
            print(f"  {problem}")
        return 2
    for name, system in systems.items():
        print(_line(name, system))
    print(f"{path}: OK (every system built; no instrument opened)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.check is None:
        print(default_config_text(), end="")
        return 0
    return check(args.check)
