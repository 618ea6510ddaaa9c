"""Emulated hardware behind the fake vendor libraries: an NI DAQ card, a sound card and an Ocean
spectrometer, each wired to one simulated bench (``drivers.emulators.rig``).

The fakes in ``drivers/emulators/vendor/`` hold each library's API and its rules (argument
names, task states, errors); these classes are what sits at the other end of the USB cable:
channels and ranges, a sample clock, converters, latency, a CCD that integrates in free-running
windows, and the bench's physics between an output and an input. They are served to the fakes
over ``drivers.emulators.bus`` by ``drivers.emulators.hardware_server``.

Time: every device keeps ``Clock`` time, wall time since start times ``speed`` (``speed`` 1
for a rehearsal in real time, larger in tests: an acquisition of one second at 48 kS/s then
takes ``1 / speed`` s). A call that returns data also returns ``wait_s``, the wall seconds until
the hardware would have it; the fake library sleeps that long (or raises its timeout).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np

from drivers.emulators.rig import EmulatedRig
from drivers.physics.plate import highpass, highpass_alpha


class Clock:
    """Device time (s) since the hardware was switched on, running ``speed`` times wall time."""

    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = float(speed)
        self.start = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.start) * self.speed

    def wait_until(self, t: float) -> float:
        """Wall seconds from now until device time ``t`` (0 if past)."""
        return max(0.0, (t - self.now()) / self.speed)


def _quantise(volts: np.ndarray, full_scale: float, bits: int) -> np.ndarray:
    """Codes of a bipolar converter of ``bits`` over +-``full_scale``, clipped, as volts."""
    lsb = 2 * full_scale / 2 ** bits
    codes = np.clip(np.rint(volts / lsb), -2 ** (bits - 1), 2 ** (bits - 1) - 1)
    return codes * lsb


class Played:
    """What one output played, in device time, so that a response simulated from rest can
    start ``SETTLE_S`` earlier and carry on the ring-down of what came before: a plate rings
    on after a generation or a stream ends, and an emulator that forgot it would hide a
    ring-down pad too short for the next shot or the next batch.

    After a waveform ends the output holds its last sample (``hold``, a DAQ card's AO) or
    returns to 0 (a sound card's stream); before anything was played it is 0."""

    #: device seconds simulated before a response: far longer than any stand-in's ring-down
    #: (the plate's slowest mode decays in 35 ms: e^-28 after a second)
    SETTLE_S = 1.0

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.waves: list[tuple[float, float, np.ndarray]] = []  # (start, rate, volts)
        self.lock = threading.Lock()

    def record(self, t: float, rate: float, wave: np.ndarray) -> None:
        """``wave`` (volts at ``rate``) starts at device time ``t``; what ended more than
        ``SETTLE_S`` before is forgotten (but the one before ``t`` keeps its held level)."""
        with self.lock:
            recent = [i for i, (start, r, w) in enumerate(self.waves)
                      if start + w.size / r >= t - self.SETTLE_S]
            first = max(0, (recent[0] if recent else len(self.waves)) - 1)
            self.waves = [*self.waves[first:], (t, rate, np.asarray(wave, dtype=float))]

    def last(self) -> tuple[float, float, np.ndarray] | None:
        with self.lock:
            return self.waves[-1] if self.waves else None

    def cut(self, t: float) -> None:
        """The last waveform stops at device time ``t``: what was not yet played never is."""
        with self.lock:
            if self.waves:
                start, rate, wave = self.waves[-1]
                played = math.floor((t - start) * rate) + 1
                if played < wave.size:
                    self.waves[-1] = (start, rate, wave[:max(played, 1)])

    def at(self, times: np.ndarray) -> np.ndarray:
        """The output (volts) at device ``times``: the sample the waveform started last by
        then was playing (its last one held, or 0, once it ended)."""
        out = np.zeros(times.shape)
        with self.lock:
            waves = list(self.waves)
        for start, rate, wave in waves:  # in start order: a later waveform takes over
            now = times >= start
            n = np.floor((times[now] - start) * rate + 1e-6).astype(np.int64)
            value = wave[np.minimum(n, wave.size - 1)]
            out[now] = value if self.hold else np.where(n < wave.size, value, 0.0)
        return out


class DaqCard:
    """An X Series multifunction card (USB-6361 class): 2 AO at +-10 V / +-5 V, 16 AI with
    ranges +-0.1 .. +-10 V, 16 bits, sample clocks divided down from a 100 MHz timebase.

    ``ao`` is wired through the bench to ``ai``; other inputs read only their noise. An output
    holds its last sample after a finite generation (as the card does)."""

    AI_RANGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

    def __init__(self, rig: EmulatedRig, clock: Clock, name: str = "Dev1", ao: str = "ao0",
                 ai: str = "ai0") -> None:
        self.rig, self.clock, self.name = rig, clock, name
        self.wiring = (ao, ai)
        self.rng = np.random.default_rng([rig.bench.seed, 17])
        self.played = Played(hold=True)  # the wired AO

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "product_type": "USB-6361", "serial_num": 0x1F2A3B4,
            "ao_physical_chans": [f"{self.name}/ao{i}" for i in range(2)],
            "ai_physical_chans": [f"{self.name}/ai{i}" for i in range(16)],
            "ao_voltage_rngs": [-10.0, 10.0, -5.0, 5.0],
            "ai_voltage_rngs": [v for r in self.AI_RANGES for v in (-r, r)],
            "ao_max_rate": 2.86e6, "ai_max_single_chan_rate": 2.0e6, "timebase": 100e6,
            "terminals": [f"/{self.name}/{t}" for t in
                          ("ao/StartTrigger", "ai/StartTrigger", "ao/SampleClock",
                           "ai/SampleClock", "PFI0", "PFI1")],
        }

    def generate(self, channel: str, rate: float, waveform: np.ndarray,
                 t: float | None = None) -> float:
        """Start playing ``waveform`` (volts) on ``channel`` at device time ``t`` (default
        now: a trigger that already came); returns the start time."""
        t = self.clock.now() if t is None else t
        if channel == self.wiring[0]:
            self.played.record(t, rate, waveform)
        return t

    def now(self) -> float:
        return self.clock.now()

    def wait_until(self, t: float) -> float:
        return self.clock.wait_until(t)

    def abort(self, channel: str) -> None:
        """Stop ``channel``'s generation now: what was not yet played never is; the output
        holds the last sample played."""
        if channel == self.wiring[0]:
            self.played.cut(self.clock.now())

    def acquire(self, channel: str, t_start: float, rate: float, samples: int,
                full_scale: float) -> tuple[np.ndarray, float, float]:
        """``samples`` readings (volts) of ``channel`` from device time ``t_start`` at ``rate``,
        on the range +-``full_scale``; the wall seconds until the last one is taken, and the
        wall seconds per sample."""
        if channel == self.wiring[1] and self.played.last() is not None:
            volts = self._response(t_start, rate, samples)
        else:
            volts = np.zeros(samples)
        volts = volts + 2e-4 * full_scale * self.rng.standard_normal(samples)
        data = _quantise(np.clip(volts, -1.05 * full_scale, 1.05 * full_scale),
                         1.05 * full_scale, 16)
        return (data, self.clock.wait_until(t_start + samples / rate),
                1 / rate / self.clock.speed)

    def _response(self, t_start: float, rate: float, samples: int) -> np.ndarray:
        """The bench's output at the acquisition's sample instants, simulated on the grid of
        the last generation that started before the acquisition ended, from rest
        ``Played.SETTLE_S`` earlier (so the ring-down of earlier generations is in it)."""
        t_end = t_start + samples / rate
        with self.played.lock:
            waves = self.played.waves
            t_gen, ao_rate, wave = ([w for w in waves if w[0] < t_end] or waves[:1])[-1]
        first = math.floor((t_start - t_gen) * ao_rate + 1e-9)
        last = math.ceil((t_end - t_gen) * ao_rate) + 1
        lo = first - math.ceil(Played.SETTLE_S * ao_rate)
        n = np.arange(lo, max(last, lo + 1))
        drive = wave[np.clip(n, 0, wave.size - 1)]
        past = n < 0
        drive[past] = self.played.at(t_gen + n[past] / ao_rate)
        trace = self.rig.play(drive[None, :])[0]
        when = (t_start - t_gen + np.arange(samples) / rate) * ao_rate
        return trace[np.floor(when + 1e-9).astype(np.int64) - lo]


class SoundCard:
    """A USB audio interface (2 in, 2 out, 24 bit, AC coupled) among the host's devices.

    Output channel ``out`` (1-based) feeds the bench (amplifier and speaker), whose sensor is
    on input ``inp``; ``loopback`` = (output, input) is a cable from one output straight into
    one input. Full scale (digital 1.0) is ``out_fs`` volts out and ``in_fs`` volts in. The
    round-trip latency of a call is the host API's buffering plus the converters' delay plus a
    jitter that differs from call to call, as it does on a real host."""

    RATES = (44100, 48000, 88200, 96000, 176400, 192000)

    def __init__(self, rig: EmulatedRig, clock: Clock, out: int = 1, inp: int = 1,
                 loopback: tuple[int, int] | None = (2, 2)) -> None:
        self.rig, self.clock = rig, clock
        self.out, self.inp, self.loopback = out, inp, loopback
        rng = np.random.default_rng([rig.bench.seed, 23])
        self.out_fs = 1.0 * (1 + rng.uniform(-0.02, 0.02))
        self.in_fs = 1.0 * (1 + rng.uniform(-0.02, 0.02))
        self.converter_frames = int(rng.integers(30, 60))
        self.rng = rng
        self.played = Played(hold=False)  # output ``out``, into the bench

    def devices(self) -> list[dict[str, Any]]:
        """The host's devices as PortAudio lists them (``query_devices`` dictionaries)."""
        def device(index: int, name: str, ins: int, outs: int, low: float, high: float,
                   rate: float, rates: tuple[int, ...]) -> dict[str, Any]:
            return {"name": name, "index": index, "hostapi": 0, "max_input_channels": ins,
                    "max_output_channels": outs, "default_low_input_latency": low,
                    "default_low_output_latency": low, "default_high_input_latency": high,
                    "default_high_output_latency": high, "default_samplerate": rate,
                    "rates": list(rates)}

        return [
            device(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", 2, 2, 0.0087, 0.0348, 44100.0,
                   (44100, 48000)),
            device(1, "Scarlett 2i2 USB: Audio (hw:1,0)", 2, 2, 0.0029, 0.0213, 48000.0,
                   self.RATES),
            device(2, "default", 32, 32, 0.0087, 0.0348, 44100.0, self.RATES),
        ]

    def playrec(self, device: int, rate: float, data: np.ndarray, channels: int,
                latency_s: float) -> tuple[np.ndarray, int, float]:
        """Play ``data`` [frames, outputs] (digital, float32) on ``device`` and record
        ``channels`` inputs for as many frames; returns the recording, the call's round-trip
        latency (frames, for the emulator's own tests) and the wall seconds it takes."""
        frames = data.shape[0]
        played = np.zeros((frames, 2))
        played[:, :data.shape[1]] = np.clip(data[:, :2], -1.0, 1.0)
        volts_in = np.zeros((frames, 2))
        if device == 1:
            volts_out = self._ac_coupled(played * self.out_fs, rate)
            volts_in[:, self.inp - 1] = self._bench(volts_out[:, self.out - 1], rate)
            if self.loopback is not None:
                volts_in[:, self.loopback[1] - 1] = volts_out[:, self.loopback[0] - 1]
        jitter = 32 if latency_s <= 0.01 else 128
        delay = round(2 * latency_s * rate) + self.converter_frames \
            + int(self.rng.integers(0, jitter + 1))
        heard = self._ac_coupled(volts_in / self.in_fs, rate)
        heard += 1e-5 * self.rng.standard_normal(heard.shape)
        recording = np.zeros((frames, 2))
        if delay < frames:
            recording[delay:] = heard[:frames - delay]
        recording = _quantise(np.clip(recording, -1.0, 1.0), 1.0, 24)
        return (recording[:, :channels].astype(np.float32), delay,
                frames / rate / self.clock.speed)

    def _bench(self, drive: np.ndarray, rate: float) -> np.ndarray:
        """The bench's sensor (volts) while output ``out`` plays ``drive`` from now on, with
        the ring-down of the calls before (the output is silent between calls)."""
        t = self.clock.now()
        settle = math.ceil(Played.SETTLE_S * rate)
        past = self.played.at(t + np.arange(-settle, 0) / rate)
        self.played.record(t, rate, drive)
        return self.rig.play(np.concatenate([past, drive])[None, :])[0, settle:]

    @staticmethod
    def _ac_coupled(volts: np.ndarray, rate: float, corner_hz: float = 3.0) -> np.ndarray:
        """A first-order high-pass per channel (the coupling capacitors of a sound card's in-
        and outputs), from rest."""
        return highpass(np.ascontiguousarray(volts.T), highpass_alpha(corner_hz, rate)).T


class MaskLog:
    """The rig as a pulse-shaper emulator sees it, recording when each mask was set (device
    time), so that a spectrometer integrating meanwhile sees both masks."""

    def __init__(self, rig: EmulatedRig, clock: Clock) -> None:
        object.__setattr__(self, "rig", rig)
        object.__setattr__(self, "clock", clock)
        object.__setattr__(self, "history", [(-math.inf, np.zeros(rig.channels))])
        object.__setattr__(self, "lock", threading.Lock())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rig, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.rig, name, value)
        if name == "mask":
            with self.lock:
                self.history.append((self.clock.now(), np.array(value, dtype=float)))
                del self.history[:-256]

    def exposure(self, a: float, b: float) -> list[tuple[float, np.ndarray]]:
        """(share of [a, b), mask) for every mask held during the device-time interval."""
        with self.lock:
            history = list(self.history)
        shares = []
        for (t0, mask), (t1, _) in zip(history, [*history[1:], (math.inf, None)], strict=True):
            overlap = min(b, t1) - max(a, t0)
            if overlap > 0:
                shares.append((overlap / (b - a), mask))
        return shares or [(1.0, history[-1][1])]


