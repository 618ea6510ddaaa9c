"""The fake vendor libraries are the libraries' own API and as strict as they are.

Conformance: every public function and method a fake defines exists in the real package (read
from its installed source, never imported: sounddevice would need PortAudio) with the same
parameters, in the same order, with the same defaults. Strictness: the errors the real
libraries raise for the mistakes a driver can make (NI-DAQmx status codes as nidaqmx-python's
own tests and examples show them; PortAudio errors; SeaBreezeError), and the hardware's
behaviour a driver must handle (triggers, free-running CCD, latency changing per call)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import time
from pathlib import Path

import numpy as np
import pytest
from vendor_rigs import EXAMPLES, emulated, fakes_imported

PLATE_NIDAQ = EXAMPLES / "plate-nidaq.toml"
PLATE_SOUND = EXAMPLES / "plate-soundcard.toml"
SHG = EXAMPLES / "shg-seabreeze.toml"


# -- conformance with the real packages' source --------------------------------------------------

def _source(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"the real {package} is not installed (pip install -e '.[dev]')")
    root = Path(spec.origin).parent
    return root / relative if relative else Path(spec.origin)


def _real_signatures(path: Path) -> dict[str, list[tuple[str, str | None]]]:
    """``qualified name -> [(parameter, default source or None)]`` of every def in ``path``."""
    found: dict[str, list[tuple[str, str | None]]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef):
                a = child.args
                names = [p.arg for p in [*a.posonlyargs, *a.args]]
                defaults = [None] * (len(names) - len(a.defaults)) + \
                    [ast.unparse(d) for d in a.defaults]
                params = list(zip(names, defaults, strict=True))
                params += [(p.arg, None if d is None else ast.unparse(d))
                           for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
                if a.vararg:
                    params.append(("*" + a.vararg.arg, None))
                if a.kwarg:
                    params.append(("**" + a.kwarg.arg, None))
                found.setdefault(f"{prefix}{child.name}", params)
            elif isinstance(child, ast.Assign) and isinstance(child.value, ast.Name) \
                    and f"{prefix}{child.value.id}" in found:  # close = clear
                for target in child.targets:
                    if isinstance(target, ast.Name):
                        found[f"{prefix}{target.id}"] = found[f"{prefix}{child.value.id}"]
    visit(ast.parse(path.read_text()), "")
    return found


def _fake_signature(func, module) -> list[tuple[str, str | None]]:
    params = []
    for p in inspect.signature(func).parameters.values():
        name = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        default = None
        if p.default is not p.empty:
            default = next((n for n, v in vars(module).items() if v is p.default
                            and not n.startswith("_")), None) or (
                f"{type(p.default).__name__}.{p.default.name}"
                if hasattr(p.default, "name") and hasattr(type(p.default), "__members__")
                else repr(p.default))
        params.append((name, default))
    return params


#: Classes a user constructs (the others' constructors are internal to each library).
CONSTRUCTED = {"Task", "DaqError", "DaqReadError", "DaqWriteError", "Device", "Spectrometer"}
# (fake module, fake class or None, real package, real file, real class prefix)
CONFORMANCE = [
    ("nidaqmx.task", "Task", "nidaqmx", "task/_task.py", "Task."),
    ("nidaqmx.task", "Timing", "nidaqmx", "task/_timing.py", "Timing."),
    ("nidaqmx.task", "StartTrigger", "nidaqmx", "task/triggering/_start_trigger.py",
     "StartTrigger."),
    ("nidaqmx.task", "AOChannelCollection", "nidaqmx",
     "task/collections/_ao_channel_collection.py", "AOChannelCollection."),
    ("nidaqmx.task", "AIChannelCollection", "nidaqmx",
     "task/collections/_ai_channel_collection.py", "AIChannelCollection."),
    ("nidaqmx.errors", "DaqError", "nidaqmx", "errors.py", "DaqError."),
    ("nidaqmx.errors", "DaqReadError", "nidaqmx", "errors.py", "DaqReadError."),
    ("nidaqmx.errors", "DaqWriteError", "nidaqmx", "errors.py", "DaqWriteError."),
    ("nidaqmx.system", "Device", "nidaqmx", "system/device.py", "Device."),
    ("sounddevice", None, "sounddevice", "", ""),
    ("seabreeze.spectrometers", "Spectrometer", "seabreeze", "spectrometers.py",
     "Spectrometer."),
    ("seabreeze.spectrometers", None, "seabreeze", "spectrometers.py", ""),
]


@pytest.mark.parametrize(("fake", "cls", "package", "relative", "prefix"), CONFORMANCE,
                         ids=[f"{c[0]}:{c[1] or 'module'}" for c in CONFORMANCE])
def test_fake_api_is_the_real_api(fake, cls, package, relative, prefix):
    real = _real_signatures(_source(package, relative))
    with fakes_imported():
        module = importlib.import_module(fake)
        owner = getattr(module, cls) if cls else module
        members = {n: m for n, m in vars(owner).items()
                   if (not n.startswith("_") or (n == "__init__" and cls in CONSTRUCTED))
                   and (inspect.isfunction(m) or isinstance(m, (classmethod, staticmethod)))
                   and (cls or m.__module__ == module.__name__)}
        checked = 0
        for name, member in members.items():
            func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            assert f"{prefix}{name}" in real, f"{fake}.{cls or ''}.{name} is not in {package}"
            assert _fake_signature(func, module) == real[f"{prefix}{name}"], \
                f"{fake} {cls}.{name}: the parameters differ from {package}'s"
            checked += 1
        assert checked >= 1


# -- nidaqmx -------------------------------------------------------------------------------------

@pytest.fixture
def daq():
    with emulated(PLATE_NIDAQ, "plate", speed=50) as hardware:
        import nidaqmx

        yield nidaqmx, hardware


def _ao(nidaqmx, samples=100, lo=-1.0, hi=1.0):
    from nidaqmx.constants import AcquisitionType

    task = nidaqmx.Task()
    task.ao_channels.add_ao_voltage_chan("Dev1/ao0", min_val=lo, max_val=hi)
    task.timing.cfg_samp_clk_timing(48000.0, sample_mode=AcquisitionType.FINITE,
                                    samps_per_chan=samples)
    return task


def _ai(nidaqmx, samples=100, trigger="/Dev1/ao/StartTrigger"):
    from nidaqmx.constants import AcquisitionType

    task = nidaqmx.Task()
    task.ai_channels.add_ai_voltage_chan("Dev1/ai0", min_val=-5.0, max_val=5.0)
    task.timing.cfg_samp_clk_timing(48000.0, sample_mode=AcquisitionType.FINITE,
                                    samps_per_chan=samples)
    if trigger:
        task.triggers.start_trigger.cfg_dig_edge_start_trig(trigger)
    return task


def test_daqmx_rejects_what_the_library_rejects(daq):
    nidaqmx, _ = daq
    from nidaqmx.error_codes import DAQmxErrors as codes

    task = nidaqmx.Task()
    with pytest.raises(TypeError):  # the library's argument names, nothing else
        task.ao_channels.add_ao_voltage_chan("Dev1/ao0", minimum=-1.0)
    with pytest.raises(nidaqmx.DaqError) as err:
        task.ao_channels.add_ao_voltage_chan("Dev1/ao7")
    assert err.value.error_code == codes.PHYSICAL_CHAN_DOES_NOT_EXIST
    task.ao_channels.add_ao_voltage_chan("Dev1/ao0", min_val=-1.0, max_val=1.0)
    with pytest.raises(nidaqmx.DaqWriteError) as err:  # many samples, no timing, no auto start
        task.write(np.zeros(10))
    assert err.value.error_code == codes.CANNOT_WRITE_WHEN_AUTO_START_FALSE_AND_TASK_NOT_RUNNING
    task.close()
    task = _ao(nidaqmx)
    with pytest.raises(nidaqmx.DaqWriteError) as err:  # beyond the channel's max_val
        task.write(np.full(100, 1.5), auto_start=False)
    assert err.value.error_code == codes.INVALID_AO_DATA_WRITE
    assert err.value.samps_per_chan_written == 0 and "Dev1/ao0" in str(err.value)
    task.write(np.zeros(100), auto_start=False)
    task.start()
    with pytest.raises(nidaqmx.DaqError) as err:  # timing of a running task
        task.timing.cfg_samp_clk_timing(1000.0)
    assert err.value.error_code == codes.CAN_NOT_PERFORM_OP_WHILE_TASK_RUNNING
    other = _ao(nidaqmx)
    other.write(np.zeros(100), auto_start=False)
    with pytest.raises(nidaqmx.DaqError) as err:  # the AO timing engine is taken
        other.start()
    assert err.value.error_code == codes.PAL_RESOURCE_RESERVED
    other.close()
    task.close()
    with pytest.raises(nidaqmx.DaqError) as err:
        task.start()
    assert err.value.error_code == codes.INVALID_TASK
    with pytest.warns(nidaqmx.DaqResourceWarning):
        task.close()


def test_daqmx_rates_and_ranges_are_the_cards(daq):
    nidaqmx, _ = daq
    from nidaqmx.error_codes import DAQmxErrors as codes

    task = _ao(nidaqmx)
    assert task.timing.samp_clk_rate == pytest.approx(100e6 / 2083)  # timebase / divisor
    task.close()
    task = _ao(nidaqmx, lo=-12.0, hi=12.0)
    task.write(np.zeros(100), auto_start=False)
    with pytest.raises(nidaqmx.DaqError) as err:
        task.start()
    assert err.value.error_code == codes.INVALID_ATTRIBUTE_VALUE and "AO.Max" in str(err.value)
    task.close()


def test_daqmx_finite_reads_and_triggers(daq):
    nidaqmx, (_rig, _devices, _) = daq
    from nidaqmx.error_codes import DAQmxErrors as codes

    ai, ao = _ai(nidaqmx, samples=100), _ao(nidaqmx, samples=100)
    ao.write(np.zeros(100), auto_start=False)
    ao.start()  # AO first: the AI's trigger has come and gone when it is armed
    ai.start()
    with pytest.raises(nidaqmx.DaqReadError) as err:
        ai.read(number_of_samples_per_channel=100, timeout=0.2)
    assert err.value.error_code == codes.SAMPLES_NOT_YET_AVAILABLE
    assert err.value.samps_per_chan_read == 0
    ai.stop()
    ao.stop()
    ai.start()  # the right order: AI armed, then AO
    ao.start()
    first = ai.read(number_of_samples_per_channel=60, timeout=2.0)
    rest = ai.read(number_of_samples_per_channel=100, timeout=2.0)  # more than remain
    assert len(first) == 60 and len(rest) == 40  # what there is, as DAQmx returns it
    with pytest.raises(nidaqmx.DaqReadError) as err:
        ai.read(number_of_samples_per_channel=10, timeout=2.0)
    assert err.value.error_code == codes.SAMPLES_WILL_NEVER_BE_AVAILABLE
    ai.close()
    ao.close()


def test_daqmx_generation_drives_the_bench(daq):
    """What the AI reads is the plate's response to what the AO played, sample-aligned when
    the AI waits on the AO's start trigger."""
    nidaqmx, (rig, _, _) = daq
    wave = np.zeros(2048)
    wave[:64] = 0.8
    ai, ao = _ai(nidaqmx, samples=2048), _ao(nidaqmx, samples=2048)
    ao.write(wave, auto_start=False)
    ai.start()
    ao.start()
    y = np.asarray(ai.read(number_of_samples_per_channel=2048, timeout=5.0))
    rig.bench.noise = 0.0
    expected = rig.play(wave[None])[0]
    assert np.corrcoef(y, expected)[0, 1] > 0.99
    ai.close()
    ao.close()


