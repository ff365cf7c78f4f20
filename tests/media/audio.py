"""Audio as audio, for the media tests: make tones, and tell by FFT which tones a signal holds.

A test says "the agent heard 440 Hz and 2 kHz and not 1 kHz" as
`assert tones_in(agent_out) == {440, 2000}` (or `level_at(pcm, 1000) < SILENT`), rather than
comparing bytes, so that a test states what a listener hears and survives G.711's quantization.

All PCM is 16-bit signed little-endian mono unless said otherwise. numpy is a test-only
dependency; the daemon never imports it.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

RATE = 8000
FRAME_BYTES = 320  # 20 ms at 8 kHz, 16-bit
FULL_SCALE = 32768.0

AMPLITUDE = 8000
"""Default tone amplitude: -12 dBFS, loud enough to be clear, quiet enough that three summed
tones (24000 peak) do not clip."""
HEARD = -30.0
"""dBFS above which a tone counts as present (a default tone is at -12 dBFS)."""
SILENT = -50.0
"""dBFS below which a tone counts as absent. G.711's quantization products of a default tone
stay under -55 dBFS (the loudest: A-law folds a 1 kHz tone's 5th harmonic onto 3 kHz at -58)."""
CANDIDATES = (440, 1000, 2000)
"""The tests' cast: caller 440 Hz, agent 1 kHz, supervisor 2 kHz."""


def tone(freq: float, seconds: float, rate: int = RATE, amplitude: float = AMPLITUDE) -> bytes:
    """A sine of `freq` Hz, `seconds` long, peak `amplitude`, as 16-bit LE PCM."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    samples = np.round(amplitude * np.sin(2 * math.pi * freq * t))
    return samples.astype("<i2").tobytes()


def silence(seconds: float, rate: int = RATE) -> bytes:
    return bytes(2 * round(seconds * rate))


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def frames(pcm: bytes, size: int = FRAME_BYTES) -> Iterator[bytes]:
    """Consecutive 20 ms frames of `pcm` (a short tail is dropped)."""
    for start in range(0, len(pcm) - size + 1, size):
        yield pcm[start : start + size]


def _spectrum(pcm: bytes, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and peak-amplitude-calibrated magnitudes (a sine of amplitude A reads A)."""
    x = samples(pcm)
    if len(x) < 64:
        raise ValueError(f"{len(x)} samples are too few to tell tones apart")
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return freqs, spectrum


def _db(amplitude: float) -> float:
    return 20 * math.log10(max(amplitude, 1e-9) / FULL_SCALE)


def level_at(pcm: bytes, freq: float, rate: int = RATE) -> float:
    """The level of the `freq` component in dBFS (a full-scale sine reads 0 dB).

    The peak within +-2 bins (and at least +-10 Hz) of `freq` is taken, so a tone between bins
    is not under-read.
    """
    freqs, spectrum = _spectrum(pcm, rate)
    width = max(2 * (freqs[1] - freqs[0]), 10.0)
    near = (freqs >= freq - width) & (freqs <= freq + width)
    return _db(float(spectrum[near].max()))


def tones_in(
    pcm: bytes,
    candidates: Iterable[float] = CANDIDATES,
    rate: int = RATE,
    threshold: float = HEARD,
) -> set[float]:
    """Which of the `candidates` frequencies are present above `threshold` dBFS."""
    return {f for f in candidates if level_at(pcm, f, rate) > threshold}


def dominant(pcm: bytes, rate: int = RATE, threshold: float = HEARD) -> set[int]:
    """Every spectral peak above `threshold` dBFS, as whole Hz: a signal's tones, unprompted.

    A peak is a local maximum of the windowed spectrum; its neighbours within 20 Hz are the same
    tone's main lobe and are not reported again.
    """
    freqs, spectrum = _spectrum(pcm, rate)
    floor = FULL_SCALE * 10 ** (threshold / 20)
    found: list[tuple[float, float]] = []
    for i in np.flatnonzero(spectrum > floor):
        lo, hi = max(i - 1, 0), min(i + 2, len(spectrum))
        if spectrum[i] == spectrum[lo:hi].max():
            found.append((float(freqs[i]), float(spectrum[i])))
    peaks: list[tuple[float, float]] = []
    for f, a in sorted(found, key=lambda p: -p[1]):
        if all(abs(f - g) > 20 for g, _ in peaks):
            peaks.append((f, a))
    return {round(f) for f, _ in peaks}


def rms_db(pcm: bytes) -> float:
    """Overall RMS level in dBFS (digital silence reads very low)."""
    x = samples(pcm)
    return _db(float(np.sqrt(np.mean(x * x))) * math.sqrt(2)) if len(x) else _db(0.0)


class WavInfo(NamedTuple):
    channels: int
    sampwidth: int
    rate: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def read_wav(path: Path | str) -> tuple[WavInfo, list[bytes]]:
    """A WAV file's parameters and its channels, each as mono 16-bit PCM."""
    with wave.open(str(path), "rb") as w:
        info = WavInfo(w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes())
        raw = w.readframes(info.frames)
    if info.sampwidth != 2:
        raise ValueError(f"{path}: {info.sampwidth * 8}-bit samples, expected 16")
    interleaved = np.frombuffer(raw, dtype="<i2")
    channels = [interleaved[c :: info.channels].tobytes() for c in range(info.channels)]
    return info, channels
