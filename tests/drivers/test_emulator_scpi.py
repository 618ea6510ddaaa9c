"""The protocol emulators: SCPI parsing, AWG + scope and shaper + OSA on a bench, as strict as
the instruments (the OSA's log-in, CR LF replies, timed sweeps and traces; the AWG's Sync and
filter; the scope's point counts), faults, the emulator process, and the emulated example
configuration built by ``build_rig``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError
from drivers.emulators.rig import load_rig
from drivers.emulators.scpi import mnemonic, parse_header, take_message
from drivers.emulators.scpi_server import Emulators
from drivers.rig import build_rig
from drivers.serial.pulse_shaper import SerialPulseShaper
from drivers.visa.keysight_33500b import Keysight33500B
from drivers.visa.keysight_scope import KeysightInfiniiVision
from drivers.visa.yokogawa_aq6370 import YokogawaAQ6370
from labd.client import LabClient
from labd.config import load_config
from labd.daemon.process import LocalDaemon

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "oscillator-emulated.toml"
needs_tcp = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("pyvisa_py"),
    reason="pyvisa-py (the pure-Python VISA back end) is needed for TCP sockets")


def test_scpi_headers_reduce_to_short_forms():
    assert mnemonic("SOURce1") == "SOUR" and mnemonic("ARBitrary") == "ARB"
    assert mnemonic("WAVeform") == "WAV" and mnemonic("CHANnel2") == "CHAN2"
    assert parse_header(":SOURce1:VOLTage:OFFSet 0.5") == ("SOUR:VOLT:OFFS", "0.5")
    assert parse_header(":WAVeform:PREamble?") == ("WAV:PRE?", "")


def test_messages_with_binary_blocks_are_framed_by_their_length():
    buf = bytearray(b"DATA:ARB:DAC x,#14\n\n#\xff\n*TRG\n")
    assert take_message(buf) == ("DATA:ARB:DAC x,", b"\n\n#\xff")
    assert take_message(buf) == ("*TRG", None)
    assert take_message(bytearray(b"DATA x,#18abc")) is None


def oscillator_pair(resources: dict[str, str], channels: int, timeout_s: float = 2.0):
    awg = Keysight33500B("osc.drive", channels, (-1.0, 1.0), resources["awg"], library="@py",
                         timeout_s=timeout_s)
    scope = KeysightInfiniiVision("osc.detector", channels, resources["scope"], library="@py",
                                  timeout_s=timeout_s, acquire_timeout_s=timeout_s)
    return awg, scope


@pytest.fixture
def oscillator():
    rig = load_rig("oscillator", seed=3)
    emulators = Emulators(rig, ["awg", "scope"])
    awg, scope = oscillator_pair(emulators.addresses, rig.channels, timeout_s=0.5)
    yield emulators, awg, scope
    awg.close()
    scope.close()
    emulators.close()


@needs_tcp
def test_awg_and_scope_measure_the_bench_physics(oscillator):
    emulators, _, _ = oscillator
    # generous timeouts: the first measurement may compile the bench's numba kernels
    awg, scope = oscillator_pair(emulators.addresses, emulators.rig.channels, timeout_s=60.0)
    awg.open()
    scope.open()
    x = np.random.default_rng(0).uniform(-1, 1, (4, awg.channels))
    scope.arm(4)
    awg.output(x)
    y = scope.read()
    twin = load_rig("oscillator", seed=3)  # same seed: same device and the same noise
    expected = twin.play(awg.codes(x).reshape(x.shape) / 32767.0)
    np.testing.assert_allclose(y, expected, atol=3 * 8 / 65536)
    awg.close()
    scope.close()


@needs_tcp
def test_emulated_instruments_keep_scpi_error_queues(oscillator):
    _, awg, _ = oscillator
    awg.open()
    awg.link.write("SOUR1:FUNC:ARB nothing")
    with pytest.raises(InstrumentError, match="-221") as err:
        awg.link.check_errors("SOUR1:FUNC:ARB nothing")
    assert err.value.command == "SOUR1:FUNC:ARB nothing"
    awg.link.write("SOUR1:VOLT 30")
    with pytest.raises(InstrumentError, match="-222"):
        awg.link.check_errors("SOUR1:VOLT 30")


@needs_tcp
def test_mute_and_drop_are_retryable_faults_and_reopen_recovers(oscillator):
    emulators, awg, scope = oscillator
    awg.open()
    scope.open()
    emulators.muted = True
    with pytest.raises(InstrumentError) as err:
        scope.arm(1)
    assert err.value.retryable
    emulators.muted = False
    emulators.drop()
    with pytest.raises(InstrumentError) as err:
        awg.output(np.zeros((1, awg.channels)))
    assert err.value.retryable
    for inst in (awg, scope):
        inst.close()
        inst.open()
    scope.arm(1)
    awg.output(np.zeros((1, awg.channels)))
    assert scope.read().shape == (1, awg.channels)


def test_the_emulated_example_matches_the_emulators_rig():
    example = load_config(EXAMPLE).systems["oscillator"]
    rig = load_config(ROOT / "drivers" / "emulators" / "rigs.toml").systems["oscillator"]
    assert (example.kind, example.mapping) == (rig.kind, rig.mapping)


@needs_tcp
def test_the_emulator_process_serves_the_example_config_built_by_build_rig(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.emulators.scpi_server", "--config", str(EXAMPLE),
         "--system", "oscillator", "--port", "0", "--seed", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        text = EXAMPLE.read_text().replace("TCPIP::127.0.0.1::15025::SOCKET", info["awg"]) \
            .replace("TCPIP::127.0.0.1::15026::SOCKET", info["scope"]) \
            .replace("timeout_s = 2.0", "timeout_s = 30.0")  # a loaded CI machine is slow
        (tmp_path / "rig.toml").write_text(text)
        config = load_config(tmp_path / "rig.toml").systems["oscillator"]
        system = config.mapping
        drive, detector = build_rig("oscillator", config.kind, system, config.physics, None,
                                    {"driver": config.drive.driver, **config.drive.options},
                                    {"driver": config.detector.driver,
                                     **config.detector.options})
        drive.open()
        detector.open()
        rng = np.random.default_rng(5)
        x = rng.uniform(-1, 1, (3, system.input_dim))
        theta = rng.uniform(-1, 1, system.param_dim)
        detector.arm(3)
        drive.output(system.encode(x, theta))
        y = system.decode(detector.read())
        assert y.shape == (3, system.output_dim) and np.all(np.isfinite(y))
        assert np.ptp(y) > 1e-3  # the bench answers, the trace is not flat
        os.kill(proc.pid, signal.SIGUSR1)  # stop answering (the signal lands asynchronously)
        detector.link.timeout_s = 0.3
        deadline = time.monotonic() + 10
        while True:
            detector.close()
            try:
                detector.open()
            except InstrumentError as exc:
                assert exc.retryable
                break
            assert time.monotonic() < deadline, "the emulator kept answering"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGUSR1)  # answer again (the signal lands asynchronously)
        deadline = time.monotonic() + 10
        while True:  # reconnect as the daemon does: close, open, back off
            detector.close()
            try:
                detector.open()
                break
            except InstrumentError:
                assert time.monotonic() < deadline, "the emulator did not answer again"
                time.sleep(0.2)
        detector.arm(1)
        drive.output(system.encode(x[:1], theta))
        assert detector.read().shape == (1, system.channels)
        drive.close()
        detector.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _talk(address: str, lines: list[str], wait_s: float = 0.3) -> bytes:
    """Send ``lines`` on a fresh connection to a ``TCPIP::host::port::SOCKET`` address and
    return everything answered within ``wait_s`` of the last one."""
    _, host, port, _ = address.split("::")
    with socket.create_connection((host, int(port)), timeout=wait_s) as conn:
        conn.sendall("".join(line + "\n" for line in lines).encode())
        received = b""
        try:
            while data := conn.recv(65536):
                received += data
        except TimeoutError:
            pass
    return received


@pytest.fixture
def shg_emulators():
    rig = load_rig("shg", seed=2)
    emulators = Emulators(rig, ["shaper", "osa"])
    yield rig, emulators
    emulators.close()


def test_the_emulated_osa_is_as_strict_as_the_instrument(shg_emulators):
    """No answer before the log-in, CR LF endings, *OPC? not waiting for a sweep, and an old
    fixed trace A in dBm/nm as an earlier user left it."""
    _, emulators = shg_emulators
    osa = emulators.addresses["osa"]
    assert _talk(osa, ["*IDN?"]) == b""
    login = ['OPEN "anonymous"', " "]
    assert _talk(osa, login) == b"AUTHENTICATE CRAM-MD5.\r\nready\r\n"
    assert _talk(osa, ['OPEN "labd"', "guess", "*IDN?"]) == \
        b"AUTHENTICATE CRAM-MD5.\r\nerror\r\n"
    during = _talk(osa, [*login, ":SENS:SENS HIGH3", ":INIT", "*OPC?", ":STAT:OPER:COND?",
                         ":STAT:OPER:EVEN?", ":DISP:TRAC:Y1:UNIT?", ":TRAC:ATTR:TRA?"])
    assert during.split(b"\r\n")[2:-1] == [b"1", b"0", b"0", b"DBM/NM", b"FIX"]


def test_the_osa_over_its_lan_socket_sweeps_two_different_traces(shg_emulators):
    """Issue 17's test of done: log-in, CR LF endings and status polling over the socket, and
    two successive sweeps (two masks on the shaper) returning two different traces, each the
    bench's spectrum of its mask in mW."""
    rig, emulators = shg_emulators
    shaper = SerialPulseShaper("shg.drive", rig.channels, (0.0, 1.0), emulators.addresses["shaper"])
    osa = YokogawaAQ6370("shg.detector", 201, emulators.addresses["osa"], library="@py",
                         format="real32", timeout_s=5.0, poll_s=0.01)
    shaper.open()
    osa.open()
    spectra = []
    for level in (0.2, 0.9):
        shaper.output(np.full((1, rig.channels), level))
        osa.arm(1)
        spectra.append(osa.read()[0])
    twin = load_rig("shg", seed=2)
    for level, spectrum in zip((0.2, 0.9), spectra, strict=True):
        twin.mask = np.full(rig.channels, round(level * 65535) / 65535)
        expected = np.interp(np.linspace(0, 1, 201), np.linspace(0, 1, rig.bench.samples),
                             twin.sweep())
        np.testing.assert_allclose(spectrum, np.maximum(expected, 1e-9), rtol=1e-5)
    assert not np.allclose(spectra[0], spectra[1])
    shaper.close()
    osa.close()