# -- sounddevice ----------------------------------------------------------------------------------

@pytest.fixture
def sound():
    with emulated(PLATE_SOUND, "plate", speed=50) as hardware:
        import sounddevice

        yield sounddevice, hardware


def test_sounddevice_rejects_what_the_library_rejects(sound):
    sd, _ = sound
    data = np.zeros((1000, 2), np.float32)
    with pytest.raises(TypeError):
        sd.playrec(data, samplerate=48000, channels=2, devise="Scarlett")
    with pytest.raises(sd.PortAudioError, match="Invalid sample rate"):
        sd.playrec(data, samplerate=47000, channels=2, device="Scarlett")
    with pytest.raises(sd.PortAudioError, match="Invalid number of channels"):
        sd.playrec(data, samplerate=48000, channels=3, device="Scarlett")
    with pytest.raises(ValueError, match="No input device matching"):
        sd.playrec(data, samplerate=48000, channels=2, device="Fireface")
    with pytest.raises(ValueError, match="channel numbers must not be < 1"):
        sd.playrec(data, samplerate=48000, input_mapping=[0, 1], device="Scarlett")
    assert sd.query_devices("Scarlett", "input")["max_input_channels"] == 2


def test_sounddevice_playrec_is_valid_after_wait_and_its_latency_varies(sound):
    sd, (_, _devices, _) = sound
    data = np.zeros((4000, 2), np.float32)
    data[100:164, 1] = 0.5  # a pulse on output 2, which the loopback cable returns on input 2
    lags = set()
    for _ in range(6):
        rec = sd.playrec(data, samplerate=48000, out=np.zeros((4000, 2), np.float32),
                         device="Scarlett", latency="low")
        assert not rec.any()  # returned at once: nothing recorded yet
        assert sd.wait() is None  # no over- or underflow
        lags.add(int(np.argmax(np.abs(rec[:, 1]))) - 100)
    assert len(lags) > 1, "the latency should differ from call to call, as on a real host"
    assert all(0 < lag < 1000 for lag in lags)


