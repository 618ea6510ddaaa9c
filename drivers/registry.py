"""Names under which drivers and simulated benches are known to configuration files.

A system's ``drive`` and ``detector`` tables name a driver here (``driver = "sim.dac"``); a
simulated system's ``bench`` table makes the shared bench of its kind. ``build_rig`` turns those
tables into a ready (not yet opened) ``(Drive, Detector)`` pair. Modules are imported only when
named, so a back end's libraries are imported only by configurations that use it.

Driver constructors take ``name`` and, for drives, ``channels`` and ``limits``; for detectors,
``samples``; simulated drivers also take ``bench``; everything else comes from the config table.
"""

from __future__ import annotations

import importlib
from typing import Any

from drivers.base import Detector, Drive
from drivers.physics.encoding import Mapping

#: Registry name -> "module:Class".
DRIVERS: dict[str, str] = {
    "sim.dac": "drivers.sim.instruments:SimDAC",
    "sim.adc": "drivers.sim.instruments:SimADC",
    "sim.pulse_shaper": "drivers.sim.instruments:SimPulseShaper",
    "sim.spectrometer": "drivers.sim.instruments:SimSpectrometer",
    "keysight.33500b": "drivers.visa.keysight_33500b:Keysight33500B",
    "keysight.infiniivision": "drivers.visa.keysight_scope:KeysightInfiniiVision",
    "yokogawa.aq6370": "drivers.visa.yokogawa_aq6370:YokogawaAQ6370",
    "serial.pulse_shaper": "drivers.serial.pulse_shaper:SerialPulseShaper",
    "serial.daq_dac": "drivers.serial.serial_daq:SerialDaqDAC",
    "serial.daq_adc": "drivers.serial.serial_daq:SerialDaqADC",
    "nidaqmx.ao": "drivers.daqmx.analog:DaqmxAO",
    "nidaqmx.ai": "drivers.daqmx.analog:DaqmxAI",
    "sounddevice.output": "drivers.sound.card:SoundOutput",
    "sounddevice.input": "drivers.sound.card:SoundInput",
    "seabreeze.spectrometer": "drivers.ocean.spectrometer:OceanSpectrometer",
}

#: System kind -> "module:Class" of its simulated bench.
BENCHES: dict[str, str] = {
    "loopback": "drivers.sim.loopback:LoopbackBench",
    "shg": "drivers.sim.shg:ShgBench",
    "plate": "drivers.sim.plate:PlateBench",
    "oscillator": "drivers.sim.oscillator:OscillatorBench",
}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def driver_class(name: str) -> type:
    """The driver class registered as ``name``; ``KeyError`` lists the known names."""
    try:
        return _load(DRIVERS[name])
    except KeyError:
        raise KeyError(f"unknown driver {name!r}; known: {sorted(DRIVERS)}") from None


def build_rig(system: str, kind: str, mapping: Mapping, physics: dict[str, Any],
              bench_options: dict[str, Any] | None, drive_options: dict[str, Any],
              detector_options: dict[str, Any]) -> tuple[Drive, Detector]:
    """The drive and detector of one system, built from its configuration tables.

    ``drive_options`` and ``detector_options`` hold ``driver`` plus the driver's options. A
    drive's ``limits`` default to the span the system's ranges can produce; a detector's
    ``samples`` default to the bench's trace length, else to the drive's channels.
    """
    bench = None
    if bench_options is not None:
        if kind not in BENCHES:
            raise KeyError(f"no simulated bench for kind {kind!r}; known: {sorted(BENCHES)}")
        bench = _load(BENCHES[kind])(mapping=mapping, physics=physics, **bench_options)
    drive_opts = dict(drive_options)
    detector_opts = dict(detector_options)
    drive_cls = driver_class(drive_opts.pop("driver"))
    detector_cls = driver_class(detector_opts.pop("driver"))
    drive_opts.setdefault("limits", mapping.drive_span())
    detector_opts.setdefault("samples", bench.samples if bench is not None else mapping.channels)
    if bench is not None:
        drive_opts["bench"] = bench
        detector_opts["bench"] = bench
    drive = drive_cls(name=f"{system}.drive", channels=mapping.channels, **drive_opts)
    detector = detector_cls(name=f"{system}.detector", **detector_opts)
    return drive, detector
