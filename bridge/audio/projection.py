"""Project the service's MONO result onto the source's channels: exact in the mid, a guess only in the side.

The service heard the source's mono mix, the mean of its channels m = mean_c S_c, and split exactly that
into a target T and a residual R. Write each source channel as the mid plus its deviation from it,
S_c = m + d_c (the deviations sum to 0; in stereo d_L = −d_R = (L − R)/2, the side). Then

    target_c = T + d̂_c        (time domain: the mean of the target channels is T itself, sample for sample)

and only the deviations d̂_c, which the service never heard, need an estimate. It is made per STFT bin:

1. Explained part. Each deviation is regressed on the mid over a small time-frequency neighbourhood
   (±2 frames, ±2 bins): α_c = Σ D_c·M̄ / Σ |M|². A source panned anywhere (a·x left, b·x right) has
   D = α·M in its bins with α its pan, so its share of the target's deviation is α_c · T: the pan applied to
   the service's own answer. No mask is involved, so the band edges of the deviations are as sharp as T's.
2. Unexplained part u_c = D_c − α_c·M (decorrelated reverb, wide pads, anti-phase content) gets the
   service's ratio mask |T|² / (|T|² + |R|²) times a gate:

       g = 1 / (1 + (r / WIDE)²),   r = mean_c Σ|u_c|² / ((C − 1) · Σ|M|²)

   r compares what the mid cannot explain with what the service heard, normalised so that independent
   sounds of equal level in every channel (what a wide reverb or a 5.1 ambience is) give r ≈ 1. Content
   that cancels in the mono mix (an anti-phase pad: L = p, R = −p) is far above that wherever it is
   audible, so it goes to the residual: the service never heard it, whatever else plays.
3. Above the service's bandwidth (24 kHz: it works at 48 kHz) the mask is 0 and T holds nothing, so a
   hi-res source's ultrasonics stay in the residual.

So a source with L = R (d = 0) gets exactly T in both channels; a hard-panned source gets T·(1 ± 1); a
5.1 source gets T + d̂_c in every channel with the same rules (C = 6; the gate is common to all channels so
that the deviations still sum to 0 and the target's mean stays T). With `service_residual` the residual is
R + d_c − d̂_c, so target + residual == source up to float32 rounding as with the complement.

STFT: 2048-point frames, hop 1024, periodic sqrt-Hann analysis and synthesis (perfect reconstruction).
Processing is streaming: each call consumes whole hops; the statistics of the last frames and the
overlap-add tail carry over, and the two frames of look-ahead the smoothing needs are analysed again on
the next call. The projector emits samples in source order and `flush` emits the rest, so the total
equals the input exactly.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from bridge.audio.align import SERVICE_BANDWIDTH

Float32Array = NDArray[np.float32]
Complex64Array = NDArray[np.complex64]

N_FFT = 2048
HOP = 1024
LOOK = 2  # frames either side of a frame its statistics are smoothed over
SPREAD = 2  # bins either side
OPPOSED = 6.0  # deviation power per extra channel, × the mid's, above which the gate closes (r₀ in the doc)
UNHEARD = 1e-3  # service power below this fraction of the source mid's (-30 dB) counts as nothing heard
COHERENT = 10.0
RIDGE = 1e-3  # ridge of the target/residual pan regression, relative to their power
_EPS = 1e-30  # keeps digital silence (all powers 0) from dividing by zero


def describe(channels: int, n_fft: int = N_FFT, hop: int = HOP) -> str:
    if channels == 1:
        return "direct (mono source: the aligned service result as is)"
    return (f"mid-exact: target = the service's target + each channel's deviation from the mid, estimated by "
            f"STFT {n_fft}/{hop} sqrt-hann: pans of target and residual regressed on the deviation over "
            f"{2 * LOOK + 1} frames × {2 * SPREAD + 1} bins and applied to the target, the rest by |T|²/(|T|²+|R|²); "
            f"gated by min(1, ({OPPOSED:g}/r)²), r = deviation power / ((channels − 1) · mid power); "
            f"nothing above {SERVICE_BANDWIDTH / 1000:g} kHz")


class MaskProjector:
    """Streaming mid-exact projection of a mono target/residual pair onto `channels` source channels."""

    def __init__(
        self, channels: int, samplerate: int, *, service_residual: bool = False, n_fft: int = N_FFT, hop: int = HOP
    ):
        if n_fft % hop:
            raise ValueError("n_fft must be a multiple of hop")
        if channels < 2:
            raise ValueError("a mono source needs no projection")
        self.channels = channels
        bins = n_fft // 2 + 1
        # first bin above the service's bandwidth (bin k is at k · rate / n_fft Hz)
        self._heard_bins = min(bins, int(SERVICE_BANDWIDTH * n_fft / samplerate) + 1)
        self.n_fft = n_fft
        self.hop = hop
        self.service_residual = service_residual
        periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self._window = np.sqrt(periodic_hann).astype(np.float32)
        # Σ over overlapping frames of window² (= Hann) is n_fft / (2·hop): undo it at synthesis.
        self._synthesis = (self._window * (2.0 * hop / n_fft)).astype(np.float32)
        self.latency = n_fft - hop
        # Rows: target, residual, source channels. Starting with `latency` zeros means the first real
        # sample is covered by every overlapping frame.
        self._input = np.zeros((2 + channels, self.latency), np.float32)
        self._tail = np.zeros((channels - 1, self.latency), np.float32)  # the last deviation is minus the sum
        # raw statistics of the last LOOK frames synthesised (rows: see _deviation_spectra)
        used = 1 if channels == 2 else channels
        self._history = np.zeros((4 + 3 * used, LOOK, bins), np.complex64)
        self._skip = self.latency  # leading output samples that belong to the zero padding
        self._fed = 0
        self._emitted = 0

    def process(
        self, target: Float32Array, residual: Float32Array, source: NDArray[np.floating]
    ) -> tuple[Float32Array, Float32Array | None]:
        """Feed n aligned samples (source: (n, channels)); returns (target, residual) as (m, channels)
        for the samples now complete, in order."""
        count = len(target)
        kept = self._input.shape[1]
        buffer = np.empty((2 + self.channels, kept + count), np.float32)
        buffer[:, :kept] = self._input
        buffer[0, kept:] = target
        buffer[1, kept:] = residual
        buffer[2:, kept:] = source.T
        self._fed += count
        return self._run(buffer)

    def flush(self) -> tuple[Float32Array, Float32Array | None]:
        """Emit every remaining sample (the total emitted then equals the total fed)."""
        pad = np.zeros((2 + self.channels, self.n_fft + LOOK * self.hop), np.float32)
        target, residual = self._run(np.concatenate((self._input, pad), axis=1))
        keep = self._fed - (self._emitted - len(target))
        self._emitted = self._fed
        return target[:keep], None if residual is None else residual[:keep]

    def _run(self, buffer: Float32Array) -> tuple[Float32Array, Float32Array | None]:
        length = buffer.shape[1]
        n_frames = (length - self.n_fft) // self.hop + 1 if length >= self.n_fft else 0
        n_out = n_frames - LOOK  # frames synthesised now; the last LOOK are only looked ahead at
        if n_out <= 0:
            self._input = buffer
            return self._empty()
        frames = sliding_window_view(buffer, self.n_fft, axis=1)[:, :: self.hop][:, :n_frames] * self._window
        spectra: Complex64Array = sfft.rfft(frames, axis=-1, overwrite_x=True)
        deviations = self._deviation_spectra(spectra, n_out)
        synthesized = sfft.irfft(deviations, n=self.n_fft, axis=-1, overwrite_x=True)
        synthesized *= self._synthesis
        out = self._overlap_add(synthesized)
        consumed = n_out * self.hop
        self._tail = out[:, consumed:]
        ready = np.empty((self.channels, consumed), np.float32)
        ready[:-1] = out[:, :consumed]
        ready[-1] = -ready[:-1].sum(axis=0)
        target = ready + buffer[0, :consumed]  # the mid is the service's answer itself
        residual = None
        if self.service_residual:  # R + d_c − d̂_c, with d_c = S_c − mean(S)
            source = buffer[2:, :consumed]
            residual = source - source.mean(axis=0) - ready + buffer[1, :consumed]
        self._input = buffer[:, consumed:]
        if self._skip:
            skipped = min(self._skip, consumed)
            target = target[:, skipped:]
            residual = None if residual is None else residual[:, skipped:]
            self._skip -= skipped
        self._emitted += target.shape[1]
        return np.ascontiguousarray(target.T), None if residual is None else np.ascontiguousarray(residual.T)

    def _deviation_spectra(self, spectra: Complex64Array, n_out: int) -> Complex64Array:
        """D̂_c for the first `n_out` frames, channels 0..C−2 (rows: T, R, S_0..S_C−1 of all frames)."""
        channels = self.channels
        target, residual = spectra[0], spectra[1]
        mid = spectra[2:].mean(axis=0)  # M: the STFT of what the service heard
        # stereo: D_R = −D_L, so the left one says everything; else every channel counts for the gate
        deviation = spectra[2:-1] - mid if channels == 2 else spectra[2:] - mid
        used = len(deviation)
        raw = np.empty((4 + 3 * used, *mid.shape), np.complex64)
        raw[0] = _power(mid)
        raw[1] = _power(deviation).mean(axis=0)
        raw[2] = _power(target) + 1j * _power(residual)
        raw[3] = target * residual.conj()
        raw[4 : 4 + used] = deviation * mid.conj()
        raw[4 + used : 4 + 2 * used] = deviation * target.conj()
        raw[4 + 2 * used :] = deviation * residual.conj()
        history = np.concatenate((self._history, raw), axis=1)  # frames −LOOK .. n_frames−1
        self._history = history[:, n_out : n_out + LOOK].copy()
        stats = _smooth(history, n_out)
        power_mid, power_dev = stats[0].real, stats[1].real
        power_t, power_r, cross_tr = stats[2].real, stats[2].imag, stats[3]
        dev_m, dev_t, dev_r = stats[4 : 4 + used], stats[4 + used : 4 + 2 * used], stats[4 + 2 * used :]
        # 1. the pan of what the source holds in this bin: D = α·M for any one sound, wherever it is panned
        common = dev_m / (power_mid + _EPS)
        left_t = dev_t - common * (power_t + cross_tr.conj())  # Σ u·T̄ and Σ u·R̄ for u = D − α·M, M ≈ T + R
        left_r = dev_r - common * (power_r + cross_tr)
        # 2. then a pan of its own for the target and the residual (another sound, panned elsewhere): a
        # ridge regression of u on T and R, so that where T ∝ R (one sound split by a filter) nothing changes
        ridge = RIDGE * (power_t + power_r + power_mid) + COHERENT * np.abs(cross_tr)
        diag_t, diag_r = power_t + ridge, power_r + ridge
        det = diag_t * diag_r - _power(cross_tr) + _EPS
        pan_t = common + (diag_r * left_t - cross_tr.conj() * left_r) / det
        pan_r = common + (diag_t * left_r - cross_tr * left_t) / det
        # 3. the gate: deviation power beyond (C − 1) × the mid's comes from sound that cancels in the mix
        ratio = power_dev / ((channels - 1) * power_mid + _EPS)
        gate = np.minimum(1.0, OPPOSED / (ratio + _EPS)) ** 2
        # 4. what neither pan explains gets the gain the service gave the mid in this bin and frame, T·M̄/|M|²
        # (bounded by 1: divided by the largest of |M|², |T|², |R|²), 0 where the service's mix holds
        # nothing of what the source's mid has (its band limit, a lossy result's holes)
        t, r, m = target[:n_out], residual[:n_out], mid[:n_out]
        power_t_now, power_r_now, power_m_now = _power(t), _power(r), _power(m)
        heard_now = power_t_now + power_r_now
        unheard = UNHEARD * power_m_now
        scale = np.maximum(np.maximum(power_m_now, power_t_now), power_r_now) + _EPS
        scale *= 1.0 + (unheard / (heard_now + _EPS)) ** 2
        gain = t * m.conj() / scale
        # D̂ = g·(a·T + G·(D − a·T − b·R))
        d = deviation[: channels - 1, :n_out]
        pt, pr = pan_t[: channels - 1], pan_r[: channels - 1]
        result: Complex64Array = gate * (pt * t + gain * (d - pt * t - pr * r))
        result[..., self._heard_bins :] = 0.0
        return result

    def _overlap_add(self, frames: Float32Array) -> Float32Array:
        outputs, n_frames, _ = frames.shape
        parts = self.n_fft // self.hop
        out = np.zeros((outputs, n_frames + parts - 1, self.hop), np.float32)  # hop-sized slots
        out[:, : parts - 1] += self._tail.reshape(outputs, parts - 1, self.hop)
        for part in range(parts):
            out[:, part : part + n_frames] += frames[:, :, part * self.hop : (part + 1) * self.hop]
        return out.reshape(outputs, -1)

    def _empty(self) -> tuple[Float32Array, Float32Array | None]:
        empty = np.zeros((0, self.channels), np.float32)
        return empty, (empty.copy() if self.service_residual else None)


def _power(spectrum: Complex64Array) -> Float32Array:
    power: Float32Array = spectrum.real**2 + spectrum.imag**2
    return power


def _smooth(history: Complex64Array, n_out: int) -> Complex64Array:
    """Triangular sums over ±LOOK frames and ±SPREAD bins (unnormalised: only ratios of them are used).
    `history` holds frames −LOOK .. n_out+LOOK−1 on axis 1; the result frames 0 .. n_out−1."""
    summed = np.zeros((history.shape[0], n_out, history.shape[2]), np.complex64)
    for shift in range(2 * LOOK + 1):
        summed += (LOOK + 1 - abs(shift - LOOK)) * history[:, shift : shift + n_out]
    spread = summed * np.float32(SPREAD + 1)
    for step in range(1, SPREAD + 1):
        weight = np.float32(SPREAD + 1 - step)
        spread[..., step:] += weight * summed[..., :-step]
        spread[..., :-step] += weight * summed[..., step:]
    return spread
