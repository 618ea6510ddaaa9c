"""The ``labd`` command. Each subcommand lives in a module of ``labd.commands`` that defines
``register(subparsers)``; this module finds them, parses the command line and runs the chosen
subcommand's ``func(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import labd.commands
from labd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labd",
        description="labd: a lab daemon serving physical forward queries over ZeroMQ, and a "
                    "physics-aware trainer for physical neural networks.",
        epilog="Run `labd COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"labd {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="logging verbosity on stderr (default: info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(labd.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"labd.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
