"""``python -m labd.web ARGS`` is ``labd web ARGS`` (plus ``--log-level``), without loading
the other commands: how ``labd serve --http`` starts its monitor, sooner and lighter."""

from __future__ import annotations

import argparse
import logging
import sys

from labd.commands import web


def main(argv: list[str] | None = None) -> int:
    sub = argparse.ArgumentParser(prog="python -m labd").add_subparsers()
    web.register(sub)
    parser = sub.choices["web"]
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
