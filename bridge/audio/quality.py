"""Does the result look like a separation of THIS source? Measures of the service's target and residual
against the source, and the quality flags they give (issue #23):

- `target-silent`: the target is below -50 dBFS RMS while the source is not (what SAM Audio often gives
  for a single-speaker prompt);
- `target-is-everything`: the residual is below -50 dBFS RMS while the source is not;
- `target-unlikely`: the target does not look like a part of the source (SAM Audio returns random audio
  for 10-20 % of crops where the prompted sound is absent). Two measures on 2048-point STFT frames of the
  mono source S and the aligned mono target T, each frame's power split into 32 log-spaced bands:
    explained   = Σ min(|T|², 2·|S|²) / Σ |T|²  over all bins: the share of the target's energy the source
                  holds in the same time-frequency bins (a part of the source is ≤ the source, bin by bin; 3 dB
                  of slack for a model's level error);
    correlation = per band, the correlation over time of T's and S's band levels in dB (frames where the
                  target has energy in that band), averaged with the target's energy as weight: a part of
                  the source rises and falls with it.
  Flagged when explained < EXPLAINED_MIN or correlation < CORRELATION_MIN (both chosen on labelled cases,
  `benchmarks/quality_flags.py`; rates in the README).

Streaming: constant memory whatever the length (a few hundred floats of sums).
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
BANDS = 32
_FLOOR = 1e-12  # power below which a band counts as empty (-120 dB)
_ACTIVE = 1e-3  # a band takes part in the correlation when the target holds ≥ 1e-3 of its frame's peak band


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
        self._window = np.hanning(N_FFT).astype(np.float64)
        freqs = np.fft.rfftfreq(N_FFT, 1.0 / samplerate)
        edges = np.geomspace(40.0, min(20000.0, samplerate / 2), BANDS + 1)
        # bands are runs of neighbouring bins: band b is bins [lo[b], hi[b]) (empty when narrower than a bin)
        bounds = np.searchsorted(freqs, edges)
        self._lo, self._hi = bounds[:-1], bounds[1:]
        self._pending = np.zeros((3, 0))
        self._squares = np.zeros(3)  # Σ x² of source, target, residual
        self._count = 0
        self._explained = np.zeros(2)  # Σ min(T, S), Σ T
        self._sums = np.zeros((6, BANDS))  # n, Σx, Σy, Σxy, Σx², Σy² per band (x: target dB, y: source dB)
        self._target_energy = np.zeros(BANDS)

    def feed(self, source: NDArray[np.floating], target: NDArray[np.floating],
             residual: NDArray[np.floating]) -> None:
        block = np.stack([np.asarray(source, np.float64), np.asarray(target, np.float64),
                          np.asarray(residual, np.float64)])
        self._squares += np.square(block).sum(axis=1)
        self._count += block.shape[1]
        data = np.concatenate((self._pending, block), axis=1) if self._pending.size else block
        whole = data.shape[1] // N_FFT * N_FFT
        if whole:
            self._frames(data[:2, :whole].reshape(2, -1, N_FFT))
        self._pending = data[:, whole:]

    def _frames(self, frames: NDArray[np.float64]) -> None:
        spectra = sfft.rfft((frames * self._window).astype(np.float32), axis=-1)  # float32: plenty for levels
        power = np.square(spectra.real, dtype=np.float64) + np.square(spectra.imag, dtype=np.float64)
        source, target = power[0], power[1]
        self._explained += (np.minimum(target, LEVEL_SLACK * source).sum(), target.sum())
        running = np.zeros((2, power.shape[1], power.shape[2] + 1))
        np.cumsum(power, axis=-1, out=running[:, :, 1:])  # band sums as differences: no BLAS, no loop
        s_band, t_band = running[:, :, self._hi] - running[:, :, self._lo]  # (frames, BANDS) each
        active = t_band >= _ACTIVE * t_band.max(axis=1, keepdims=True)
        active &= t_band > _FLOOR
        x = 10 * np.log10(t_band + _FLOOR)
        y = 10 * np.log10(s_band + _FLOOR)
        w = active.astype(np.float64)
        self._sums += np.stack([w.sum(0), (w * x).sum(0), (w * y).sum(0), (w * x * y).sum(0),
                                (w * x * x).sum(0), (w * y * y).sum(0)])
        self._target_energy += t_band.sum(axis=0)

    def report(self) -> QualityReport:
        if self._pending.shape[1] >= N_FFT // 4:  # a last partial frame, zero padded
            padded = np.zeros((2, N_FFT))
            padded[:, : self._pending.shape[1]] = self._pending[:2]
            self._frames(padded.reshape(2, 1, N_FFT))
            self._pending = np.zeros((3, 0))
        rms = np.sqrt(self._squares / max(self._count, 1))
        dbfs = [20 * math.log10(value) if value > 0 else -math.inf for value in rms]
        explained = float(self._explained[0] / self._explained[1]) if self._explained[1] > _FLOOR else 1.0
        return QualityReport(dbfs[0], dbfs[1], dbfs[2], explained, self._correlation())

    def _correlation(self) -> float:
        n, sx, sy, sxy, sxx, syy = self._sums
        usable = n >= 8
        if not usable.any():
            return 1.0
        n, sx, sy, sxy, sxx, syy = (a[usable] for a in (n, sx, sy, sxy, sxx, syy))
        cov = sxy / n - (sx / n) * (sy / n)
        var_x = np.maximum(sxx / n - (sx / n) ** 2, 0.0)
        var_y = np.maximum(syy / n - (sy / n) ** 2, 0.0)
        steady = (var_x < 1e-6) & (var_y < 1e-6)  # both level in time (a held tone): same shape, counts as 1
        r = np.where(steady, 1.0, cov / np.sqrt(np.maximum(var_x * var_y, 1e-12)))
        weight = self._target_energy[usable]
        return float(np.sum(np.clip(r, -1, 1) * weight) / weight.sum()) if weight.sum() > 0 else 1.0
