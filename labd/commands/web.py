"""``labd web``: a read-only monitor page and Prometheus ``/metrics`` of a running daemon.

Also ``PageProcess``: how ``labd serve --http`` starts the same monitor as a child process (the
design, and why it is a separate process: ``docs/monitor.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import subprocess
import sys
import threading

from labd.client import curve_keys
from labd.config import DaemonConfig
from protocols.v1 import DEFAULT_CONTROL_ENDPOINT

log = logging.getLogger("labd.web")

DEFAULT_HTTP = "127.0.0.1:5557"
#: Seconds ``labd serve --http`` waits for its monitor to listen.
START_TIMEOUT_S = 60.0


def add_http_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    """The monitor page's options (of ``labd web`` and ``labd serve``)."""
    g = p.add_argument_group("monitor page (read-only; see docs/monitor.md)")
    g.add_argument("--http", metavar="HOST:PORT", default=default,
                   help="serve the monitor page and /metrics there"
                        + (f" (default {default})" if default else "")
                        + "; port 0 picks a free one; the URL is logged at start")
    g.add_argument("--http-token-file", metavar="FILE",
                   help="a file holding the page's token (at least 16 characters): needed on a "
                        "non-loopback --http unless --insecure; open /?token=TOKEN once, "
                        "Prometheus sends it as a bearer token")
    g.add_argument("--runs", metavar="DIR", action="append", default=[],
                   help="show the training runs in DIR (labd train's run folders, up to three "
                        "levels down); repeatable")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "web", help="serve a read-only monitor page and /metrics of a daemon",
        description="Watch a running daemon from a browser: every system's state, queue, "
                    "rates, busy fraction, faults and clients, the last measurement as a plot, "
                    "the store, training runs; and Prometheus metrics at /metrics. Read-only: "
                    "the page offers no control action.")
    p.add_argument("--endpoint", default=DEFAULT_CONTROL_ENDPOINT,
                   help=f"the daemon's control endpoint (default {DEFAULT_CONTROL_ENDPOINT})")
    add_http_arguments(p, DEFAULT_HTTP)
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --http without a token (anyone who can reach the "
                        "port sees the rig's measurements)")
    p.add_argument("--server-key", metavar="FILE",
                   help="the daemon's public key (server.key), for a daemon with CURVE")
    p.add_argument("--key", metavar="FILE",
                   help="this client's secret key file (NAME.key_secret, on the daemon's "
                        "allow-list), for a daemon with CURVE")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls of the daemon (default 1)")
    p.add_argument("--exit-with-parent", nargs="?", type=int, const=0, default=None,
                   metavar="PID", help="stop when process PID (default: the parent) exits")
    p.set_defaults(func=run)


def parse_http(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ``ValueError`` if malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:5557 (port 0 picks "
                         f"a free one)")
    return host, int(port)


def read_token(path: str) -> str:
    """The token in file ``path``; ``ValueError`` if it is shorter than 16 characters."""
    token = open(path, encoding="utf-8").read().strip()  # noqa: SIM115 (read at once)
    if len(token) < 16 or any(c.isspace() or c in ';,"' for c in token):
        raise ValueError(f"{path}: the token must be at least 16 characters without spaces, "
                         f"quotes, commas or semicolons (e.g. `python -c 'import secrets; "
                         f"print(secrets.token_urlsafe())' > {path}`)")
    return token


def _settings(args: argparse.Namespace) -> tuple[str, int, str | None, dict[str, bytes] | None]:
    """(host, port, token, curve keys) from the arguments; ``ValueError``/``OSError`` if bad."""
    from labd.web.server import check_exposure

    host, port = parse_http(args.http)
    token = read_token(args.http_token_file) if args.http_token_file else None
    check_exposure(host, token, args.insecure)
    if (args.server_key is None) != (args.key is None):
        raise ValueError("for a daemon with CURVE give both --server-key and --key")
    curve = curve_keys(args.server_key, args.key) if args.key else None
    return host, port, token, curve


def run(args: argparse.Namespace) -> int:
    from labd.commands.serve import stop_with_parent
    from labd.daemon.process import stop_signals
    from labd.web.runs import RunWatch
    from labd.web.server import Monitor, MonitorServer
    from labd.web.watch import DaemonWatch

    try:
        host, port, token, curve = _settings(args)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    watch = DaemonWatch(args.endpoint, args.interval, curve=curve)
    try:
        server = MonitorServer((host, port), Monitor(watch, RunWatch(args.runs)), token)
    except OSError as exc:
        log.error("cannot listen on %s: %s (another monitor there? choose another --http)",
                  args.http, exc)
        return 2
    watch.start()
    log.info("monitor page of %s at %s (Prometheus metrics at %smetrics)%s", args.endpoint,
             server.url, server.url, " (token required)" if token else "")
    print(server.url, flush=True)  # how `labd serve --http` learns the address
    stop = threading.Event()
    for sig in stop_signals():
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_parent is not None:
        stop_with_parent(stop.set, args.exit_with_parent or os.getppid(), what="monitor")
    serving = threading.Thread(target=server.serve_forever, name="labd-web-http", daemon=True)
    serving.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    watch.stop()
    log.info("monitor stopped")
    return 0


def connect_endpoint(bound: str) -> str:
    """Where a local client reaches a daemon bound at ``bound`` (a wildcard host becomes
    loopback)."""
    scheme, _, rest = bound.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{scheme}://{host}:{port}" if scheme == "tcp" else bound


class PageError(RuntimeError):
    """The monitor page of ``labd serve --http`` cannot start (the message says why)."""


class PageProcess:
    """``labd web`` for the daemon ``config`` describes, started as a child process that stops
    with this one (how ``labd serve --http`` serves the page). ``PageError`` when the
    daemon's security needs a client key the child would not have."""

    def __init__(self, args: argparse.Namespace, config: DaemonConfig) -> None:
        if config.security.curve:
            raise PageError(
                "--http with [security] curve: the page's process is a client of the daemon "
                "and needs a key on its allow-list; run `labd web --endpoint ... --server-key "
                "... --key ...` beside the daemon instead")
        self.http = args.http
        command = [sys.executable, "-m", "labd.web", "--log-level", args.log_level,
                   "--endpoint", connect_endpoint(config.server.control), "--http", args.http,
                   "--exit-with-parent", str(os.getpid())]
        command += ["--http-token-file", args.http_token_file] if args.http_token_file else []
        command += [a for d in args.runs for a in ("--runs", d)]
        command += ["--insecure"] if args.insecure else []
        self.child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: self._lines.put(self.child.stdout.readline()),
                         daemon=True).start()

    def wait_ready(self) -> str:
        """The page's URL once it listens; ``PageError`` if it could not start."""
        try:
            url = self._lines.get(timeout=START_TIMEOUT_S).strip()
        except queue.Empty:
            url = ""
        if not url:
            self.stop()
            raise PageError(f"the monitor page did not start on {self.http} (see above)")
        return url

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(10)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
