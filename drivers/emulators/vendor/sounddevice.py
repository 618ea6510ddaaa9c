"""A fake of python-sounddevice (``sounddevice`` on PyPI, spatialaudio/python-sounddevice) for
the convenience functions a measurement uses, with emulated hardware behind it
(``drivers.emulators.hardware.SoundCard``, reached over ``drivers.emulators.bus``).

Follows ``src/sounddevice.py``: ``query_devices(device=None, kind=None)``,
``query_hostapis``, ``check_input_settings`` / ``check_output_settings``, ``default``,
``playrec(data, samplerate=None, channels=None, dtype=None, out=None, input_mapping=None,
output_mapping=None, blocking=False, **kwargs)`` (``kwargs``: the ``Stream`` parameters
``device``, ``latency``, ``blocksize``, ``extra_settings``, ...), ``wait()``, ``stop()``,
``get_status()``, ``PortAudioError``, ``CallbackFlags``. As in the library, ``playrec``
returns at once with an array that is only valid once ``wait()`` returned (here it is filled
then), channel mappings count from 1, float64 data is played as float32, and ``wait()``
returns ``CallbackFlags`` only if an over- or underflow happened. Not provided: the stream
classes (``Stream``, ``InputStream``, ...), ``play``, ``rec``, callbacks.
"""

from __future__ import annotations

import time

import numpy as np

from drivers.emulators.bus import Bus

__version__ = "0.5.5+labd.fake"

_FORMATS = ("float32", "int32", "int24", "int16", "int8", "uint8")
_STREAM_ARGS = {"blocksize", "device", "latency", "extra_settings", "finished_callback",
                "clip_off", "dither_off", "never_drop_input"}


class PortAudioError(Exception):
    def __str__(self):
        errormsg = self.args[0] if self.args else ""
        if len(self.args) > 1:
            errormsg = f"{errormsg} [PaErrorCode {self.args[1]}]"
        return errormsg


class CallbackStop(Exception):
    pass


class CallbackAbort(Exception):
    pass


class CallbackFlags:
    _NAMES = ("input_underflow", "input_overflow", "output_underflow", "output_overflow",
              "priming_output")

    def __init__(self, flags=0x0):
        self._flags = flags

    def __bool__(self):
        return bool(self._flags)

    def __repr__(self):
        return f"<sounddevice.CallbackFlags: {', '.join(self._set()) or 'no flags set'}>"

    def _set(self):
        return [n for i, n in enumerate(self._NAMES) if self._flags & (1 << i)]

    def __getattr__(self, name):
        if name in self._NAMES:
            return bool(self._flags & (1 << self._NAMES.index(name)))
        raise AttributeError(name)


class DeviceList(tuple):
    __slots__ = ()

    def __repr__(self):
        return "\n".join(f"  {d['index']:2d} {d['name']}, ALSA ({d['max_input_channels']} in, "
                         f"{d['max_output_channels']} out)" for d in self)


class _InputOutputPair:
    def __init__(self, value):
        self._pair = [value, value]

    def __getitem__(self, index):
        return self._pair[{"input": 0, "output": 1}.get(index, index)]

    def __setitem__(self, index, value):
        self._pair[{"input": 0, "output": 1}.get(index, index)] = value

    def __repr__(self):
        return repr(self._pair)


class _Default:
    _pairs = ("device", "channels", "dtype", "latency", "extra_settings")

    def __init__(self):
        self.reset()

    def reset(self):
        object.__setattr__(self, "device", _InputOutputPair(None))
        object.__setattr__(self, "channels", _InputOutputPair(None))
        object.__setattr__(self, "dtype", _InputOutputPair("float32"))
        object.__setattr__(self, "latency", _InputOutputPair("high"))
        object.__setattr__(self, "extra_settings", _InputOutputPair(None))
        self.samplerate = None
        self.blocksize = 0
        self.clip_off = self.dither_off = self.never_drop_input = False
        self.prime_output_buffers_using_stream_callback = False
        self.hostapi = 0

    def __setattr__(self, name, value):
        if name in self._pairs:
            pair = _InputOutputPair(None)
            pair[0], pair[1] = (value if isinstance(value, (tuple, list)) else (value, value))
            value = pair
        object.__setattr__(self, name, value)


default = _Default()


def _devices():
    return Bus.connect().call("sounddevice", "devices")


def _device_id(device, kind):
    """The index of ``device`` (index or name substrings) for ``kind`` ('input'/'output')."""
    devices = _devices()
    if device is None and kind is not None:
        device = default.device[kind]
    if device is None:
        device = next(d["index"] for d in devices if d["name"] == "default")
    if isinstance(device, (int, np.integer)):
        if not 0 <= device < len(devices):
            raise PortAudioError(f"Error querying device {device}")
        return int(device)
    words = str(device).lower().split()
    found = [d for d in devices if (kind is None or d[f"max_{kind}_channels"] > 0)
             and all(w in d["name"].lower() for w in words)]
    if not found:
        raise ValueError(f"No {kind or 'input/output'} device matching {device!r}")
    if len(found) > 1:
        raise ValueError(f"Multiple {kind or 'input/output'} devices found for {device!r}:\n"
                         + "\n".join(f"[{d['index']}] {d['name']}" for d in found))
    return found[0]["index"]


