"""NI-DAQmx analog output and input (``nidaqmx``, the NI-DAQmx Python API): a ``Drive`` on one
AO channel and a ``Detector`` on one AI channel of a multifunction card, run as one finite,
hardware-timed acquisition.

One batch of ``B`` shots, as the daemon calls it:

1. ``DaqmxAI.arm(B)``: the AI task (one channel, finite, ``B * samples`` samples at
   ``sample_rate``, start trigger on ``trigger``, by default the AO's own
   ``/<device>/ao/StartTrigger``) is started: armed, it waits for the AO to start;
2. ``DaqmxAO.output(patterns)``: the AO task waits for its previous generation to end, is
   stopped, timed (finite, ``B * channels`` samples), written (the shots back to back,
   ``auto_start=False``) and started: its start trigger starts the AI on the same edge, and
   both run from the card's timebase, so AI sample ``n`` is taken with AO sample ``n``;
3. ``DaqmxAI.read()``: reads all ``B * samples`` samples (timeout: ``timeout_s`` plus the
   acquisition's length), checks the count, stops the task and returns ``[B, samples]`` volts.

AI must be armed before AO starts: an AI started later waits for a trigger that already came
and times out (DAQmx -200284). Limits: the AO channel is created with ``min_val``/``max_val``
equal to the drive's ``limits`` (so the card itself refuses anything wider), which must lie in
one of the card's AO ranges; the AI channel's ``range`` picks the card's smallest input range
that holds it. The sample clock is the card's timebase divided by a whole number: a rate the
card cannot make within ``rate_tolerance`` (relative) is refused at open. Every DAQmx error
becomes an ``InstrumentError`` naming the channel and the DAQmx status code; timeouts and lost
devices are retryable, settings the card refuses are not.

API as documented by NI: nidaqmx-python ``Task`` (``generated/nidaqmx/task/_task.py``:
``read``, ``write(data, auto_start, timeout)``, ``start``, ``stop``, ``wait_until_done``,
``close``), ``task.ao_channels.add_ao_voltage_chan(physical_channel, min_val, max_val)``,
``task.ai_channels.add_ai_voltage_chan(physical_channel, terminal_config, min_val, max_val)``,
``task.timing.cfg_samp_clk_timing(rate, sample_mode=AcquisitionType.FINITE, samps_per_chan)``,
``task.timing.samp_clk_rate``, ``task.triggers.start_trigger.cfg_dig_edge_start_trig(
trigger_source)``, ``nidaqmx.system.Device`` (``product_type``, ``serial_num``,
``ao_voltage_rngs``), ``nidaqmx.errors.DaqError.error_code``; NI's example
``examples/synchronization/multi_function/ai_ao_sync.py`` (one task waits on the other's
``StartTrigger``, the waiting task is started first) and the finite examples
``examples/analog_out/gen_voltage_wfm_int_clk.py``, ``examples/analog_in/voltage_acq_int_clk.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from drivers.base import Detector, Drive, InstrumentError
from drivers.extras import require

#: DAQmx status codes after which closing and opening the task again may help: samples not
#: yet available (a read timeout), wait-until-done timeout, resource reserved, device not
#: accessible (unplugged USB), device absent.
RETRYABLE = frozenset({-200284, -200560, -50103, -201003, -200324})


class _DaqmxChannel:
    """What the AO and AI drivers share: one task with one channel on a named device."""

    name: str
    task: Any
    reported: ClassVar[tuple[str, ...]] = ("channel", "rate")

    def _setup(self, channel: str, sample_rate: float, timeout_s: float,
               rate_tolerance: float) -> None:
        self.nidaqmx = require("nidaqmx", "nidaq", self.name,
                               "Install NI-DAQmx: python -m nidaqmx installdriver")
        self.channel = str(channel)
        self.device, _, short = self.channel.partition("/")
        if not self.device or not short:
            raise ValueError(f"{self.name}: channel must be 'Device/channel' (e.g. 'Dev1/ao0'), "
                             f"got {channel!r}")
        if sample_rate <= 0 or timeout_s <= 0:
            raise ValueError(f"{self.name}: sample_rate and timeout_s must be positive")
        self.sample_rate = float(sample_rate)
        self.timeout_s = float(timeout_s)
        self.rate_tolerance = float(rate_tolerance)
        self.rate = 0.0  # the rate the card runs, read back at open
        self.task = None

    @contextlib.contextmanager
    def _daqmx(self, command: str) -> Iterator[None]:
        """Turn a DAQmx error into an ``InstrumentError`` naming the channel and status code."""
        try:
            yield
        except self.nidaqmx.errors.DaqError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InstrumentError(self.name, f"{self.channel}: {first} (DAQmx error "
                                  f"{exc.error_code})", command,
                                  retryable=exc.error_code in RETRYABLE) from exc

    def connect(self) -> None:
        try:
            self.task = self.nidaqmx.Task()
        except self.nidaqmx.errors.DaqNotFoundError as exc:
            raise InstrumentError(self.name, f"the NI-DAQmx runtime is not installed ({exc}); "
                                  f"install it: python -m nidaqmx installdriver", "Task()",
                                  retryable=False) from exc

    def disconnect(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.close()

    def identify(self) -> str:
        with self._daqmx("Device"):
            device = self.nidaqmx.system.Device(self.device)
            return f"NI {device.product_type} S/N {device.serial_num:X} ({self.device})"

    def _time(self, samples: int) -> None:
        """Finite timing of ``samples`` samples on the card's clock; checks the rate it runs."""
        constants = self.nidaqmx.constants
        self.task.timing.cfg_samp_clk_timing(self.sample_rate,
                                             sample_mode=constants.AcquisitionType.FINITE,
                                             samps_per_chan=samples)
        self.rate = float(self.task.timing.samp_clk_rate)
        if abs(self.rate / self.sample_rate - 1) > self.rate_tolerance:
            raise InstrumentError(self.name, f"{self.device} cannot clock "
                                  f"{self.sample_rate:g} S/s: nearest {self.rate:g} S/s "
                                  f"(tolerance {self.rate_tolerance:g})", "cfg_samp_clk_timing",
                                  retryable=False)


