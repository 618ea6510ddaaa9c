"""The ``labd`` command. Each subcommand lives in a module of ``labd.commands`` that defines
``register(subparsers)``; this module finds them, parses the command line and runs the chosen
subcommand's ``func(args) -> exit code``.

Terminal output: log lines go to stderr whole, above any progress bar (tqdm's logging
redirect); a command's progress bars (its ``--no-progress`` option) are on only when stderr
is a terminal, so that a pipe or a log file gets log lines and no bar redrawn in place.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import pkgutil
import sys

import labd.commands
from labd import __version__
from labd.client import LabError
from labd.daemon.process import DaemonStartError


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


def _logging_above_bars(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """tqdm's logging redirect when the command shows progress bars, else nothing."""
    if getattr(args, "no_progress", True):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if hasattr(args, "no_progress") and not (sys.stderr and sys.stderr.isatty()):
        args.no_progress = True
    try:
        with _logging_above_bars(args):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (LabError, DaemonStartError) as exc:  # a daemon unreachable, refusing, or not starting
        logging.getLogger("labd").debug("labd %s failed", args.command, exc_info=exc)
        print(f"labd {args.command}: {exc}", file=sys.stderr)
        return 1