SHG_CONFIG = """
[store]
path = ""

[systems.shg]
kind = "shg"
input_dim = 20
param_dim = 40
output_dim = 10
max_batch = 8
timeout_s = 60.0
encoding = {{ layout = "concat" }}
decoding = {{ reduce = "sum" }}

[systems.shg.drive]
driver = "serial.pulse_shaper"
port = "{shaper}"
timeout_s = 5.0

[systems.shg.detector]
driver = "yokogawa.aq6370"
resource = "{osa}"
library = "@py"
samples = 201
format = "real32"
poll_s = 0.01
"""


@needs_tcp
def test_a_daemon_serves_the_shg_rig_through_the_osa_on_its_lan_socket(shg_emulators, tmp_path):
    """End to end: labd serve drives the emulated shaper and the emulated OSA (log-in, CR LF,
    status polling, one sweep per row), and y is the bench's spectra decoded, row by row."""
    rig, emulators = shg_emulators
    config = tmp_path / "shg.toml"
    config.write_text(SHG_CONFIG.format(**emulators.addresses))
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (6, 20)).astype(np.float32)
    theta = rng.uniform(0, 1, 40).astype(np.float32)
    with LocalDaemon(config=config) as daemon, LabClient(daemon.endpoint, timeout_s=60) as lab:
        y = lab.forward("shg", x, theta)
    twin = load_rig("shg", seed=2)
    expected = []
    for row in np.concatenate([x, np.broadcast_to(theta, (6, 40))], axis=1):
        twin.mask = np.round(row.astype(np.float64) * 65535) / 65535
        spectrum = np.interp(np.linspace(0, 1, 201), np.linspace(0, 1, rig.bench.samples),
                             twin.sweep())
        expected.append(np.maximum(spectrum, 1e-9)[:200].reshape(10, 20).sum(1))
    np.testing.assert_allclose(y, np.array(expected), rtol=1e-4)
    assert np.ptp(y, axis=0).max() > 0  # the rows differ: each is its own sweep


