"""``labd serve``: serve physical forward queries over ZeroMQ (protocol v1) until stopped.

Without --config it serves the embedded default: every simulated system, in fast timing, plus
the loopback diagnostic. Stop it with Ctrl-C (or SIGTERM on Linux and macOS, Ctrl-Break on
Windows: ``labd.daemon.process.stop_signals``); with --exit-with-parent it also stops when the
process that started it exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from labd.commands.web import PageError, PageProcess, add_http_arguments
from labd.config import ConfigError, DaemonConfig, load_config
from labd.daemon.process import stop_signals

if TYPE_CHECKING:
    import psutil

    from labd.daemon.system import PhysicalSystem

log = logging.getLogger("labd.serve")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the daemon", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH",
                   help="TOML configuration (default: the embedded one; see `labd config`)")
    p.add_argument("--bind", metavar="ENDPOINT",
                   help="control endpoint, overriding the config (default tcp://127.0.0.1:5555)")
    p.add_argument("--events", metavar="ENDPOINT",
                   help="event (PUB) endpoint, overriding the config; empty string disables it")
    p.add_argument("--store", metavar="PATH",
                   help="measurement store file, overriding the config; empty string records "
                        "nothing")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --bind without CURVE keys (anyone who can reach "
                        "the port can drive the instruments)")
    p.add_argument("--exit-with-parent", nargs="?", type=int, const=0, default=None,
                   metavar="PID",
                   help="stop cleanly when the process that started this daemon exits (how "
                        "`labd train` and the tests start their local daemons, so that a killed "
                        "trainer leaves no daemon behind); PID, if given, is that process's pid, "
                        "so that it is noticed even if it died while the daemon was starting")
    add_http_arguments(p, None)
    p.set_defaults(func=run)


def stop_with_parent(stop: Callable[[], None], parent: int, poll_s: float = 0.5,
                     what: str = "daemon") -> threading.Thread:
    """Call ``stop`` once process ``parent`` (the one that started this one) has exited; at
    once if it had already: no such process, a zombie, or its pid taken by a process started
    after this one. The same on every platform (psutil): Windows never re-parents an orphan, so
    ``os.getppid()`` would not tell."""
    import psutil

    def watch() -> None:
        try:
            starter = psutil.Process(parent)
            if starter.create_time() > psutil.Process().create_time():
                starter = None  # the pid of a process newer than this one: the starter is gone
        except psutil.Error:
            starter = None
        while starter is not None and _running(starter):
            time.sleep(poll_s)
        log.warning("the process that started this %s (pid %d) has exited; stopping",
                    what, parent)
        stop()

    thread = threading.Thread(target=watch, name="labd-parent-watch", daemon=True)
    thread.start()
    return thread


def _running(process: psutil.Process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(args: argparse.Namespace) -> int:
    from labd.daemon.system import build_systems

    try:  # everything built before anything is bound or recorded: no half-started daemon
        config = load_config(args.config)
        systems = build_systems(config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    server = config.server.model_copy(update={
        k: v for k, v in (("control", args.bind), ("events", args.events)) if v is not None})
    store_config = config.store.model_copy(
        update={"path": args.store} if args.store is not None else {})
    security = config.security.model_copy(
        update={"insecure": True} if args.insecure else {})
    config = config.model_copy(update={"server": server, "store": store_config,
                                      "security": security})
    page = None
    try:
        if args.http:  # the monitor page, a child process: docs/monitor.md
            page = PageProcess(args, config)
        return _serve(args, config, systems, page)
    except PageError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if page is not None:
            page.stop()


def _serve(args: argparse.Namespace, config: DaemonConfig,
           systems: dict[str, PhysicalSystem], page: PageProcess | None) -> int:
    """Run the daemon (``page``: its monitor, starting; bound only once the page listens)."""
    from labd.daemon.server import Daemon, InsecureBind

    store = None
    if config.store.path:
        from labd.daemon.recording import open_store
        from labd.store.database import SchemaError, StoreError

        try:
            store = open_store(config.store)
        except (StoreError, SchemaError, OSError) as exc:
            log.error("cannot open the measurement store %s: %s", config.store.path, exc)
            return 2
    daemon = Daemon(config, store, systems)
    if page is not None:
        page.wait_ready()
    try:
        daemon.bind()
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s (is another labd running? use --bind)",
                  config.server.control, exc)
        return 2
    except (InsecureBind, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    for sig in stop_signals():
        signal.signal(sig, lambda *_: daemon.stop())
    if args.exit_with_parent is not None:
        stop_with_parent(daemon.stop, args.exit_with_parent or os.getppid())
    # A worker computing in Python holds the GIL for up to the switch interval (5 ms by
    # default) before the server thread may answer; 1 ms keeps hello/status and other systems
    # responsive while a simulated system computes.
    sys.setswitchinterval(0.001)
    daemon.serve()
    return 0