# -- seabreeze ------------------------------------------------------------------------------------

@pytest.fixture
def ocean():
    with emulated(SHG, "shg", speed=20) as hardware:
        import seabreeze.spectrometers as sb

        yield sb, hardware


def test_seabreeze_spectrometer_api(ocean):
    sb, _ = ocean
    with pytest.raises(sb.SeaBreezeError, match="No device attached with serial number"):
        sb.Spectrometer.from_serial_number("USB4C0000")
    with pytest.raises(TypeError):
        sb.Spectrometer("FLMS04211")
    spec = sb.Spectrometer.from_serial_number("FLMS04211")
    with pytest.raises(sb.SeaBreezeError, match="Device already opened"):
        sb.Spectrometer.from_serial_number("FLMS04211")
    assert spec.integration_time_micros_limits == (1000, 655350000)
    with pytest.raises(sb.SeaBreezeError, match="Integration not in"):
        spec.integration_time_micros(500)
    wavelengths = spec.wavelengths()
    assert wavelengths.shape == (2048,) and 339 < wavelengths[0] < wavelengths[-1] < 1100
    spec.integration_time_micros(10000)
    raw = spec.intensities()
    dark = spec.intensities(correct_dark_counts=True)
    assert 1400 < raw[6:21].mean() < 1600 and abs(dark[6:21].mean()) < 50
    spec.close()
    with pytest.raises(sb.SeaBreezeError):
        spec.intensities()


def test_seabreeze_free_running_ccd_mixes_the_light_of_a_window():
    """A mask set during a window: that window's spectrum holds both masks; the next is clean.
    (Real time: 20 ms windows, so that this process's own delays stay well inside one.)"""
    with emulated(SHG, "shg", speed=1) as (_, devices, _):
        import seabreeze.spectrometers as sb

        shaper = devices["seabreeze"].rig  # what the pulse shaper sets, with the time it does
        window = devices["seabreeze"].lit
        spec = sb.Spectrometer.from_first_available()
        spec.integration_time_micros(20000)
        shaper.mask = np.zeros(shaper.channels)
        for _ in range(3):
            dark = spec.intensities(correct_dark_counts=True)[window].sum()
        time.sleep(0.002)  # into the next window
        shaper.mask = np.full(shaper.channels, 0.6)
        mixed = spec.intensities(correct_dark_counts=True)[window].sum()
        clean = spec.intensities(correct_dark_counts=True)[window].sum()
        assert dark < mixed < 0.97 * clean
        spec.close()
