"""The vendor-library drivers against the fakes, in this process: synchronisation, limits,
calibration, errors that name the device and channel, and a clear error naming the extra to
install when the vendor library is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from vendor_rigs import EXAMPLES, emulated, fakes_imported, system_of

from drivers.base import InstrumentError
from drivers.daqmx.analog import DaqmxAI, DaqmxAO
from drivers.emulators.rehearse import VENDOR
from drivers.extras import MissingExtra
from drivers.ocean.spectrometer import OceanSpectrometer
from drivers.sound.card import SoundInput, SoundOutput, _Card

PLATE_NIDAQ = EXAMPLES / "plate-nidaq.toml"
PLATE_SOUND = EXAMPLES / "plate-soundcard.toml"
SHG = EXAMPLES / "shg-seabreeze.toml"


def _pair(config, ao_cls, ai_cls, **detector):
    system = system_of(config, "plate")
    drive = ao_cls("plate.drive", system.channels, system.drive_span(), **system.drive.options)
    options = {**system.detector.options, **detector}
    return system, drive, ai_cls("plate.detector", system.channels, **options)


def _batch(system, drive, detector, shots=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(*system.input_range, (shots, system.input_dim)).astype(np.float32)
    theta = rng.uniform(*system.param_range, system.param_dim).astype(np.float32)
    detector.arm(shots)
    drive.output(system.encode(x, theta))
    return system.encode(x, theta), detector.read()


@pytest.fixture
def daq():
    with emulated(PLATE_NIDAQ, "plate", speed=50) as hardware:
        system, ao, ai = _pair(PLATE_NIDAQ, DaqmxAO, DaqmxAI)
        yield system, ao, ai, hardware
        ai.close()
        ao.close()


def test_daqmx_pair_acquires_the_plates_response_on_one_clock(daq):
    system, ao, ai, (rig, _, _) = daq
    ao.open()
    ai.open()
    assert ao.health()["idn"] == "NI USB-6361 S/N 1F2A3B4 (Dev1)"
    assert ai.health()["rate"] == pytest.approx(48000, rel=1e-3)
    rig.bench.noise = 0.0
    patterns, trace = _batch(system, ao, ai)
    assert trace.shape == (4, system.channels)
    # the shot before rings down in each shot's silence, so from the end of the silence (what
    # is read) the plate's response to the shots played back to back is its response to each
    # shot alone: sample n of the AI is sample n of the AO
    read = slice(system.decoding.start, None)
    expected = rig.play(patterns)[:, read]  # (each shot alone, from rest)
    assert np.linalg.norm(trace[:, read] - expected) < 0.01 * np.linalg.norm(expected)
    shifted = np.roll(trace, 1, axis=1)[:, read]  # one sample off: clearly worse
    assert np.linalg.norm(shifted - expected) > 2 * np.linalg.norm(trace[:, read] - expected)
    patterns, again = _batch(system, ao, ai, seed=1)  # the next batch: stop, re-time, restart
    assert again.shape == (4, system.channels)


@pytest.mark.parametrize(("pad", "ring_v"), [(0, (0.05, np.inf)), (12000, (0.0, 2.5e-3))])
def test_the_emulated_plate_rings_on_from_one_batch_into_the_next(tmp_path, pad, ring_v):
    """In real time (speed 1) the next batch starts a few ms after the last one ended: the
    emulated plate must still ring then, as the real one does, or a pad too short for the
    next forward would pass every test. What the shots read beyond their response from rest
    (RMS volts, noise off): without a pad, the shots before ring on (measured 0.53 V); with
    the example's 250 ms, under half the bench's 5 mV RMS noise (measured 0.94 mV)."""
    config = tmp_path / "plate.toml"
    config.write_text(PLATE_NIDAQ.read_text().replace("pad_before = 12000", f"pad_before = {pad}")
                      .replace("start = 12000", f"start = {pad}"))
    with emulated(config, "plate", speed=1) as (rig, _, _):
        system, ao, ai = _pair(config, DaqmxAO, DaqmxAI)
        ao.open()
        ai.open()
        rig.bench.noise = 0.0
        _batch(system, ao, ai, shots=2, seed=0)
        patterns, trace = _batch(system, ao, ai, shots=2, seed=1)
        ai.close()
        ao.close()
    ring = np.sqrt(np.mean((trace[:, pad:] - rig.play(patterns)[:, pad:]) ** 2))
    assert ring_v[0] <= ring < ring_v[1], f"pad {pad}: the shots read {ring:.2e} V of ring-over"


def test_daqmx_refuses_unsafe_or_impossible_settings_before_anything_is_played(daq):
    system, _, _, _ = daq
    wide = DaqmxAO("plate.drive", system.channels, (-12.0, 12.0), "Dev1/ao0", 48000.0)
    with pytest.raises(InstrumentError, match=r"limits \[-12, 12\] V fit none of Dev1") as err:
        wide.open()
    assert not err.value.retryable and not wide.is_open
    odd = DaqmxAO("plate.drive", system.channels, (-1.0, 1.0), "Dev1/ao0", 44100.0,
                  rate_tolerance=1e-6)
    with pytest.raises(InstrumentError, match="cannot clock 44100 S/s"):
        odd.open()
    missing = DaqmxAI("plate.detector", system.channels, "Dev1/ai42", 48000.0)
    with pytest.raises(InstrumentError, match=r"Dev1/ai42: Physical channel .*-200170") as err:
        missing.open()
    assert not err.value.retryable


def test_daqmx_read_without_the_ao_start_times_out_naming_the_channel(daq):
    _system, _ao, ai, _ = daq
    ai.timeout_s = 0.2
    ai.open()
    ai.arm(2)  # armed on /Dev1/ao/StartTrigger, but the AO never starts
    with pytest.raises(InstrumentError, match=r"Dev1/ai0: .*-200284") as err:
        ai.read()
    assert err.value.retryable and err.value.command == "read"


@pytest.fixture
def sound():
    with emulated(PLATE_SOUND, "plate", speed=50) as hardware:
        _Card._cards.clear()
        yield hardware
        _Card._cards.clear()


def test_sound_card_aligns_every_call_on_its_marker(sound):
    rig, devices, _ = sound
    system, out, inp = _pair(PLATE_SOUND, SoundOutput, SoundInput)
    out.open()
    inp.open()
    assert len(inp.measured) == 3 and all(abs(m - 370) <= 64 for m in inp.measured)
    rig.bench.noise = 0.0
    card = devices["sounddevice"]
    read = slice(system.decoding.start, None)  # (the silence holds the shot before's ring)
    for seed in range(3):  # a different latency each call, the same alignment
        patterns, trace = _batch(system, out, inp, seed=seed)
        expected = rig.play(patterns * card.out_fs)[:, read] / card.in_fs
        assert np.corrcoef(trace[:, read].ravel(), expected.ravel())[0, 1] > 0.99
    out.close()
    inp.close()


def test_sound_card_latency_calibration_is_checked_at_open(sound):
    _system, out, inp = _pair(PLATE_SOUND, SoundOutput, SoundInput, latency_frames=None)
    out.open()
    with pytest.raises(InstrumentError, match=r"no latency calibration: markers landed at "
                       r"\[\d+, \d+, \d+\] frames; add latency_frames = \d+") as err:
        inp.open()
    assert not err.value.retryable
    _Card._cards.clear()
    _, _, wrong = _pair(PLATE_SOUND, SoundOutput, SoundInput, latency_frames=2000)
    with pytest.raises(InstrumentError, match=r"calibrated 2000 \+- 64"):
        wrong.open()
    _Card._cards.clear()
    _, _, unplugged = _pair(PLATE_SOUND, SoundOutput, SoundInput, reference=(2, 1))
    with pytest.raises(InstrumentError, match=r"marker not found.*cable from output 2 to "
                       r"input 1"):
        unplugged.open()


@pytest.fixture
def ocean():
    with emulated(SHG, "shg", speed=20) as hardware:
        yield hardware


def _spectrometer(**overrides):
    system = system_of(SHG, "shg")
    options = {**system.detector.options, **overrides}
    return system, OceanSpectrometer("shg.detector", **options)


def test_spectrometer_reads_the_shg_of_the_mask_after_it_was_set(ocean):
    _, devices, _ = ocean
    shaper = devices["seabreeze"].rig
    _system, spec = _spectrometer()
    spec.open()
    assert spec.health()["idn"] == "Ocean FLAMES S/N FLMS04211"
    shaper.mask = np.zeros(shaper.channels)
    spec.arm(1)
    dark = spec.read()
    levels = []
    for level in (0.4, 0.7, 1.0):
        shaper.mask = np.full(shaper.channels, level)
        spec.arm(1)
        levels.append(spec.read()[0].sum())
    assert dark.shape == (1, 53) and abs(dark.mean()) < 200
    assert levels[0] < levels[1] < levels[2]
    assert levels[2] / levels[1] == pytest.approx((1.0 / 0.7) ** 4, rel=0.15)  # SH ~ field^4
    spec.close()


def test_spectrometer_settings_it_cannot_have_are_refused_at_open(ocean):
    _, spec = _spectrometer(stop_nm=415.0)
    with pytest.raises(InstrumentError, match="390-415 nm covers 66 pixels of FLAMES S/N "
                       "FLMS04211, configured samples = 53") as err:
        spec.open()
    assert not err.value.retryable
    _, spec = _spectrometer(integration_time_us=500)
    with pytest.raises(InstrumentError, match=r"integration_time_us 500 is outside"):
        spec.open()
    _, spec = _spectrometer(serial="USB4C01234")
    with pytest.raises(InstrumentError, match="No device attached with serial number") as err:
        spec.open()
    assert err.value.retryable  # (it may be plugged in)


@pytest.mark.parametrize(("cls", "args", "extra", "library"), [
    (DaqmxAO, ("p.drive", 4, (-1.0, 1.0), "Dev1/ao0", 48000.0), "nidaq", "nidaqmx"),
    (SoundOutput, ("p.drive", 4, (-1.0, 1.0), "Scarlett"), "sound", "sounddevice"),
    (OceanSpectrometer, ("p.detector", 53, 390.0, 410.0), "seabreeze", "seabreeze"),
])
def test_a_missing_vendor_library_names_the_extra_to_install(monkeypatch, cls, args, extra,
                                                             library):
    with fakes_imported():
        monkeypatch.setitem(sys.modules, library, None)  # as if not installed
        with pytest.raises(MissingExtra, match=rf"needs the Python package '{library}', which "
                           rf"is not installed: pip install 'labd\[{extra}\]'"):
            cls(*args)


def test_sounddevice_without_portaudio_says_what_to_install():
    """The real sounddevice imports only with the PortAudio library (not on this machine)."""
    pytest.importorskip("_sounddevice")
    _Card._cards.clear()
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pass
    else:
        pytest.skip("PortAudio is installed here")
    with pytest.raises(MissingExtra, match=r"sounddevice is installed but cannot load: "
                       r"PortAudio library not found\. Install PortAudio"):
        SoundOutput("p.drive", 4, (-1.0, 1.0), "Scarlett")


@pytest.mark.parametrize(("example", "library", "extra"), [
    ("plate-nidaq.toml", "nidaqmx", "nidaq"), ("plate-soundcard.toml", "sounddevice", "sound"),
    ("shg-seabreeze.toml", "seabreeze", "seabreeze")])
def test_config_check_names_the_extra_a_configuration_needs(example, library, extra):
    """``labd config --check`` on a lab PC without the vendor library: one line per driver
    naming the extra, no traceback, nothing opened; with the library (here: the fakes) the
    example builds."""
    check = ["config", "--check", str(EXAMPLES / example)]
    hidden = (f"import sys; sys.modules[{library!r}] = None; from labd.cli import main; "
              f"sys.exit(main({check!r}))")
    run = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True,
                         timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 2 and "Traceback" not in out
    assert f"needs the Python package '{library}', which is not installed: " \
           f"pip install 'labd[{extra}]'" in out
    env = {**os.environ, "PYTHONPATH": str(VENDOR)}
    run = subprocess.run([sys.executable, "-m", "labd", *check], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK (every system built; no instrument opened)" in run.stdout
