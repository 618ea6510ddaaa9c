"""``nidaqmx.Task`` with its channel collections, timing and start trigger (the signatures of
nidaqmx-python's ``task/_task.py``, ``task/_timing.py``,
``task/triggering/_start_trigger.py`` and ``task/collections/_a[io]_channel_collection.py``)."""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np

from . import _hardware
from .constants import (
    READ_ALL_AVAILABLE,
    WAIT_INFINITELY,
    AcquisitionType,
    Edge,
    TerminalConfiguration,
    VoltageUnits,
)
from .error_codes import DAQmxErrors
from .errors import DaqError, DaqReadError, DaqResourceWarning, DaqWriteError


class _Unset:
    def __repr__(self):
        return "<unset>"


NUM_SAMPLES_UNSET = _Unset()
AUTO_START_UNSET = _Unset()
_names = itertools.count()
_open_names: set[str] = set()


class _Channel:
    def __init__(self, physical, name, kind, min_val, max_val, terminal_config=None):
        self.physical, self.name, self.kind = physical, name or physical, kind
        self.device, _, self.short = physical.partition("/")
        self.min_val, self.max_val = float(min_val), float(max_val)
        self.terminal_config = terminal_config


class _ChannelCollection:
    kind = ""

    def __init__(self, task):
        self._task = task

    def _add(self, physical_channel, name, min_val, max_val, terminal_config=None):
        task = self._task
        task._check()
        if task._running:
            task._raise_running()
        device, _, short = str(physical_channel).partition("/")
        info = _hardware.device(device, task.name)
        if str(physical_channel) not in info[f"{self.kind}_physical_chans"]:
            raise DaqError(f"Physical channel specified does not exist on this device.\n\n"
                           f"Physical Channel Name: {short}\nDevice: {device}",
                           DAQmxErrors.PHYSICAL_CHAN_DOES_NOT_EXIST, task.name)
        if any(c.physical == physical_channel for c in task._channels):
            raise DaqError(f"Channel already in the task: {physical_channel}",
                           DAQmxErrors.CHAN_ALREADY_IN_TASK, task.name)
        if task._channels:
            raise NotImplementedError("the fake nidaqmx supports one channel per task")
        channel = _Channel(str(physical_channel), name, self.kind, min_val, max_val,
                           terminal_config)
        task._channels.append(channel)
        return channel

    def __len__(self):
        return sum(c.kind == self.kind for c in self._task._channels)

    @property
    def channel_names(self):
        return [c.name for c in self._task._channels if c.kind == self.kind]


class AOChannelCollection(_ChannelCollection):
    kind = "ao"

    def add_ao_voltage_chan(self, physical_channel, name_to_assign_to_channel="", min_val=-10.0,
                            max_val=10.0, units=VoltageUnits.VOLTS, custom_scale_name=""):
        if units is not VoltageUnits.VOLTS:
            raise NotImplementedError("the fake nidaqmx supports VoltageUnits.VOLTS only")
        return self._add(physical_channel, name_to_assign_to_channel, min_val, max_val)


class AIChannelCollection(_ChannelCollection):
    kind = "ai"

    def add_ai_voltage_chan(self, physical_channel, name_to_assign_to_channel="",
                            terminal_config=TerminalConfiguration.DEFAULT, min_val=-5.0,
                            max_val=5.0, units=VoltageUnits.VOLTS, custom_scale_name=""):
        if units is not VoltageUnits.VOLTS:
            raise NotImplementedError("the fake nidaqmx supports VoltageUnits.VOLTS only")
        if not isinstance(terminal_config, TerminalConfiguration):
            raise TypeError(f"terminal_config must be a TerminalConfiguration, got "
                            f"{terminal_config!r}")
        return self._add(physical_channel, name_to_assign_to_channel, min_val, max_val,
                         terminal_config)


class Timing:
    def __init__(self, task):
        self._task = task
        self._rate = None  # requested; None: on-demand timing
        self._source = ""
        self._mode = AcquisitionType.FINITE
        self._samps = 1000

    def cfg_samp_clk_timing(self, rate, source="", active_edge=Edge.RISING,
                            sample_mode=AcquisitionType.FINITE, samps_per_chan=1000):
        task = self._task
        task._check()
        if task._running:
            task._raise_running()
        if sample_mode is not AcquisitionType.FINITE:
            raise NotImplementedError("the fake nidaqmx supports AcquisitionType.FINITE only")
        if int(samps_per_chan) < 0:
            raise DaqError(f"Requested value is not a supported value for this property.\n\n"
                           f"Property: DAQmx_SampQuant_SampPerChan\nRequested Value: "
                           f"{samps_per_chan}", DAQmxErrors.INVALID_ATTRIBUTE_VALUE, task.name)
        self._rate, self._source = float(rate), str(source)
        self._mode, self._samps = sample_mode, int(samps_per_chan)

    @property
    def samp_clk_rate(self):
        """The rate the card runs: its 100 MHz timebase divided by a whole number."""
        self._task._check()
        if self._rate is None:
            return 0.0
        timebase = self._task._device()["timebase"]
        return timebase / max(1, round(timebase / self._rate))

    @property
    def samp_clk_src(self):
        return self._source

    @property
    def samp_quant_samp_per_chan(self):
        self._task._check()
        return self._samps

    @property
    def samp_quant_samp_mode(self):
        return self._mode


