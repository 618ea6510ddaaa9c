"""``labd config``: print the embedded default configuration, or check a configuration file."""

from __future__ import annotations

import argparse

from labd.config import ConfigError, default_config_text, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the default config or check a config file",
                       description="Without arguments, print the embedded default "
                                   "configuration (a starting point for a lab's own file). "
                                   "With --check PATH, validate a file and list its systems.")
    p.add_argument("--check", metavar="PATH", help="validate this configuration file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check is None:
        print(default_config_text(), end="")
        return 0
    try:
        config = load_config(args.check)
    except ConfigError as exc:
        print(exc)
        return 2
    for name, system in config.systems.items():
        print(f"{name}: {system.kind}, x {system.input_dim} -> y {system.output_dim}, "
              f"theta {system.param_dim}, drive {system.drive.driver}, detector "
              f"{system.detector.driver}")
    return 0