class DaqmxAO(_DaqmxChannel, Drive):
    """One AO channel of an NI-DAQmx card playing each batch as one finite generation."""

    def __init__(self, name: str, channels: int, limits: tuple[float, float], channel: str,
                 sample_rate: float, timeout_s: float = 10.0,
                 rate_tolerance: float = 1e-3) -> None:
        super().__init__(name, channels, limits)
        self._setup(channel, sample_rate, timeout_s, rate_tolerance)
        self._started = False

    def configure(self) -> None:
        with self._daqmx("add_ao_voltage_chan"):
            ranges = self.nidaqmx.system.Device(self.device).ao_voltage_rngs
            lo, hi = self.limits
            if not any(a <= lo and hi <= b for a, b in zip(ranges[::2], ranges[1::2],
                                                          strict=True)):
                raise InstrumentError(self.name, f"limits [{lo:g}, {hi:g}] V fit none of "
                                      f"{self.device}'s AO ranges {ranges}",
                                      "add_ao_voltage_chan", retryable=False)
            self.task.ao_channels.add_ao_voltage_chan(self.channel, min_val=lo, max_val=hi)
            self._time(self.channels)
        self._started = False

    def _output(self, patterns: np.ndarray) -> None:
        wave = np.ascontiguousarray(patterns, dtype=np.float64).reshape(-1)
        with self._daqmx("write"):
            if self._started:  # the previous generation ends with its acquisition
                self.task.wait_until_done(timeout=self.timeout_s)
                self.task.stop()
                self._started = False
            self._time(wave.size)
            self.task.write(wave, auto_start=False, timeout=self.timeout_s)
            self.task.start()
            self._started = True


class DaqmxAI(_DaqmxChannel, Detector):
    """One AI channel of an NI-DAQmx card, acquiring each batch on the AO's start trigger."""

    def __init__(self, name: str, samples: int, channel: str, sample_rate: float,
                 range: tuple[float, float] = (-10.0, 10.0), terminal: str = "DEFAULT",
                 trigger: str | None = None, timeout_s: float = 10.0,
                 rate_tolerance: float = 1e-3) -> None:
        super().__init__(name, samples)
        self._setup(channel, sample_rate, timeout_s, rate_tolerance)
        self.range = (float(range[0]), float(range[1]))
        terminals = self.nidaqmx.constants.TerminalConfiguration
        if terminal not in terminals.__members__:
            raise ValueError(f"{name}: terminal must be one of "
                             f"{sorted(terminals.__members__)}, got {terminal!r}")
        self.terminal = terminals[terminal]
        self.trigger = trigger or f"/{self.device}/ao/StartTrigger"

    def configure(self) -> None:
        with self._daqmx("add_ai_voltage_chan"):
            self.task.ai_channels.add_ai_voltage_chan(
                self.channel, terminal_config=self.terminal, min_val=self.range[0],
                max_val=self.range[1])
            self.task.triggers.start_trigger.cfg_dig_edge_start_trig(self.trigger)
            self._time(self.samples)

    def arm(self, shots: int) -> None:
        super().arm(shots)
        with self._daqmx("start"):
            self.task.stop()
            self._time(shots * self.samples)
            self.task.start()  # armed: waits for the trigger

    def read(self) -> np.ndarray:
        shots = self.armed("read")
        count = shots * self.samples
        with self._daqmx("read"):
            data = self.task.read(number_of_samples_per_channel=count,
                                  timeout=self.timeout_s + count / self.rate)
            self.task.stop()
        trace = np.asarray(data, dtype=np.float64)
        if trace.size != count:
            raise InstrumentError(self.name, f"{self.channel}: read {trace.size} samples, "
                                  f"expected {count}", "read")
        return trace.reshape(shots, self.samples)
