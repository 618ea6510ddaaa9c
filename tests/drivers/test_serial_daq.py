"""Serial DAQ: DAC and ADC sharing one board over the pty emulator; binary blocks; faults."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import InstrumentError
from drivers.emulators.pty_server import DaqModel, PtyServer
from drivers.emulators.rig import load_rig
from drivers.serial.serial_daq import SerialDaqADC, SerialDaqBoard, SerialDaqDAC


@pytest.fixture
def daq():
    rig = load_rig("loopback")
    server = PtyServer(DaqModel(rig))
    dac = SerialDaqDAC("lb.drive", rig.channels, (-1.0, 1.0), server.path, timeout_s=0.3)
    adc = SerialDaqADC("lb.detector", rig.channels, server.path, timeout_s=0.3)
    yield dac, adc, server, rig
    dac.close()
    adc.close()
    server.close()
    SerialDaqBoard._boards.pop(server.path, None)


def test_both_drivers_share_one_board_and_port(daq):
    dac, adc, server, _ = daq
    assert dac.board is adc.board
    dac.open()
    adc.open()
    assert dac.board.info["dac_bits"] == 16 and dac.board.info["max_points"] == 65536
    assert server.model.rate == 48000.0
    dac.close()
    assert adc.board.link.is_open
    adc.close()
    assert not adc.board.link.is_open


def test_upload_run_and_read_back_through_the_loopback(daq):
    dac, adc, _, rig = daq
    dac.open()
    adc.open()
    x = np.random.default_rng(1).uniform(-1, 1, (5, rig.channels))
    adc.arm(5)
    dac.output(x)
    y = adc.read()
    assert y.shape == (5, rig.channels)
    np.testing.assert_allclose(y, x, atol=2 * 10 / 65535)


def test_the_rate_is_the_boards(daq):
    _, _, server, _ = daq
    with pytest.raises(ValueError, match="conflicts"):
        SerialDaqADC("other", 4, server.path, sample_rate=1000.0)


def test_limits_beyond_the_boards_dac_are_refused_at_open(daq):
    _, _, server, rig = daq
    wide = SerialDaqDAC("wide", rig.channels, (-6.0, 1.0), server.path, timeout_s=0.3)
    with pytest.raises(InstrumentError, match="DAC range") as err:
        wide.open()
    assert not err.value.retryable


def test_run_without_a_waveform_is_a_device_error(daq):
    _, adc, _, _ = daq
    adc.open()
    adc.arm(1)
    with pytest.raises(InstrumentError, match="device error 4") as err:
        adc.read()
    assert err.value.command == f"RUN {adc.samples}"


def test_silence_then_reconnect(daq):
    dac, adc, server, rig = daq
    dac.open()
    adc.open()
    server.muted = True
    with pytest.raises(InstrumentError) as err:
        dac.output(np.zeros((1, rig.channels)))
    assert err.value.retryable and not dac.board.link.is_open
    server.muted = False
    dac.close()
    adc.close()
    dac.open()
    adc.open()
    adc.arm(1)
    dac.output(np.full((1, rig.channels), 0.25))
    np.testing.assert_allclose(adc.read(), 0.25, atol=1e-3)