class StartTrigger:
    def __init__(self, task):
        self._task = task
        self._source = None

    def cfg_dig_edge_start_trig(self, trigger_source, trigger_edge=Edge.RISING):
        self._task._check()
        if self._task._running:
            self._task._raise_running()
        self._source = str(trigger_source)

    def disable_start_trig(self):
        self._task._check()
        self._source = None

    @property
    def dig_edge_src(self):
        return self._source or ""


class Triggers:
    def __init__(self, task):
        self._start_trigger = StartTrigger(task)

    @property
    def start_trigger(self):
        return self._start_trigger


class Task:
    """A DAQmx task: ``with nidaqmx.Task() as task: ...`` or ``task.close()``."""

    def __init__(self, new_task_name="", *, grpc_options=None):
        name = new_task_name or f"_unnamedTask<{next(_names)}>"
        if name in _open_names:
            raise DaqError(f"Task cannot be created because a task with this name already "
                           f"exists.\n\nTask Name: {name}", DAQmxErrors.DUPLICATE_TASK)
        _open_names.add(name)
        self._handle, self._saved_name = name, name
        self._channels: list[_Channel] = []
        self._ao_channels = AOChannelCollection(self)
        self._ai_channels = AIChannelCollection(self)
        self._timing = Timing(self)
        self._triggers = Triggers(self)
        self._buffer: np.ndarray | None = None
        self._running = False
        self._t_start: float | None = None  # device time the task started; None: armed
        self._rate = 0.0
        self._data: np.ndarray | None = None  # an acquisition, once read
        self._pos = 0
        self._ready = 0.0  # monotonic time the last sample of the acquisition is taken
        self._per_sample = 0.0

    # -- the task object ---------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, type, value, traceback):
        self.close()

    def __repr__(self):
        return f"Task(name={self._saved_name})"

    @property
    def name(self):
        self._check()
        return self._handle

    @property
    def channel_names(self):
        return [c.name for c in self._channels]

    @property
    def number_of_channels(self):
        return len(self._channels)

    @property
    def devices(self):
        from .system import Device

        return [Device(name) for name in dict.fromkeys(c.device for c in self._channels)]

    @property
    def ao_channels(self):
        return self._ao_channels

    @property
    def ai_channels(self):
        return self._ai_channels

    @property
    def timing(self):
        return self._timing

    @property
    def triggers(self):
        return self._triggers

    def clear(self):
        if self._handle is None:
            warnings.warn(f'Attempted to close NI-DAQmx task of name "{self._saved_name}" but '
                          f"task was already closed.", DaqResourceWarning, stacklevel=2)
            return
        if self._running:
            self.stop()
        _open_names.discard(self._handle)
        self._handle = None

    close = clear

    # -- checks ------------------------------------------------------------------------------

    def _check(self):
        if self._handle is None:
            raise DaqError("Task specified is invalid or does not exist.",
                           DAQmxErrors.INVALID_TASK)

    def _raise_running(self):
        raise DaqError("Specified operation cannot be performed while the task is running.",
                       DAQmxErrors.CAN_NOT_PERFORM_OP_WHILE_TASK_RUNNING, self._handle)

    def _channel(self, kind):
        channels = [c for c in self._channels if c.kind == kind]
        return channels[0] if channels else None

    def _device(self):
        return _hardware.device(self._channels[0].device, self._handle)

    def _verify(self):
        """What NI-DAQmx checks when a task is verified (at start): rates, ranges, routes."""
        channel, info, timing = self._channels[0], self._device(), self._timing
        limit = info["ao_max_rate" if channel.kind == "ao" else "ai_max_single_chan_rate"]
        if timing._rate is not None and not 0 < timing._rate <= limit:
            raise DaqError(f"Requested value is not a supported value for this property.\n\n"
                           f"Property: DAQmx_SampClk_Rate\nRequested Value: {timing._rate:g}\n"
                           f"Maximum Value: {limit:g}\nChannel Name: {channel.name}",
                           DAQmxErrors.INVALID_ATTRIBUTE_VALUE, self._handle)
        ranges = info[f"{channel.kind}_voltage_rngs"]
        if not any(lo <= channel.min_val and channel.max_val <= hi
                   for lo, hi in zip(ranges[::2], ranges[1::2], strict=True)):
            prop = "AO.Max" if channel.kind == "ao" else "AI.Max"
            raise DaqError(f"Requested value is not a supported value for this property.\n\n"
                           f"Property: DAQmx_{prop}\nRequested Value: {channel.max_val:g}\n"
                           f"Channel Name: {channel.name}", DAQmxErrors.INVALID_ATTRIBUTE_VALUE,
                           self._handle)
        for terminal in (self._triggers.start_trigger._source, timing._source or None):
            if terminal is not None and self._terminal(terminal) not in info["terminals"]:
                raise DaqError(f"Source terminal to be routed could not be found on the "
                               f"device.\n\nSource Terminal: {terminal}\nDevice: {info['name']}",
                               DAQmxErrors.INVALID_ROUTING_SOURCE_TERMINAL_NAME_ROUTING,
                               self._handle)
        if self._triggers.start_trigger._source is not None and timing._rate is None:
            raise DaqError("Start trigger cannot be configured when sample timing is on "
                           "demand.", DAQmxErrors.TRIG_WHEN_ON_DEMAND_SAMP_TIMING, self._handle)

    def _terminal(self, name):
        return name if name.startswith("/") else f"/{self._channels[0].device}/{name}"

    # -- start, stop, wait -------------------------------------------------------------------

    def start(self):
        self._check()
        if self._running:
            self._raise_running()
        if not self._channels:
            raise DaqError("Task contains no channels.", DAQmxErrors.UNKNOWN, self._handle)
        self._verify()
        channel = self._channels[0]
        if channel.kind == "ao":
            if self._buffer is None:
                raise DaqError("Generation cannot be started, because the output buffer is "
                               "empty.", DAQmxErrors.OUTPUT_BUFFER_EMPTY, self._handle)
            _hardware.reserve_ao(channel.device, self, self._handle)
        self._running = True
        self._data, self._pos = None, 0
        waits_for = self._triggers.start_trigger._source or self._timing._source or None
        if waits_for is not None:
            self._t_start = None
            _hardware.wait_for(self._terminal(waits_for), self)
        else:
            self._triggered(None, None)

    def _triggered(self, t, clock_rate):
        """Start (now, or at device time ``t`` of a trigger edge) and fire the task's own
        start trigger and sample clock lines."""
        channel, bus = self._channels[0], _hardware.bus()
        rate = self._timing.samp_clk_rate
        if self._timing._source and clock_rate:
            rate = clock_rate  # samples on another task's clock
        if channel.kind == "ao":
            wave = np.resize(self._buffer, self._timing._samps)  # regenerates a short buffer
            t = bus.call("nidaqmx", "generate", channel.short, rate, wave, t)
        elif t is None:
            t = bus.call("nidaqmx", "now")
        self._t_start, self._rate = t, rate
        for line in ("StartTrigger", "SampleClock"):
            _hardware.fire(f"/{channel.device}/{channel.kind}/{line}", t, rate)

    def stop(self):
        self._check()
        if not self._running:
            return
        channel = self._channels[0]
        if channel.kind == "ao":
            if self._t_start is not None:
                _hardware.bus().call("nidaqmx", "abort", channel.short)
            _hardware.release_ao(self)
        _hardware.forget(self)
        self._running, self._t_start, self._data = False, None, None

    def _done_at(self):
        """Monotonic time the finite task ends; None while waiting for its trigger."""
        if self._t_start is None:
            return None
        samples = self._timing._samps
        wait = _hardware.bus().call("nidaqmx", "wait_until", self._t_start + samples / self._rate)
        return time.monotonic() + wait

    def is_task_done(self):
        self._check()
        done = self._done_at() if self._running else time.monotonic()
        return done is not None and done <= time.monotonic()

    def wait_until_done(self, timeout=10.0):
        self._check()
        if not self._running:
            return
        done = self._done_at()
        remaining = None if done is None else done - time.monotonic()
        if remaining is None or (timeout != WAIT_INFINITELY and remaining > timeout):
            time.sleep(max(0.0, timeout))
            raise DaqError("Wait Until Done did not indicate all samples were acquired or "
                           "generated within the timeout.",
                           DAQmxErrors.WAIT_UNTIL_DONE_DOES_NOT_INDICATE_DONE, self._handle)
        time.sleep(max(0.0, remaining))

    # -- write and read ----------------------------------------------------------------------

    def write(self, data, auto_start=AUTO_START_UNSET, timeout=10.0):
        self._check()
        channel = self._channel("ao")
        if channel is None:
            raise DaqError("Write cannot be performed, because there are no output channels in "
                           "this task.", DAQmxErrors.WRITE_NO_OUTPUT_CHANS_IN_TASK, self._handle)
        values = np.asarray(data, dtype=np.float64)
        if values.ndim > 1:
            raise DaqError(f"Write cannot be performed, because the number of channels in the "
                           f"data does not match the number of channels in the task.\n\n"
                           f"Number of Channels in Task: 1\nNumber of Channels in Data: "
                           f"{values.shape[0]}", DAQmxErrors.WRITE_NUM_CHANS_MISMATCH,
                           self._handle)
        values = values.reshape(-1)
        if auto_start is AUTO_START_UNSET:
            auto_start = values.size <= 1
        if self._running:
            self._raise_running()
        if values.size and (values.min() < channel.min_val or values.max() > channel.max_val):
            raise DaqWriteError(f"Attempted writing analog data that is too large or too "
                                f"small.\n\nChannel Name: {channel.name}\nMinimum Value: "
                                f"{channel.min_val:g}\nMaximum Value: {channel.max_val:g}",
                                DAQmxErrors.INVALID_AO_DATA_WRITE, 0, self._handle)
        if self._timing._rate is None and values.size > 1 and not auto_start:
            raise DaqWriteError("Write cannot be performed when the auto start input to DAQmx "
                                "Write is false, task is not running, and timing for the task "
                                "is not configured or Timing Type is set to On Demand.",
                                DAQmxErrors.CANNOT_WRITE_WHEN_AUTO_START_FALSE_AND_TASK_NOT_RUNNING,
                                0, self._handle)
        self._buffer = values.copy()
        if auto_start:
            if self._timing._rate is None:
                raise NotImplementedError("the fake nidaqmx has no on-demand output")
            self.start()
        return int(values.size)

    def read(self, number_of_samples_per_channel=NUM_SAMPLES_UNSET, timeout=10.0):
        self._check()
        channel = self._channel("ai")
        if channel is None:
            raise DaqError("Read failed, because there are no channels in this task from which "
                           "data can be read.", DAQmxErrors.READ_NO_INPUT_CHANS_IN_TASK,
                           self._handle)
        if self._timing._rate is None:
            raise NotImplementedError("the fake nidaqmx has no on-demand input")
        if not self._running:
            self.start()
        total, n = self._timing._samps, number_of_samples_per_channel
        want = 1 if n is NUM_SAMPLES_UNSET else total - self._pos if n == READ_ALL_AVAILABLE \
            else int(n)
        if self._t_start is None:  # armed, and the trigger never came
            self._time_out(timeout, 0)
        if self._data is None:
            self._acquire(channel, total)
        if self._pos >= total:
            raise DaqReadError("Attempted to read a sample beyond the final sample acquired. "
                               "The acquisition has stopped, therefore the sample specified "
                               "by the combination of position and offset will never be "
                               "available.", DAQmxErrors.SAMPLES_WILL_NEVER_BE_AVAILABLE, 0,
                               self._handle)
        take = min(want, total - self._pos)
        ready = self._ready - (total - self._pos - take) * self._per_sample
        wait = ready - time.monotonic()
        if timeout != WAIT_INFINITELY and wait > timeout:
            available = total - self._pos - int((self._ready - time.monotonic() - timeout)
                                                / self._per_sample)
            self._time_out(timeout, max(0, min(take, available)))
        time.sleep(max(0.0, wait))
        out = self._data[self._pos:self._pos + take]
        self._pos += take
        return float(out[0]) if n is NUM_SAMPLES_UNSET else out.tolist()

    def _acquire(self, channel, total):
        hi = max(abs(channel.min_val), abs(channel.max_val))
        ranges = self._device()["ai_voltage_rngs"][1::2]
        full_scale = min(r for r in ranges if r >= hi)
        data, wait, per_sample = _hardware.bus().call(
            "nidaqmx", "acquire", channel.short, self._t_start, self._rate, total, full_scale)
        self._data, self._ready, self._per_sample = data, time.monotonic() + wait, per_sample

    def _time_out(self, timeout, read):
        if timeout == WAIT_INFINITELY:
            raise NotImplementedError("the fake nidaqmx would wait for ever here")
        time.sleep(max(0.0, timeout))
        raise DaqReadError("Some or all of the samples requested have not yet been acquired.\n\n"
                           "To wait for the samples to become available use a longer read "
                           "timeout or read later in your program.",
                           DAQmxErrors.SAMPLES_NOT_YET_AVAILABLE, read, self._handle)