def query_devices(device=None, kind=None):
    if kind not in ("input", "output", None):
        raise ValueError(f"Invalid kind: {kind!r}")
    if device is None and kind is None:
        return DeviceList(query_devices(i) for i in range(len(_devices())))
    index = _device_id(device, kind)
    info = {k: v for k, v in _devices()[index].items() if k != "rates"}
    if kind and info["max_" + kind + "_channels"] < 1:
        raise ValueError(f"Not an {kind} device: {info['name']!r}")
    return info


def query_hostapis(index=None):
    api = {"name": "ALSA", "devices": [d["index"] for d in _devices()],
           "default_input_device": 2, "default_output_device": 2}
    return api if index == 0 else (api,) if index is None else _raise_hostapi(index)


def _raise_hostapi(index):
    raise PortAudioError(f"Error querying host API {index}")


def _check(kind, device, channels, dtype, samplerate):
    info = _devices()[_device_id(device, kind)]
    channels = default.channels[kind] if channels is None else channels
    if channels is not None and not 1 <= int(channels) <= info[f"max_{kind}_channels"]:
        raise PortAudioError("Error opening stream: Invalid number of channels", -9998)
    dtype = np.dtype(default.dtype[kind] if dtype is None else dtype).name
    if dtype not in _FORMATS and dtype != "float64":
        raise TypeError(f"Unsupported data type: {dtype!r}")
    rate = samplerate or default.samplerate or info["default_samplerate"]
    if int(rate) != rate or int(rate) not in info["rates"]:
        raise PortAudioError("Error opening stream: Invalid sample rate", -9997)
    return info, float(rate)


def check_input_settings(device=None, channels=None, dtype=None, extra_settings=None,
                         samplerate=None):
    _check("input", device, channels, dtype, samplerate)


def check_output_settings(device=None, channels=None, dtype=None, extra_settings=None,
                          samplerate=None):
    _check("output", device, channels, dtype, samplerate)


class _Call:
    """One playrec() in flight: the array it returned, filled when it is waited for."""

    def __init__(self, out, mapping, recording, ends):
        self.out, self.mapping, self.recording, self.ends = out, mapping, recording, ends
        self.status = CallbackFlags()
        self.done = False

    def wait(self):
        if not self.done:
            time.sleep(max(0.0, self.ends - time.monotonic()))
            for target, source in enumerate(self.mapping):
                self.out[:, target] = self.recording[:, source]
            self.done = True
        return self.status if self.status else None


_last = None


def _mapping(mapping, channels):
    if mapping is None:
        return np.arange(channels), channels
    mapping = np.atleast_1d(np.array(mapping, copy=True))
    if mapping.min() < 1:
        raise ValueError("channel numbers must not be < 1")
    return mapping - 1, int(mapping.max())


def playrec(data, samplerate=None, channels=None, dtype=None, out=None, input_mapping=None,
            output_mapping=None, blocking=False, **kwargs):
    global _last
    unknown = set(kwargs) - _STREAM_ARGS
    if unknown:
        raise TypeError(f"Stream.__init__() got an unexpected keyword argument "
                        f"{sorted(unknown)[0]!r}")
    stop()
    data = np.asarray(data)
    if data.ndim < 2:
        data = data.reshape(-1, 1)
    elif data.ndim > 2:
        raise ValueError("audio data to be played back must be one- or two-dimensional")
    out_map, out_channels = _mapping(output_mapping, data.shape[1])
    if data.shape[1] != 1 and data.shape[1] != len(out_map):
        raise ValueError("number of output channels != size of output mapping")
    if out is None:
        if channels is None:
            channels = default.channels["input"]
        if channels is None and input_mapping is None:
            raise TypeError("Unable to determine number of input channels")
        channels = len(np.atleast_1d(input_mapping)) if channels is None else channels
        out = np.empty((data.shape[0], channels), dtype or data.dtype, order="C")
    in_map, in_channels = _mapping(input_mapping, out.shape[1])
    if out.shape[1] != len(in_map):
        raise ValueError("number of input channels != size of input mapping")
    if out.shape[0] != data.shape[0]:
        raise ValueError("len(data) != len(out)")
    device = kwargs.get("device")
    pair = device if isinstance(device, (tuple, list)) else (device, device)
    _, rate = _check("input", pair[0], in_channels, out.dtype, samplerate)
    info, _ = _check("output", pair[1], out_channels, data.dtype, rate)
    played = np.zeros((data.shape[0], out_channels), np.float32)
    played[:, out_map] = data.astype(np.float32)
    recording, _, seconds = Bus.connect().call(
        "sounddevice", "playrec", info["index"], rate, played, in_channels,
        _latency(kwargs.get("latency", default.latency["output"]), info))
    _last = _Call(out, in_map, recording, time.monotonic() + seconds)
    if blocking:
        _last.wait()
    return out


def _latency(latency, info):
    if latency in ("low", "high"):
        return info[f"default_{latency}_output_latency"]
    return float(latency)


def wait(ignore_errors=True):
    if _last is not None:
        return _last.wait()
    return None


def stop(ignore_errors=True):
    global _last
    _last = None


def get_status():
    if _last is None:
        raise RuntimeError("play()/rec()/playrec() was not called yet")
    return _last.status


def sleep(msec):
    time.sleep(msec / 1000)


def get_portaudio_version():
    return 1246720, "PortAudio V19.7.0-devel (labd fake)"
