"""``labd plugins``: every driver, bench and nominal model installed, and what failed to load.

Lists the entry points of the ``labd.drivers``, ``labd.benches`` and ``labd.physics`` groups
(``drivers.plugins``) with the class each names and the distribution that declares it, after
importing each one; then every entry point that failed to load, with its error. Exit code 1 if
one failed. ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json

from drivers import plugins

TITLES = {"driver": "drivers", "bench": "simulated benches", "physics": "nominal models"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list the drivers, benches and nominal models found",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = plugins.survey()
    failed = [f for rows in found.values() for f in rows if f.error]
    if args.json:
        print(json.dumps({kind: [{"name": f.plugin.name, "target": f.plugin.target,
                                  "distribution": f.plugin.distribution, "error": f.error}
                                 for f in rows] for kind, rows in found.items()}, indent=2))
        return 1 if failed else 0
    for kind, rows in found.items():
        print(f"{TITLES[kind]} ({plugins.GROUPS[kind]}):")
        width = max((len(f.plugin.name) for f in rows), default=0)
        for f in rows:
            mark = "  FAILED" if f.error else ""
            print(f"  {f.plugin.name:<{width}}  {f.plugin.target}  "
                  f"[{f.plugin.distribution or '?'}]{mark}")
        if not rows:
            print("  (none)")
    if failed:
        print(f"{len(failed)} entry point(s) failed to load:")
        for f in failed:
            print(f"  {f.error}")
        return 1
    print('A configuration names these, or any class as "package.module:Class" '
          "(see docs/plugins.md).")
    return 0
