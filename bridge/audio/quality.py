"""Does the result look like a separation of THIS source? Measures of the service's target and residual
against the source, and the quality flags they give (issue #23):

- `target-silent`: the target is below -50 dBFS RMS while the source is not (what SAM Audio often gives
  for a single-speaker prompt);
- `target-is-everything`: the residual is below -50 dBFS RMS while the source is not;
- `target-unlikely`: the target does not look like a part of the source (SAM Audio returns random audio
  for 10-20 % of crops where the prompted sound is absent). Two measures on 2048-point STFT frames (Hann) of
  the mono source S and the aligned mono target T, 40 Hz to 20 kHz:
    explained   = Σ min(|T|², 2·|S|²) / Σ |T|²: the share of the target's energy the source holds in the same
                  time-frequency bins (a part of the source is ≤ the source, bin by bin; 3 dB of slack for a
                  model's level error);
    correlation = the correlation of T's and S's levels in dB over the bins where the target sounds (within
                  30 dB of its frame's strongest bin) and is not masked (no more than 10 dB below the source
                  there): where it is heard, a part of the source has the source's shape in time and
                  frequency; random audio has its own.
  Flagged when explained < EXPLAINED_MIN or correlation < CORRELATION_MIN (both chosen on labelled cases,
  `benchmarks/bench_quality_flags.py`; rates in the README).

Streaming: constant memory whatever the length (a few sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from numpy.typing import NDArray

SILENT_DBFS = -50.0
EXPLAINED_MIN = 0.6
CORRELATION_MIN = 0.5
LEVEL_SLACK = 2.0  # a target up to 3 dB louder than the source in a bin still counts (a level error)
N_FFT = 2048
LOW_HZ, HIGH_HZ = 40.0, 20_000.0  # the bins judged: what the service hears and returns
_FLOOR = 1e-12  # power below which a band counts as empty (-120 dB)
_ACTIVE = 1e-3  # a bin is judged where the target is within 30 dB of its frame's strongest bin
_AUDIBLE = 0.1  # ... and no more than 10 dB below the source in that bin
_STEADY = 1.0  # dB²: levels varying less than this (1 dB) count as steady
_DB_PER_NEPER = 10.0 / math.log(10.0)  # 10·log10(p) = 10/ln(10) · ln(p)


@dataclass(frozen=True)
class QualityReport:
    source_dbfs: float
    target_dbfs: float
    residual_dbfs: float
    explained: float  # 0..1 (1 when the target is silent: nothing to explain)
    correlation: float  # -1..1 (1 when there was nothing to correlate)

    @property
    def flags(self) -> tuple[str, ...]:
        if self.source_dbfs < SILENT_DBFS:
            return ()  # a silent source: `silent-source` says it all
        flags = []
        if self.target_dbfs < SILENT_DBFS:
            flags.append("target-silent")
        elif self.explained < EXPLAINED_MIN or self.correlation < CORRELATION_MIN:
            flags.append("target-unlikely")
        if self.residual_dbfs < SILENT_DBFS:
            flags.append("target-is-everything")
        return tuple(flags)

    def as_dict(self) -> dict[str, float | None]:
        def finite(value: float) -> float | None:
            return round(value, 4) if math.isfinite(value) else None

        return {"source_dbfs": finite(self.source_dbfs), "target_dbfs": finite(self.target_dbfs),
                "residual_dbfs": finite(self.residual_dbfs), "explained": finite(self.explained),
                "correlation": finite(self.correlation)}


class QualityMeter:
    """Feed aligned mono blocks (source, service target, service residual) of any size; then `report()`."""

    def __init__(self, samplerate: int) -> None:
        self._window = np.hanning(N_FFT).astype(np.float32)
        freqs = np.fft.rfftfreq(N_FFT, 1.0 / samplerate)
        top = min(HIGH_HZ, samplerate / 2)
        self._bins = slice(int(np.searchsorted(freqs, LOW_HZ)), int(np.searchsorted(freqs, top)))
        self._pending = np.zeros((2, 0))  # source and target samples not yet a whole frame
        self._squares = np.zeros(3)  # Σ x² of source, target, residual
        self._count = 0
        self._explained = np.zeros(2)  # Σ min(T, 2S), Σ T
        self._sums = np.zeros(6)  # n, Σx, Σy, Σxy, Σx², Σy² over the judged bins (x: target dB, y: source dB)

    def feed(self, source: NDArray[np.floating], target: NDArray[np.floating],
             residual: NDArray[np.floating]) -> None:
        # one row at a time, each summed as numpy sums a contiguous row: no stacked copy of the three
        self._squares += [np.square(x, dtype=np.float64).sum() for x in (source, target, residual)]
        count = len(source)
        self._count += count
        kept = self._pending.shape[1]
        data = np.empty((2, kept + count))
        data[:, :kept] = self._pending
        data[0, kept:] = source
        data[1, kept:] = target
        whole = data.shape[1] // N_FFT * N_FFT
        if whole:
            self._frames(data[:, :whole].reshape(2, -1, N_FFT))
        self._pending = data[:, whole:]

    def _frames(self, frames: NDArray[np.float64]) -> None:
        # Levels need no more than float32: windowing, powers and logarithms in float32 cost a sixth of
        # float64 (numpy's float32 log is vectorised, log10 is not); only the sums are float64.
        windowed = np.empty(frames.shape, np.float32)
        np.copyto(windowed, frames, casting="same_kind")
        windowed *= self._window
        spectra = sfft.rfft(windowed, axis=-1, overwrite_x=True)
        power = np.square(spectra.real)
        power += np.square(spectra.imag)
        source, target = power[0][:, self._bins], power[1][:, self._bins]
        self._explained += (np.minimum(target, LEVEL_SLACK * source).sum(dtype=np.float64),
                            target.sum(dtype=np.float64))
        judged = target >= _ACTIVE * target.max(axis=1, keepdims=True)  # the target's own sound, not its floor
        judged &= target > _FLOOR
        judged &= target >= _AUDIBLE * source  # masked by the rest of the source: its level cannot follow
        x = _decibels(target[judged])
        y = _decibels(source[judged])
        self._sums += (x.size, x.sum(), y.sum(), np.dot(x, y), np.dot(x, x), np.dot(y, y))

    def report(self) -> QualityReport:
        if self._pending.shape[1] >= N_FFT // 4:  # a last partial frame, zero padded
            padded = np.zeros((2, N_FFT))
            padded[:, : self._pending.shape[1]] = self._pending
            self._frames(padded.reshape(2, 1, N_FFT))
            self._pending = np.zeros((2, 0))
        rms = np.sqrt(self._squares / max(self._count, 1))
        dbfs = [20 * math.log10(value) if value > 0 else -math.inf for value in rms]
        explained = float(self._explained[0] / self._explained[1]) if self._explained[1] > _FLOOR else 1.0
        return QualityReport(dbfs[0], dbfs[1], dbfs[2], explained, self._correlation())

    def _correlation(self) -> float:
        n, sx, sy, sxy, sxx, syy = self._sums
        if n < 16:
            return 1.0  # nothing of the target to judge: nothing contradicts it
        cov = sxy / n - (sx / n) * (sy / n)
        var_x, var_y = max(sxx / n - (sx / n) ** 2, 0.0), max(syy / n - (sy / n) ** 2, 0.0)
        if var_x < _STEADY and var_y < _STEADY:
            return 1.0  # one level everywhere in both: the same flat shape
        return float(np.clip(cov / math.sqrt(max(var_x, _STEADY) * max(var_y, _STEADY)), -1.0, 1.0))


def _decibels(power: NDArray[np.float32]) -> NDArray[np.float64]:
    """10·log10(power + floor), by the natural log (see `_frames`), as float64 for the sums."""
    levels = np.log(power + np.float32(_FLOOR))
    decibels: NDArray[np.float64] = np.multiply(levels, _DB_PER_NEPER, dtype=np.float64)
    return decibels