@needs_tcp
def test_sync_must_follow_the_channel_that_plays():
    """With the waveform on channel 2, the scope triggers only once Sync follows channel 2
    (the driver sets it); Sync left on channel 1 never triggers it."""
    rig = load_rig("oscillator", seed=3)
    emulators = Emulators(rig, ["awg", "scope"])
    try:
        awg = Keysight33500B("osc.drive", rig.channels, (-1.0, 1.0), emulators.addresses["awg"],
                             library="@py", source=2, timeout_s=30.0)
        scope = KeysightInfiniiVision("osc.detector", rig.channels,
                                      emulators.addresses["scope"], library="@py",
                                      timeout_s=30.0, acquire_timeout_s=30.0)
        awg.open()
        scope.open()
        x = np.random.default_rng(0).uniform(-1, 1, (2, rig.channels))
        scope.arm(2)
        awg.output(x)
        twin = load_rig("oscillator", seed=3)
        expected = twin.play(awg.codes(x).reshape(x.shape) / 32767.0)
        np.testing.assert_allclose(scope.read(), expected, atol=3 * 8 / 65536)
        awg.link.write("OUTP:SYNC:SOUR CH1")  # as an AWG left alone would have it
        scope.acquire_timeout_s = 0.3
        scope.arm(2)
        awg.output(x)
        with pytest.raises(InstrumentError, match="no completion"):
            scope.read()
        awg.close()
        scope.close()
    finally:
        emulators.close()


