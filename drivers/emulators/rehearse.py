"""Rehearse a rig that runs on a vendor library (NI-DAQmx, a sound card, an Ocean spectrometer)
without its hardware: the daemon runs the lab's own configuration with the real drivers, the
fake vendor libraries in their place, and emulated instruments with a simulated bench behind.

    python -m drivers.emulators.rehearse --config examples/plate-nidaq.toml [--speed 1]
        [--seed 0] [-- --bind tcp://127.0.0.1:5555 ...]

starts ``drivers.emulators.hardware_server`` for the configuration, then ``labd serve`` on it
(arguments after ``--`` go to ``labd serve``) with ``LABD_EMULATOR`` set and
``drivers/emulators/vendor`` first on ``PYTHONPATH``; a pulse shaper on a serial port is
pointed at the emulator's pty (in a copy of the configuration). Train against it as against the
rig (``labd train --endpoint ...``). Ctrl-C stops both.

The functions are what the tests use to do the same: ``start_hardware``, ``rehearsal_config``,
``daemon_env``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from drivers.emulators.rig import systems_of

VENDOR = Path(__file__).with_name("vendor")


def start_hardware(config: str | Path, system: str | None = None, seed: int = 0,
                   speed: float = 1.0) -> tuple[subprocess.Popen, dict[str, Any]]:
    """The hardware server process for ``config`` and what it printed (``emulator``, ...)."""
    args = [sys.executable, "-m", "drivers.emulators.hardware_server", "--config", str(config),
            "--seed", str(seed), "--speed", str(speed)]
    if system:
        args += ["--system", system]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.wait(10)
        raise RuntimeError(f"the hardware server for {config} exited with {proc.returncode}")
    return proc, json.loads(line)


def rehearsal_config(config: str | Path, info: dict[str, Any], out: str | Path) -> Path:
    """A copy of ``config`` at ``out`` whose pulse shaper's ``port`` is the emulator's pty."""
    text = Path(config).read_text()
    if "shaper" in info:
        for system in systems_of(config).values():
            port = system["drive"].get("port")
            if system["drive"].get("driver") == "serial.pulse_shaper" and port:
                text = text.replace(f'port = "{port}"', f'port = "{info["shaper"]}"')
    out = Path(out)
    out.write_text(text)
    return out


def daemon_env(info: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a daemon that imports the fakes and reaches the emulated hardware."""
    env = dict(os.environ if base is None else base)
    env["LABD_EMULATOR"] = info["emulator"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(VENDOR), env.get("PYTHONPATH")) if p)
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m drivers.emulators.rehearse",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--system")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        hardware, info = start_hardware(args.config, args.system, args.seed, args.speed)
    except RuntimeError as exc:  # (its own message, above, says why)
        p.exit(1, f"{p.prog}: {exc}\n")
    daemon = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # (runs the cleanup below)
    try:
        with tempfile.TemporaryDirectory(prefix="labd-rehearsal-") as tmp:
            config = rehearsal_config(args.config, info, Path(tmp) / Path(args.config).name)
            print(f"rehearsing {args.config} on emulated hardware ({info['emulator']})",
                  file=sys.stderr, flush=True)
            daemon = subprocess.Popen([sys.executable, "-m", "labd", "serve", "--config",
                                       str(config), "--exit-with-parent", *extra],
                                      env=daemon_env(info))
            return daemon.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        for proc in (daemon, hardware):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
