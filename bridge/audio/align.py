"""Where the service result sits against the source, measured, and the result put on the source's grid.

The service returns mono 48 kHz audio that may start late (mp3 encoder delay, ~1105 samples for LAME
at 48 kHz when the decoder does not strip it), early, or end a few ms short or long. We never assume
the offset: the service's own mix (target + residual) is resampled to the source rate with the same
kind of soxr stream the stems are made from, and compared at full resolution (float32 FFTs, no
decimation) with the source's mono mix over a window of up to 15 s, searching ±1 s. The lag is the peak
of the phase-transform cross-correlation (GCC-PHAT), which stays sharp on tonal or bass-heavy material;
the reported correlation is the plain normalised cross-correlation at that lag (0..1), over the band
the service can hold (up to 24 kHz: a hi-res source's ultrasonics are not counted as a mismatch). The first window
with signal sets the offset, however far in it is (silence is skipped a second at a time by the source's
RMS, without correlating); the last window of the segment, measured after that correction, gives the
drift. The result is then streamed block by block onto the source's grid.

A drift (a result running slightly fast or slow: the lag grows along the file) is corrected by
reading the result again at a rate scaled so that the two windows' lags meet (`drift_rate_scale`),
its start offset measured anew; the end is measured again to check.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft
import soundfile as sf
import soxr
from numpy.typing import NDArray

from bridge.audio.source import read_block
from bridge.common.errors import UnusableResult

Float32Array = NDArray[np.float32]
Float64Array = NDArray[np.float64]

WINDOW_SECONDS = 15.0  # length of each correlation window...
WINDOW_MAX_SAMPLES = 1 << 20  # ...capped so a 192/384 kHz source costs no more memory than 48 kHz
SEARCH_SECONDS = 1.0  # ± lag searched
SKIP_SECONDS = 1.0  # silence before the first signal is skipped in steps this long
WEAK_CORRELATION = 0.5
MAX_DRIFT = 0.01  # a result 1 % fast or slow is not a clock drift: flagged, never "corrected"
SIGNAL_FLOOR_DBFS = -60.0  # window RMS below this counts as "no signal to align on"
SERVICE_BANDWIDTH = 24_000.0  # Hz: the service works at 48 kHz, so its result holds nothing above this
_READ_BLOCK = 1 << 16


@dataclass(frozen=True)
class LagEstimate:
    lag: int  # candidate[n + lag] ≈ reference[n]: + means the candidate is late
    correlation: float  # normalised peak correlation, 0..1 (0 when there was no signal)
    has_signal: bool  # False when the reference window is (near) silent: the lag means nothing
    window_start: int = 0  # where the measured window starts in the segment (source samples)...
    window: int = 0  # ...and its length: the lag is that of the window's middle

    @property
    def centre(self) -> float:
        return self.window_start + self.window / 2


def mono_mix(block: NDArray[np.floating]) -> Float64Array:
    """(frames, channels) → (frames,) mean of the channels, float64."""
    if block.ndim == 1:
        return block.astype(np.float64)
    channels = block.shape[1]
    # a matrix product: numpy's mean over a short last axis is several times slower
    return np.asarray(block.astype(np.float64, copy=False) @ np.full(channels, 1.0 / channels))


def rms_dbfs(x: NDArray[np.floating]) -> float:
    if x.size == 0:
        return -math.inf
    power = float(np.mean(np.square(x, dtype=np.float64)))
    return 10.0 * math.log10(power) if power > 0 else -math.inf


def service_band(samplerate: int) -> float:
    """The share of a `samplerate` signal's band (0..Nyquist) that the service's 48 kHz result can hold."""
    return min(1.0, SERVICE_BANDWIDTH / (samplerate / 2))


def estimate_lag(
    reference: NDArray[np.floating], candidate: NDArray[np.floating], max_lag: int, band: float = 1.0
) -> LagEstimate:
    """Find the lag of `candidate` against `reference`.

    `candidate[j]` lies at time `j - max_lag` on the reference's clock and must be
    `len(reference) + 2 * max_lag` long (zeros where the candidate has no audio). `band` (0..1 of the
    Nyquist frequency): how much of the band the candidate can hold; the reported correlation compares
    only that much of the reference (a hi-res source's ultrasonics are not a mismatch).
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    n = len(ref)
    if len(cand) != n + 2 * max_lag:
        raise ValueError("candidate must be len(reference) + 2 * max_lag long")
    if n == 0 or rms_dbfs(ref) < SIGNAL_FLOOR_DBFS:
        return LagEstimate(0, 0.0, False)
    size = sfft.next_fast_len(len(cand), real=True)
    # float32 transforms: twice as fast as float64, and their rounding (~1e-7 of the peak) moves
    # neither the peak nor the reported correlation (energies below stay float64)
    ref_spectrum = sfft.rfft(ref.astype(np.float32), size)
    ref_energy = _band_energy(ref_spectrum, size, band) if band < 1.0 else float(np.dot(ref, ref))
    cross = np.conj(ref_spectrum, out=ref_spectrum)
    cross *= sfft.rfft(cand.astype(np.float32), size)
    xcorr = sfft.irfft(cross, size)[: 2 * max_lag + 1].copy()  # xcorr[k] = Σ ref[i]·cand[i + k]
    # The lag comes from the phase transform (GCC-PHAT): every frequency votes equally, so a sustained
    # tone or bass cannot outvote the transients with its near-equal peaks one period away.
    magnitude = np.abs(cross)
    floor = 1e-3 * float(magnitude.mean())
    if floor <= 0:
        return LagEstimate(0, 0.0, True)
    cross /= magnitude + floor
    del magnitude
    phat = sfft.irfft(cross, size)[: 2 * max_lag + 1]
    del cross
    best = int(np.argmax(phat))
    matched = cand[best : best + n]
    cand_energy = float(np.dot(matched, matched))
    denom = math.sqrt(ref_energy * cand_energy)
    correlation = float(xcorr[best]) / denom if denom > 0 else 0.0
    return LagEstimate(best - max_lag, min(1.0, max(0.0, correlation)), True)


def _band_energy(spectrum: NDArray[np.complexfloating], size: int, band: float) -> float:
    """Σx² of the part of a real signal below `band` · Nyquist, from its rfft of length `size` (Parseval)."""
    bins = min(len(spectrum) - 1, int(band * (size // 2)) + 1)  # never the Nyquist bin: it counts once
    power = np.square(spectrum[:bins].real, dtype=np.float64) + np.square(spectrum[:bins].imag, dtype=np.float64)
    return float(2.0 * power.sum() - power[0]) / size


class ResampledMono:
    """A service result file read block by block as mono float32 at `out_rate`, zeros after its end."""

    def __init__(self, path: Path, out_rate: int, rate_scale: float = 1.0) -> None:
        """`rate_scale`: read the file as if its rate were that much higher (a drift correction)."""
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise UnusableResult(
                f"The service sent back a result we cannot read ({path.name}).",
                "Run the separation again (it is sent anew and charged again); if it keeps failing, try the "
                "other result format (wav/mp3).",
            ) from exc
        in_rate = self._file.samplerate * rate_scale
        self._resampler = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32") if in_rate != out_rate else None
        self._pending: list[Float32Array] = []
        self._pending_len = 0
        self._ended = False
        self.samples_read = 0  # at the file's own rate, for the report

    def read(self, count: int) -> Float32Array:
        while self._pending_len < count and not self._ended:
            self._pull()
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        while filled < count and self._pending:
            head = self._pending[0]
            take = min(len(head), count - filled)
            out[filled : filled + take] = head[:take]
            filled += take
            if take == len(head):
                self._pending.pop(0)
            else:
                self._pending[0] = head[take:]
        self._pending_len -= filled
        return out

    def _pull(self) -> None:
        try:
            block = read_block(self._file, _READ_BLOCK, "float32")
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise UnusableResult(
                f"The service's result {Path(self._file.name).name} is damaged and cannot be decoded.",
                "Run the separation again (it is sent anew and charged again).",
            ) from exc
        last = len(block) < _READ_BLOCK
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if not np.isfinite(mono).all():  # a broken decode must not poison the stems with NaN
            mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
        self.samples_read += len(block)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=last)
        if len(mono):
            self._pending.append(np.ascontiguousarray(mono, dtype=np.float32))
            self._pending_len += len(mono)
        self._ended = last

    @property
    def declared_frames(self) -> int:
        return int(self._file.frames)

    def close(self) -> None:
        self._file.close()


class AlignedService:
    """Target and residual on the source's grid: `offset` samples skipped (late) or zero-padded (early)."""

    def __init__(self, target: Path, residual: Path, out_rate: int, offset: int = 0, rate_scale: float = 1.0) -> None:
        self.target = ResampledMono(target, out_rate, rate_scale)
        try:
            self.residual = ResampledMono(residual, out_rate, rate_scale)
        except BaseException:
            self.target.close()
            raise
        if self.target.declared_frames == 0 and self.residual.declared_frames == 0:
            self.close()
            raise UnusableResult("The service sent back an empty result.",
                                 "Run the separation again (it is sent anew and charged again).")
        self._lead_zeros = max(0, -offset)
        if offset > 0:
            self.target.read(offset)
            self.residual.read(offset)

    def read(self, count: int) -> tuple[Float32Array, Float32Array]:
        zeros = min(self._lead_zeros, count)
        self._lead_zeros -= zeros
        if zeros == 0:
            return self.target.read(count), self.residual.read(count)
        pad = np.zeros(zeros, dtype=np.float32)
        return (
            np.concatenate((pad, self.target.read(count - zeros))),
            np.concatenate((pad, self.residual.read(count - zeros))),
        )

    def close(self) -> None:
        self.target.close()
        self.residual.close()


def window_length(frames: int, samplerate: int) -> int:
    return min(frames, round(WINDOW_SECONDS * samplerate), WINDOW_MAX_SAMPLES)


def measure_start_offset(
    read_source_mono: Callable[[int], Float64Array],
    read_service_mix: Callable[[int], Float32Array],
    samplerate: int,
    frames: int,
) -> LagEstimate:
    """Offset of the service mix against the source, from the first window that has signal, however far
    into the segment it is (a dialogue track or a late entry may open with minutes of silence).

    Silent stretches are skipped a second at a time by the source's RMS alone (no correlation), and the
    window starts where the signal does. Both readers return the next `n` samples from the segment start
    (zeros past their ends).
    """
    window = window_length(frames, samplerate)
    max_lag = round(SEARCH_SECONDS * samplerate)
    step = max(1, min(window, round(SKIP_SECONDS * samplerate)))
    band = service_band(samplerate)
    source = np.zeros(0, np.float64)  # the segment from `start` on, as far as read
    # the service from `start - max_lag` on: nothing exists before the segment start, so zeros first
    service = np.zeros(max_lag, np.float32)
    start = 0

    def source_ahead(n: int) -> Float64Array:
        nonlocal source
        if len(source) < n:
            source = np.concatenate((source, read_source_mono(n - len(source))))
        return source[:n]

    def service_ahead(n: int) -> Float32Array:
        nonlocal service
        if len(service) < n:
            service = np.concatenate((service, read_service_mix(n - len(service))))
        return service[:n]

    def advance(n: int) -> None:
        nonlocal source, service, start
        source_ahead(n)
        service_ahead(n + max_lag)
        source, service, start = source[n:], service[n:], start + n

    while start < frames:
        length = min(window, frames - start)
        head = source_ahead(min(step, length))
        if rms_dbfs(head) < SIGNAL_FLOOR_DBFS:
            advance(len(head))
            continue
        estimate = estimate_lag(source_ahead(length), service_ahead(length + 2 * max_lag), max_lag, band)
        if not estimate.has_signal:  # a lone burst, too little over the whole window: align on its second
            length = len(head)
            estimate = estimate_lag(head, service_ahead(length + 2 * max_lag), max_lag, band)
        return dataclasses.replace(estimate, window_start=start, window=length)
    return LagEstimate(0, 0.0, False)


class DriftProbe:
    """Collects the last window of the segment during streaming, then measures the remaining lag."""

    def __init__(self, frames: int, samplerate: int) -> None:
        window = window_length(frames, samplerate)
        self.max_lag = round(SEARCH_SECONDS * samplerate)
        self._band = service_band(samplerate)
        self.active = frames > window  # the start window already covers a short segment
        self._start = frames - window
        self._reference = np.zeros(window if self.active else 0, np.float64)
        self._candidate = np.zeros(len(self._reference) + 2 * self.max_lag if self.active else 0, np.float32)

    def wants(self, position: int, count: int) -> bool:
        """Whether samples [position, position + count) reach into the end window (or its margin)."""
        return self.active and position + count > self._start - self.max_lag

    def feed_source(self, position: int, mono: Float64Array) -> None:
        if self.active:
            _copy_overlap(self._reference, self._start, position, mono)

    def feed_service(self, position: int, mix: Float32Array) -> None:
        if self.active:
            _copy_overlap(self._candidate, self._start - self.max_lag, position, mix)

    def estimate(self) -> LagEstimate | None:
        if not self.active:
            return None
        estimate = estimate_lag(self._reference, self._candidate, self.max_lag, self._band)
        return dataclasses.replace(estimate, window_start=self._start, window=len(self._reference))


def windows_apart(start: LagEstimate, end: LagEstimate) -> bool:
    """Whether the two windows are far enough apart to measure a clock drift between them: sharing no
    samples, and their middles at least a window apart. Overlapping windows share content that pulls
    both lags alike, which can even give the rate the wrong sign (a 15-30 s file)."""
    disjoint = end.window_start >= start.window_start + start.window
    return disjoint and end.centre - start.centre >= max(start.window, end.window)


def drift_rate_scale(start: LagEstimate, end: LagEstimate, max_scale_error: float = MAX_DRIFT) -> float | None:
    """How much faster to read the result so that the lag at the end window meets the start's (the end's
    lag is measured after the start's offset was applied); None when there is nothing sure to correct:
    a lag of a sample or less, a window without signal or with a weak match, windows too close together
    (`windows_apart`), or a drift beyond `max_scale_error` (not a clock: something else is wrong)."""
    usable = all(e.has_signal and e.correlation >= WEAK_CORRELATION for e in (start, end))
    if not usable or abs(end.lag) <= 1 or not windows_apart(start, end):
        return None
    distance = end.centre - start.centre
    scale = 1.0 + end.lag / distance
    return scale if abs(scale - 1.0) <= max_scale_error else None


def _copy_overlap(dest: NDArray[np.floating], dest_start: int, position: int, block: NDArray[np.floating]) -> None:
    lo = max(dest_start, position)
    hi = min(dest_start + len(dest), position + len(block))
    if hi > lo:
        dest[lo - dest_start : hi - dest_start] = block[lo - position : hi - position]