@needs_tcp
def test_the_arb_filter_smears_held_samples_unless_off(oscillator):
    """The emulated AWG filters as the instrument does: with the NORMAL filter (its default)
    each held sample is smeared into its neighbours; the driver's default OFF holds them."""
    emulators, _, _ = oscillator
    rig = emulators.rig
    twin = load_rig("oscillator", seed=3)  # same seed: same device and the same noise
    x = np.random.default_rng(1).uniform(-1, 1, (2, rig.channels))
    for arb_filter in ("OFF", "NORMAL"):
        awg, scope = oscillator_pair(emulators.addresses, rig.channels, timeout_s=30.0)
        awg.arb_filter = arb_filter
        awg.open()
        scope.open()
        scope.arm(2)
        awg.output(x)
        y = scope.read()
        volts = (awg.codes(x) / 32767.0).astype(float)
        if arb_filter == "NORMAL":  # 0.2 / 0.6 / 0.2, the ends held
            edges = np.concatenate([volts[:1], volts, volts[-1:]])
            volts = 0.2 * (edges[:-2] + edges[2:]) + 0.6 * volts
        np.testing.assert_allclose(y, twin.play(volts.reshape(x.shape)), atol=3 * 8 / 65536)
        awg.close()
        scope.close()


@needs_tcp
def test_the_scope_takes_at_least_100_points_and_tells_its_count():
    """:WAV:POIN below 100 is error -222 on the emulated scope as on the instrument; the
    driver records 100 points for a short batch and keeps the first ones."""
    rig = load_rig("loopback", seed=1)
    emulators = Emulators(rig, ["awg", "scope"])
    try:
        awg, scope = oscillator_pair(emulators.addresses, rig.channels, timeout_s=30.0)
        awg.open()
        scope.open()
        scope.link.write(":WAV:POIN 50")
        with pytest.raises(InstrumentError, match="-222"):
            scope.link.check_errors(":WAV:POIN 50", ":SYST:ERR?")
        x = np.linspace(-0.9, 0.9, rig.channels)[None, :]
        scope.arm(1)
        awg.output(x)
        np.testing.assert_allclose(scope.read(), x, atol=2 * 8 / 65536)
        assert scope.link.query(":WAV:POIN?") == "+100"
        awg.close()
        scope.close()
    finally:
        emulators.close()
