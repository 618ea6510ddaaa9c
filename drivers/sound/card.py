"""A sound card (``sounddevice``, PortAudio): a ``Drive`` on one output channel and a
``Detector`` on one input channel of the same device, measured together by one full-duplex
``sounddevice.playrec`` call per batch.

One batch: ``SoundOutput.output(patterns)`` hands the shots (volts, divided by the output's
``full_scale_v`` into digital full scale) to the card; ``SoundInput.read()`` plays::

    [marker chirp][guard][shot 1][shot 2]...[shot B][tail]

and records every input for as many frames. A sound card's round-trip latency (host API
buffers plus converters) differs from call to call, so every call is aligned on its marker: a
Hann-windowed chirp played on the ``reference`` output, which a cable brings straight back into
the ``reference`` input, found in the recording by cross-correlation: the call's latency to the
frame. (Finding the chirp through the rig itself, without the cable, does not work for a
resonant rig: what comes back is the chirp filtered by the plate, which correlates with the
chirp at 0.1, not a delay.)

Calibration: ``latency_frames`` (where the marker lands, measured on the lab's own machine)
and ``latency_tolerance_frames`` are stored in the detector's table. At open the driver plays
three markers and refuses to open if any lands outside ``latency_frames +- tolerance`` (another
device, buffer size or host API than the one calibrated), saying what it measured; without a
stored value it refuses too and prints the lines to add. During a batch a marker outside the
window, a marker not found, or an over- or underflow is a retryable ``InstrumentError``.

API as documented by python-sounddevice (``src/sounddevice.py``): ``playrec(data,
samplerate, channels, dtype, input_mapping, output_mapping, blocking, device=..., latency=...)``,
``wait()`` (returns ``CallbackFlags`` after an over- or underflow), ``query_devices(device,
kind)``, ``check_output_settings`` / ``check_input_settings(device, channels, dtype,
samplerate)``, ``PortAudioError``; the "Simultaneous Playback and Recording" usage in
``doc/usage.rst``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from drivers.base import Detector, Drive, InstrumentError
from drivers.extras import require

MARKER_HZ = (500.0, 8000.0)  # the chirp's band
SEARCH = 3  # markers played at open


def marker(frames: int, rate: float) -> np.ndarray:
    """The alignment marker: a linear chirp over ``MARKER_HZ``, Hann-windowed, peak 1."""
    t = np.arange(frames) / rate
    f0, f1 = MARKER_HZ
    sweep = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
    return sweep * np.hanning(frames)


def find_marker(recorded: np.ndarray, template: np.ndarray, lo: int, hi: int
                ) -> tuple[int, float]:
    """Where ``template`` starts in ``recorded`` between ``lo`` and ``hi`` (frames), and the
    normalised correlation there (1 for a perfect copy)."""
    lo, hi = max(lo, 0), min(hi, recorded.size - template.size)
    if hi < lo:
        return lo, 0.0
    segment = recorded[lo:hi + template.size]
    corr = np.correlate(segment, template, "valid")
    k = int(np.argmax(np.abs(corr)))
    window = segment[k:k + template.size]
    norm = float(np.linalg.norm(window) * np.linalg.norm(template)) or 1.0
    return lo + k, abs(float(corr[k])) / norm


class _Card:
    """One PortAudio device shared by the output and input driver that name it."""

    _cards: ClassVar[dict[str, _Card]] = {}

    def __init__(self, owner: str, device: str | int, sample_rate: float, latency: Any) -> None:
        self.sd = require("sounddevice", "sound", owner,
                          "Install PortAudio (Debian: apt-get install libportaudio2)")
        self.device, self.sample_rate, self.latency = device, float(sample_rate), latency
        self.output: SoundOutput | None = None
        self.pending: np.ndarray | None = None  # digital drive [B, T] of the next batch

    @classmethod
    def shared(cls, owner: str, device: str | int, sample_rate: float, latency: Any) -> _Card:
        card = cls._cards.get(str(device))
        if card is None:
            card = cls._cards[str(device)] = cls(owner, device, sample_rate, latency)
        elif (card.sample_rate, card.latency) != (float(sample_rate), latency):
            raise ValueError(f"{owner}: sample_rate {sample_rate:g} and latency {latency!r} "
                             f"conflict with the {card.sample_rate:g} and {card.latency!r} of "
                             f"the other driver on sound device {device!r}")
        return card

    @contextlib.contextmanager
    def portaudio(self, owner: str, command: str, retryable: bool = True) -> Iterator[None]:
        try:
            yield
        except (self.sd.PortAudioError, ValueError) as exc:
            raise InstrumentError(owner, f"sound device {self.device!r}: {exc}", command,
                                  retryable=retryable) from exc

    def check(self, owner: str, kind: str, channel: int) -> str:
        """Check that ``kind`` ('input'/'output') ``channel`` works at the card's rate; return
        the device's name."""
        with self.portaudio(owner, f"check_{kind}_settings", retryable=False):
            info = self.sd.query_devices(self.device, kind)
            available = info[f"max_{kind}_channels"]
            if not 1 <= channel <= available:
                raise InstrumentError(owner, f"{info['name']} has {available} {kind} "
                                      f"channels, configured channel {channel}",
                                      f"query_devices({self.device!r})", retryable=False)
            check = getattr(self.sd, f"check_{kind}_settings")
            check(device=self.device, channels=channel, dtype="float32",
                  samplerate=self.sample_rate)
            return str(info["name"])

    def playrec(self, owner: str, playback: np.ndarray, inputs: int) -> np.ndarray:
        """Play ``playback`` [frames, outputs] and record ``inputs`` channels as long."""
        with self.portaudio(owner, "playrec"):
            recording = self.sd.playrec(playback, samplerate=self.sample_rate, channels=inputs,
                                        dtype="float32", device=self.device,
                                        latency=self.latency)
            status = self.sd.wait()
        if status:
            raise InstrumentError(owner, f"sound device {self.device!r}: {status} during the "
                                  f"call; nothing was kept", "playrec")
        return np.asarray(recording, dtype=np.float64)


