"""``labd status``: a running daemon's systems and counters."""

from __future__ import annotations

import argparse
import json

from labd.client import LabClient, LabError, Unreachable
from protocols.v1 import DEFAULT_CONTROL_ENDPOINT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a daemon's systems and counters",
                       description="Ask a running daemon for its status and print it.")
    p.add_argument("--endpoint", default=DEFAULT_CONTROL_ENDPOINT,
                   help=f"daemon control endpoint (default {DEFAULT_CONTROL_ENDPOINT})")
    p.add_argument("--json", action="store_true", help="print the raw status reply as JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with LabClient(args.endpoint, timeout_s=args.timeout, retries=0) as client:
        try:
            hello = client.hello()
            status = client.status()
        except Unreachable as exc:
            print(f"labd status: {exc}")
            return 1
        except LabError as exc:
            print(f"labd status: {args.endpoint}: {exc}")
            return 1
    if args.json:
        print(json.dumps({"hello": hello, "status": status}, indent=2))
        return 0
    print(f"{hello['server']} {hello['version']} at {args.endpoint}, up "
          f"{status['uptime_s']:.0f} s, protocols {hello['protocols']}")
    print(f"{'system':<14}{'state':<8}{'queued':>8}{'served':>10}{'errors':>8}")
    for name, s in status["systems"].items():
        print(f"{name:<14}{s['state']:<8}{s['queued']:>8}{s['served']:>10}{s['errors']:>8}")
    return 0
