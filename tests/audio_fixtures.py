"""Test signals and files: click trains, tones, noise, and fake service results.

A fake service result is made the way the real service makes one: the parts are mixed down to mono,
resampled with soxr to 48 kHz, optionally shifted/padded/trimmed or slowed (drift), and written as
float WAV or MP3 (libsndfile's LAME). Everything is deterministic (seeded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
import soxr
from numpy.typing import NDArray

Audio = NDArray[np.float64]
SERVICE_RATE = 48_000


def click_train(
    samplerate: int, seconds: float, *, seed: int = 1, amplitude: float = 0.8
) -> tuple[Audio, NDArray[np.int64]]:
    """Single-sample clicks at irregular gaps (60–240 ms, so no lag looks like another); (signal, positions)."""
    rng = np.random.default_rng(seed)
    frames = round(samplerate * seconds)
    positions: list[int] = []
    at = int(0.05 * samplerate)
    while at < frames - int(0.02 * samplerate):
        positions.append(at)
        at += int(rng.uniform(0.06, 0.24) * samplerate)
    signal = np.zeros(frames)
    signal[positions] = amplitude * rng.choice([-1.0, 1.0], size=len(positions))
    return signal, np.array(positions, dtype=np.int64)


def tone(samplerate: int, seconds: float, freq: float, amplitude: float = 0.5, phase: float = 0.0) -> Audio:
    t = np.arange(round(samplerate * seconds)) / samplerate
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def noise(samplerate: int, seconds: float, channels: int = 1, *, seed: int = 2, amplitude: float = 0.2) -> Audio:
    data = np.random.default_rng(seed).uniform(-amplitude, amplitude, (round(samplerate * seconds), channels))
    return np.asarray(data[:, 0] if channels == 1 else data, dtype=np.float64)


def low_noise(samplerate: int, seconds: float, *, seed: int = 3, amplitude: float = 0.3) -> Audio:
    """Noise below ~300 Hz: correlates over a wide lag, so a drifting copy still matches."""
    white = np.random.default_rng(seed).standard_normal(round(samplerate * seconds) + 4096)
    kernel = np.hanning(samplerate // 300)
    smooth = np.convolve(white, kernel / kernel.sum(), mode="same")[4096:]
    return np.asarray(amplitude * smooth / np.max(np.abs(smooth)), dtype=np.float64)


def clicky_pink_noise(samplerate: int, seconds: float, *, seed: int = 8, click: float = 0.6) -> Audio:
    """Pink-ish noise at -26 dBFS RMS with a loud click about every second (at a varying sub-second place)."""
    frames = round(samplerate * seconds)
    white = np.random.default_rng(seed).standard_normal(frames)
    pink = np.asarray(scipy.signal.lfilter([1.0], [1.0, -0.95], white), dtype=np.float64)
    pink *= 0.05 / pink.std()
    for second in range(1, int(seconds) - 1):
        pink[second * samplerate + second * 37] += click
    return pink


def lag_at(signal: Audio, reference: Audio, start: int, length: int) -> int:
    """Samples `signal` lies behind `reference` over [start, start + length) (+ = late), by cross-correlation."""
    xcorr = scipy.signal.correlate(signal[start : start + length], reference[start : start + length], method="fft")
    return int(np.argmax(xcorr)) - (length - 1)


def write_audio(path: Path, data: Audio, samplerate: int, subtype: str = "PCM_24", fmt: str | None = None) -> Path:
    sf.write(str(path), data, samplerate, subtype=subtype, format=fmt)
    return path


def read_audio(path: Path, dtype: str = "float64") -> tuple[NDArray[np.generic], int]:
    data, rate = sf.read(str(path), dtype=dtype, always_2d=True)
    return data, int(rate)


def _service_mono(part: Audio, source_rate: int, rate: int, speed: float) -> Audio:
    mono = part.mean(axis=1) if part.ndim == 2 else part
    # speed > 1: the result plays slower than the source (its content drifts later and later)
    in_rate = source_rate / speed
    if in_rate == rate:
        return mono.astype(np.float64)
    return np.asarray(soxr.resample(mono.astype(np.float64), in_rate, rate), dtype=np.float64)


def fake_service_result(
    target_part: Audio,
    residual_part: Audio,
    source_rate: int,
    workdir: Path,
    *,
    shift: int = 0,
    pad_end: int = 0,
    trim_end: int = 0,
    fmt: str = "WAV",
    rate: int = SERVICE_RATE,
    speed: float = 1.0,
    name: str = "result",
) -> tuple[Path, Path]:
    """(target file, residual file) as the service would return them. `shift` > 0 = late, at `rate`."""
    paths = []
    for label, part in (("target", target_part), ("residual", residual_part)):
        mono = _service_mono(part, source_rate, rate, speed)
        if shift > 0:
            mono = np.concatenate((np.zeros(shift), mono))
        elif shift < 0:
            mono = mono[-shift:]
        if trim_end:
            mono = mono[:-trim_end]
        mono = np.concatenate((mono, np.zeros(pad_end)))
        if fmt == "MP3":
            path = workdir / f"{name}.{label}.mp3"
            sf.write(str(path), np.clip(mono, -1.0, 1.0), rate, format="MP3")
        else:
            path = workdir / f"{name}.{label}.wav"
            sf.write(str(path), mono.astype(np.float32), rate, subtype="FLOAT")
        paths.append(path)
    return paths[0], paths[1]


def through_service(mono: Audio, samplerate: int) -> Audio:
    """`mono` as the service can hold it: through 48 kHz and back to `samplerate` (no content above 24 kHz)."""
    there = soxr.resample(mono.astype(np.float64), samplerate, SERVICE_RATE)
    back = np.asarray(soxr.resample(there, SERVICE_RATE, samplerate), dtype=np.float64)
    return np.pad(back, (0, max(0, len(mono) - len(back))))[: len(mono)]


def band_level_db(x: NDArray[np.floating], samplerate: int, low: float, high: float) -> float:
    """Power of `x` between `low` and `high` Hz (Welch estimate), in dB."""
    freqs, power = scipy.signal.welch(np.asarray(x, dtype=np.float64), samplerate, nperseg=8192)
    in_band = float(power[(freqs >= low) & (freqs < high)].sum())
    return 10 * np.log10(in_band) if in_band > 0 else -np.inf


def peak_positions(signal: Audio, expected: NDArray[np.int64], search: int = 40) -> NDArray[np.int64]:
    """Where the biggest |sample| is within ±search of each expected click position."""
    found = []
    for at in expected:
        lo, hi = max(0, at - search), min(len(signal), at + search + 1)
        found.append(lo + int(np.argmax(np.abs(signal[lo:hi]))))
    return np.array(found, dtype=np.int64)


def level_dbfs(x: NDArray[np.floating]) -> float:
    power = float(np.mean(np.square(np.asarray(x, dtype=np.float64))))
    return 10 * np.log10(power) if power > 0 else -np.inf