class SoundOutput(Drive):
    """One output channel of a sound card; ``full_scale_v`` is the volts at digital 1.0."""

    reported: ClassVar[tuple[str, ...]] = ("device", "channel", "sample_rate")

    def __init__(self, name: str, channels: int, limits: tuple[float, float],
                 device: str | int, channel: int = 1, full_scale_v: float = 1.0,
                 sample_rate: float = 48000.0, latency: str | float = "low") -> None:
        super().__init__(name, channels, limits)
        if max(abs(self.limits[0]), abs(self.limits[1])) > full_scale_v:
            raise ValueError(f"{name}: limits {self.limits} exceed the output's full scale "
                             f"+-{full_scale_v:g} V")
        self.card = _Card.shared(name, device, sample_rate, latency)
        self.device, self.channel, self.full_scale_v = device, int(channel), float(full_scale_v)
        self.sample_rate = float(sample_rate)

    def identify(self) -> str:
        return self.card.check(self.name, "output", self.channel)

    def configure(self) -> None:
        self.card.output = self

    def disconnect(self) -> None:
        self.card.pending = None

    def _output(self, patterns: np.ndarray) -> None:
        self.card.pending = (patterns / self.full_scale_v).astype(np.float32)


class SoundInput(Detector):
    """One input channel of a sound card, aligned per call on a marker (see the module)."""

    reported: ClassVar[tuple[str, ...]] = ("device", "channel", "latency_frames", "measured")

    def __init__(self, name: str, samples: int, device: str | int, channel: int = 1,
                 full_scale_v: float = 1.0, sample_rate: float = 48000.0,
                 latency: str | float = "low", reference: tuple[int, int] = (2, 2),
                 latency_frames: int | None = None,
                 latency_tolerance_frames: int = 64, marker_frames: int = 1024,
                 guard_frames: int = 4800) -> None:
        super().__init__(name, samples)
        self.card = _Card.shared(name, device, sample_rate, latency)
        self.device, self.channel, self.full_scale_v = device, int(channel), float(full_scale_v)
        self.reference = (int(reference[0]), int(reference[1]))
        self.latency_frames = latency_frames
        self.tolerance = int(latency_tolerance_frames)
        self.template = marker(int(marker_frames), self.card.sample_rate)
        self.lead = int(marker_frames) + int(guard_frames)  # frames before the first shot
        self.measured: list[int] = []

    def identify(self) -> str:
        names = {self.card.check(self.name, "input", self.channel),
                 self.card.check(self.name, "input", self.reference[1]),
                 self.card.check(self.name, "output", self.reference[0])}
        return " / ".join(sorted(names))

    def configure(self) -> None:
        """Play ``SEARCH`` markers alone and check where they land against the calibration."""
        self.measured = []
        for _ in range(SEARCH):
            silence = np.zeros((0, 0), np.float32)
            recording = self._play(silence, tail=int(self.card.sample_rate))
            lag, quality = self._marker(recording, 0, self.card.sample_rate)
            if quality < 0.5:
                raise InstrumentError(self.name, f"marker not found (correlation "
                                      f"{quality:.2f}): {self._advice()}", "playrec",
                                      retryable=False)
            self.measured.append(lag)
        low, high = min(self.measured), max(self.measured)
        if self.latency_frames is None:
            raise InstrumentError(self.name, f"no latency calibration: markers landed at "
                                  f"{self.measured} frames; add latency_frames = "
                                  f"{int(np.median(self.measured))} and latency_tolerance_frames"
                                  f" = {max(64, 4 * (high - low))} to the detector's table",
                                  "playrec", retryable=False)
        expected = self.latency_frames
        if low < expected - self.tolerance or high > expected + self.tolerance:
            raise InstrumentError(self.name, f"latency {self.measured} frames, calibrated "
                                  f"{expected} +- {self.tolerance}: the device, its buffer size "
                                  f"or host API changed since the calibration; measure again",
                                  "playrec", retryable=False)

    def _advice(self) -> str:
        out_ch, in_ch = self.reference
        return f"is the cable from output {out_ch} to input {in_ch} in place?"

    def _play(self, drive: np.ndarray, tail: int | None = None) -> np.ndarray:
        """The recording [frames, inputs] of the marker, then ``drive`` [B, T] (digital), then
        ``tail`` frames of silence (default: the calibrated latency and its tolerance)."""
        out_ch, in_ch = self.reference
        drive_ch = self.card.output.channel if self.card.output is not None else 1
        if tail is None:
            tail = (self.latency_frames or 0) + self.tolerance + 64
        frames = self.lead + drive.size + tail
        playback = np.zeros((frames, max(out_ch, drive_ch)), np.float32)
        playback[:self.template.size, out_ch - 1] = 0.5 * self.template
        playback[self.lead:self.lead + drive.size, drive_ch - 1] = drive.reshape(-1)
        inputs = max(self.channel, in_ch)
        return self.card.playrec(self.name, playback, inputs)

    def _marker(self, recording: np.ndarray, expected: int, window: float) -> tuple[int, float]:
        in_ch = self.reference[1]
        lo, hi = int(expected - window), int(expected + window)
        return find_marker(recording[:, in_ch - 1], self.template, lo, hi)

    def read(self) -> np.ndarray:
        shots = self.armed("playrec")
        drive, self.card.pending = self.card.pending, None
        if drive is None or drive.shape[0] != shots:
            raise InstrumentError(self.name, "read() without the output of this batch",
                                  "playrec", retryable=False)
        recording = self._play(drive)
        lag, quality = self._marker(recording, self.latency_frames or 0, self.tolerance)
        if quality < 0.5:
            raise InstrumentError(self.name, f"marker not found within +-{self.tolerance} "
                                  f"frames of {self.latency_frames} (correlation "
                                  f"{quality:.2f}): {self._advice()}", "playrec")
        stride = drive.shape[1]
        if self.samples > stride:
            raise InstrumentError(self.name, f"{self.samples} samples per shot, but shots are "
                                  f"{stride} frames long", "playrec", retryable=False)
        start = self.lead + lag
        trace = recording[start:start + shots * stride, self.channel - 1]
        starts = np.arange(shots) * stride
        return self.full_scale_v * trace[starts[:, None] + np.arange(self.samples)]
