"""Run the protocol emulators of one rig as a process.

    python -m drivers.emulators.scpi_server --rig oscillator --port 0 --seed 1
    python -m drivers.emulators.scpi_server --config examples/oscillator-emulated.toml \\
        --system oscillator

starts the instruments of the rig (``--front``, default by kind: oscillator and loopback: an
AWG and a scope on TCP; shg: a pulse shaper on a pty and an OSA on TCP; plate: a serial DAQ on
a pty) around one simulated bench, and prints one JSON line on stdout naming each instrument's
address, e.g. ``{"rig": "oscillator", "pid": 123, "awg": "TCPIP::127.0.0.1::40611::SOCKET",
"scope": "TCPIP::127.0.0.1::40613::SOCKET"}``. ``--port P`` puts the TCP instruments on ports
P, P+1...; 0 picks free ports.

Faults for tests: SIGUSR1 toggles "stop answering" (every instrument reads and drops commands),
SIGUSR2 drops every TCP connection (POSIX only: Windows has neither signal). SIGTERM or SIGINT
stop the process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

from drivers.emulators.keysight import wire_awg_scope
from drivers.emulators.pty_server import DaqModel, NoPty, PtyServer, ShaperModel
from drivers.emulators.rig import EmulatedRig, load_rig
from drivers.emulators.scpi import TcpServer
from drivers.emulators.yokogawa import OsaModel

DEFAULT_FRONTS = {"oscillator": "awg,scope", "loopback": "awg,scope", "shg": "shaper,osa",
                  "plate": "daq"}


class Emulators:
    """The instruments of one rig: ``addresses`` name -> VISA address or pty path."""

    def __init__(self, rig: EmulatedRig, fronts: list[str], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.rig = rig
        self.tcp = TcpServer(host)
        self.ptys: list[PtyServer] = []
        self.addresses: dict[str, str] = {}
        self.models: dict[str, object] = {}
        tcp_models = {}
        if "awg" in fronts or "scope" in fronts:
            tcp_models["awg"], tcp_models["scope"] = wire_awg_scope(rig)
        if "osa" in fronts:  # sweeps last as long as the instrument's when in real time
            tcp_models["osa"] = OsaModel(rig, 1.0 if rig.bench.timing == "realtime" else 0.05)
        for i, front in enumerate(f for f in fronts if f in tcp_models):
            self.models[front] = tcp_models[front]
            self.addresses[front] = self.tcp.serve(tcp_models[front], port + i if port else 0)
        for front, model_cls in (("shaper", ShaperModel), ("daq", DaqModel)):
            if front in fronts:
                pty = PtyServer(model_cls(rig))
                self.ptys.append(pty)
                self.models[front] = pty.model
                self.addresses[front] = pty.path
        unknown = set(fronts) - set(self.addresses)
        if unknown:
            self.close()
            raise ValueError(f"unknown front ends {sorted(unknown)}; known: awg, scope, osa, "
                             "shaper, daq")

    @property
    def muted(self) -> bool:
        return self.tcp.muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self.tcp.muted = value
        for pty in self.ptys:
            pty.muted = value

    def drop(self) -> None:
        self.tcp.drop()

    def close(self) -> None:
        self.tcp.close()
        for pty in self.ptys:
            pty.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rig", help="a system of drivers/emulators/rigs.toml")
    parser.add_argument("--config", help="a labd configuration file to read the system from")
    parser.add_argument("--system", help="the system's name in --config")
    parser.add_argument("--front", help="comma-separated front ends: awg,scope,osa,shaper,daq")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", choices=("fast", "realtime"), default="fast")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    name = args.system or args.rig or "oscillator"
    rig = load_rig(name, args.config, args.seed, args.timing)
    fronts = (args.front or DEFAULT_FRONTS.get(rig.kind, "awg,scope")).split(",")
    try:
        emulators = Emulators(rig, fronts, args.host, args.port)
    except NoPty as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    stop = threading.Event()

    def toggle(*_: object) -> None:
        emulators.muted = not emulators.muted

    if hasattr(signal, "SIGUSR1"):  # (not on Windows)
        signal.signal(signal.SIGUSR1, toggle)
        signal.signal(signal.SIGUSR2, lambda *_: emulators.drop())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(json.dumps({"rig": name, "kind": rig.kind, "bench": type(rig.bench).__name__,
                      "pid": os.getpid(), **emulators.addresses}), flush=True)
    while not stop.wait(0.2):
        pass
    emulators.close()


if __name__ == "__main__":
    main()
