"""Run the emulated hardware of one rig that a lab drives through a vendor library.

    python -m drivers.emulators.hardware_server --config examples/plate-nidaq.toml --speed 20

reads the system (``--system``, default the only one) from a labd configuration whose drive
and detector use the ``nidaqmx.*``, ``sounddevice.*`` or ``seabreeze.*`` drivers, builds the
emulated instruments those drivers expect (``drivers.emulators.hardware``) around the system's
simulated bench, wired as the configuration says (the NI channels, the sound card's output,
input and loopback channels, the spectrometer's wavelength window; a ``serial.pulse_shaper``
drive gets a pulse-shaper emulator on a pty), and prints one JSON line, e.g.
``{"emulator": "/tmp/labd-emulator-x1y2/bus", "pid": 4242}`` (plus ``"shaper": "/dev/pts/7"``).

A daemon then runs against it with the fake vendor libraries first on its path::

    LABD_EMULATOR=/tmp/labd-emulator-x1y2/bus PYTHONPATH=drivers/emulators/vendor \\
        labd serve --config examples/plate-nidaq.toml

(``python -m drivers.emulators.rehearse --config ...`` does both). ``--speed`` runs the
hardware's clock faster than wall time (default 1: real time). SIGTERM or SIGINT stop it, and
so does the exit of the process that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
from typing import Any

import psutil

from drivers.emulators.bus import serve
from drivers.emulators.hardware import Clock, DaqCard, FlameSpectrometer, MaskLog, SoundCard
from drivers.emulators.pty_server import NoPty, PtyServer, ShaperModel
from drivers.emulators.rig import EmulatedRig, load_rig, systems_of


def _options(system: dict[str, Any]) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """The drive's and detector's driver names and options, from a system's table."""
    drive, detector = dict(system["drive"]), dict(system["detector"])
    return drive.pop("driver"), drive, detector.pop("driver"), detector


def _channel(option: str) -> tuple[str, str]:
    """``"Dev1/ao0"`` -> ``("Dev1", "ao0")``."""
    device, _, channel = str(option).partition("/")
    return device, channel


def build(rig: EmulatedRig, clock: Clock) -> tuple[dict[str, Any], dict[str, PtyServer]]:
    """The devices the rig's drivers talk to (bus name -> device) and any pty instruments
    started beside them (name -> server; ``server.path`` is the port to open)."""
    drive, drive_opts, detector, detector_opts = _options(rig.table)
    devices: dict[str, Any] = {}
    ptys: dict[str, PtyServer] = {}
    if drive.startswith("nidaqmx.") or detector.startswith("nidaqmx."):
        name, ao = _channel(drive_opts.get("channel", "Dev1/ao0"))
        _, ai = _channel(detector_opts.get("channel", "Dev1/ai0"))
        devices["nidaqmx"] = DaqCard(rig, clock, name, ao, ai)
    if drive.startswith("sounddevice.") or detector.startswith("sounddevice."):
        reference = detector_opts.get("reference", (2, 2))  # (the driver's default cable)
        devices["sounddevice"] = SoundCard(rig, clock, int(drive_opts.get("channel", 1)),
                                           int(detector_opts.get("channel", 1)),
                                           (int(reference[0]), int(reference[1])))
    if detector.startswith("seabreeze."):
        rig.bench.noise = 0.0  # the spectrometer adds its own shot and read noise
        log = MaskLog(rig, clock)
        window = (float(detector_opts["start_nm"]), float(detector_opts["stop_nm"]))
        devices["seabreeze"] = FlameSpectrometer(
            log, clock, window, str(detector_opts.get("serial", "FLMS04211")))
        if drive == "serial.pulse_shaper":
            ptys["shaper"] = PtyServer(ShaperModel(log))  # type: ignore[arg-type]
    if not devices:
        raise SystemExit(f"system {rig.name!r} uses no vendor-library driver "
                         f"({drive}, {detector}); see drivers.emulators.scpi_server")
    return devices, ptys


def starter_runs(starter: psutil.Process) -> bool:
    """Whether the process that started this one still runs: on POSIX this process is
    re-parented when it exits; Windows never re-parents, so ask whether it runs (a reaped
    process, or its pid reused)."""
    return os.getppid() == starter.pid and starter.is_running()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drivers.emulators.hardware_server",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="labd configuration of the rig")
    p.add_argument("--system", help="system to emulate (default: the only one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bench's hidden device")
    p.add_argument("--speed", type=float, default=1.0,
                   help="hardware clock speed over wall time (default 1: real time)")
    p.add_argument("--bus", help="path of the bus socket (default: a fresh private one)")
    args = p.parse_args(argv)
    systems = systems_of(args.config)
    name = args.system or (next(iter(systems)) if len(systems) == 1 else None)
    if name is None:
        p.error(f"--system is needed: the configuration has {sorted(systems)}")
    rig = load_rig(name, args.config, seed=args.seed)
    try:
        devices, ptys = build(rig, Clock(args.speed))
    except NoPty as exc:
        p.exit(1, f"{p.prog}: {exc}\n")
    starter = psutil.Process(os.getppid())
    listener = serve(devices, args.bus)
    bus = listener.address
    addresses = {name: pty.path for name, pty in ptys.items()}
    print(json.dumps({"emulator": bus, "pid": os.getpid(), **addresses}),
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5) and starter_runs(starter):  # (a killed starter: stop too)
        pass
    listener.close()
    for pty in ptys.values():
        pty.close()
    if args.bus is None:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(bus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