class FlameSpectrometer:
    """An Ocean Insight Flame-S (USB2000+ class): 2048 pixels, 16 bit, integration 1 ms .. 655 s,
    electric dark pixels 6..20, wavelength and non-linearity coefficients in its EEPROM.

    The CCD free-runs: it integrates back-to-back windows of the integration time (a new time
    takes effect after the window in progress); a spectrum request returns the window in
    progress when it ends, so a request right after the light changed gets a window that saw
    both. The SH light of the bench (``MaskLog``, the mask the shaper held when) falls on the
    pixels between ``window_nm``; its counts are the bench's at ``REFERENCE_US`` of
    integration, scaled to the integration time, plus shot and read noise, an electronic
    offset, and the detector's non-linearity."""

    REFERENCE_US = 10000
    PIXELS = 2048
    DARK_PIXELS = tuple(range(6, 21))
    WAVELENGTH = (339.62, 0.38017, -1.5801e-5, -2.113e-10)  # nm = sum c_i pixel^i
    NONLINEARITY = (0.97103, 1.9847e-6, -8.8512e-11, 1.1371e-15)  # polynomial in counts

    def __init__(self, rig: MaskLog, clock: Clock, window_nm: tuple[float, float],
                 serial: str = "FLMS04211") -> None:
        self.rig, self.clock, self.serial = rig, clock, serial
        lo, hi = window_nm
        self.lit = np.flatnonzero((self.wavelengths() >= lo) & (self.wavelengths() <= hi))
        samples = rig.bench.samples
        if self.lit.size != samples:
            raise ValueError(f"the window {lo:g}-{hi:g} nm covers {self.lit.size} pixels of "
                             f"the emulated spectrometer, the rig's SHG has {samples}")
        rng = np.random.default_rng([rig.bench.seed, 29])
        self.offset = 1500.0 + 20.0 * rng.standard_normal(self.PIXELS)
        self.rng = rng
        self.schedule = [(0.0, 100000 * 1e-6)]  # (start, window length): 100 ms at power-up
        self.last_end = -math.inf

    def wavelengths(self) -> np.ndarray:
        pixel = np.arange(self.PIXELS, dtype=float)
        return sum(c * pixel ** i for i, c in enumerate(self.WAVELENGTH))

    def info(self) -> dict[str, Any]:
        return {"model": "FLAMES", "serial_number": self.serial, "pixels": self.PIXELS,
                "wavelength_coefficients": list(self.WAVELENGTH),
                "nonlinearity_coefficients": list(self.NONLINEARITY),
                "dark_pixels": list(self.DARK_PIXELS), "integration_limits": (1000, 655350000),
                "max_intensity": 65535.0}

    def set_integration(self, micros: int) -> None:
        """From the end of the window in progress on, integrate ``micros`` per window."""
        start, length = self.schedule[-1]
        now = self.clock.now()
        end = start + max(1, math.ceil((now - start) / length)) * length if now > start \
            else start
        self.schedule = [*self.schedule[-1:], (end, micros * 1e-6)]

    def spectrum(self) -> tuple[np.ndarray, float]:
        """The raw counts of the next window to end, and the wall seconds until it ends."""
        a, b = self._window(self.clock.now())
        if b <= self.last_end:
            a, b = self._window(self.last_end)
        self.last_end = b
        shares = self.rig.exposure(a, b)
        masks = np.stack([mask for _, mask in shares])
        light = np.zeros(self.PIXELS)
        light[self.lit] = np.tensordot([w for w, _ in shares], self.rig.play(masks), axes=1)
        light *= (b - a) / (self.REFERENCE_US * 1e-6)
        light += np.sqrt(np.maximum(light, 0.0) + 36.0) * self.rng.standard_normal(light.size)
        measured = light
        for _ in range(6):  # the detector's response: measured / poly(measured) = light
            measured = np.clip(light * np.polyval(self.NONLINEARITY[::-1], measured), 0, 7e4)
        raw = np.clip(np.rint(self.offset + measured), 0, 65535)
        return raw, self.clock.wait_until(b)

    def _window(self, t: float) -> tuple[float, float]:
        """The integration window in progress at device time ``t``."""
        start, length = self.schedule[0]
        if len(self.schedule) > 1 and t >= self.schedule[1][0]:
            start, length = self.schedule[1]
        k = math.floor((t - start) / length + 1e-12)
        return start + k * length, start + (k + 1) * length
