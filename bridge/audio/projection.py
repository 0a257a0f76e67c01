"""Project the service's MONO result onto the source's channels: exact in the mid, a guess only in the side.

The service heard the source's mono mix, the mean of its channels m = mean_c S_c, and split exactly that
into a target T and a residual R. Write each source channel as the mid plus its deviation from it,
S_c = m + d_c (the deviations sum to 0; in stereo d_L = −d_R = (L − R)/2, the side). Then

    target_c = T + d̂_c        (time domain: the mean of the target channels is T itself, sample for sample)

and only the deviations d̂_c, which the service never heard, need an estimate. Per STFT bin and frame
(capitals: spectra; Σ: sums over ±2 frames and ±2 bins, triangular weights):

    D̂_c = α_c · T + g · G · (D_c − α_c · M)
    α_c = t · Σ D_c·M̄ / Σ |M|²        the pan of what the source holds in this bin (complex: a delay too),
                                      trusted by t = min(1, c² / 0.5)² with c² the coherence of D and M
    G   = T·M̄ / max(|M|², |T|²)          the gain the service gave the mid here (|G| ≤ 1; T/M when the
                                      service's answer is a filter of what it heard)
    g   = min(1, r₀ / r)²,  r = mean_c Σ|D_c − α_c·M|² / ((C − 1) · Σ|M|²),  r₀ = 6

- One sound, panned anywhere (a·x left, b·x right), has D = α·M with α its pan, so it gets α·T: its pan
  applied to the service's own answer, as sharp at the band edges as T. A source with L = R (D = 0) gets
  exactly T in every channel.
- Whatever the pan does not explain (decorrelated reverb, wide stereo instruments, several sounds in one
  bin) gets the service's gain for that bin, G: the mid's treatment applied to the deviation.
- The gate acts on what the pan leaves unexplained. Independent sounds in every channel (a wide reverb,
  a spaced-pair recording) give r about 1; far beyond that the deviation comes from sound that cancels
  in the mono mix, incoherent with what the service heard (an anti-phase pad: L = p, R = −p): the
  service never heard it, so it goes to the residual. A partial that is out of phase between the
  channels but coherent with the mid (a spaced pair's comb) is a pan, not gated. r₀ leaves room for
  the way wide stereo recordings fluctuate from bin to bin.
- Above the service's bandwidth (24 kHz: it works at 48 kHz) D̂ is 0 and T holds nothing, so a hi-res
  source's ultrasonics stay in the residual.

A result on a drifting clock is read at a corrected rate that lines it up only to a sample or two, and
T + d̂_c would carry that error (clicks 2 samples off near the end of a 40 s take). With `mid_from_source`
(conform sets it whenever it reads the result at a corrected rate) the mid is made from the source too:

    target_mid = |G| · M,    D̂_c = g · |G| · D_c + (1 − g) · α_c · |G| · M

i.e. the rule above with T replaced by |G|·M and G by its size |G| (so |G|·S_c when the gate is open):
the phase of G = T·M̄/… carries T's misalignment, and dropping it keeps the source's phase, so every
transient stays where the source has it, whatever the drift estimate. The price is the mask's band
edges in the mid (as before issue 22), only for drift-corrected results. With `service_residual` the
residual is then source − target (the service's R is as far off the clock as T).

5.1 (C = 6) follows the same rule with six deviations; the gate is common to all channels so that the
deviations still sum to 0 and the target's mean stays T. With `service_residual` the residual is
R + d_c − d̂_c, so target + residual == source up to float32 rounding as with the complement.

STFT: 4096-point frames (11.7 Hz bins at 48 kHz: the deviations' band edges measured 3-6 dB better than
with 2048 and 8192 smeared the hats), hop 2048, periodic sqrt-Hann analysis and synthesis (perfect reconstruction);
only C − 1 deviations are synthesised (the last is minus their sum). Processing is streaming: each call
consumes whole hops; the statistics of the last two frames and the overlap-add tail carry over, and the
two frames of look-ahead the smoothing needs are analysed again on the next call. The projector emits
samples in source order and `flush` emits the rest, so the total equals the input exactly.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from bridge.audio.align import SERVICE_BANDWIDTH

Float32Array = NDArray[np.float32]
Complex64Array = NDArray[np.complex64]

N_FFT = 4096
HOP = 2048
LOOK = 2  # frames either side of a frame its statistics are smoothed over (and bins either side)
OPPOSED = 6.0  # r₀: deviation power per extra channel, in units of the mid's, where the gate starts closing
COHERENT = 0.5  # c₀²: squared coherence of deviation and mid from which a pan is fully trusted
_EPS = 1e-30  # keeps digital silence (all powers 0) from dividing by zero


def describe(channels: int, n_fft: int = N_FFT, hop: int = HOP, *, mid_from_source: bool = False) -> str:
    if channels == 1:
        return "direct (mono source: the aligned service result as is)"
    if mid_from_source:
        return (f"source-phase (the result was read at a drift-corrected rate): each channel × the size of the "
                f"service's gain |T·M̄| / max(|M|², |T|²) per bin, by STFT {n_fft}/{hop} sqrt-hann; the deviations "
                f"gated by min(1, {OPPOSED:g}/r)², r = unexplained deviation power / ((channels − 1) · mid power); "
                f"nothing above {SERVICE_BANDWIDTH / 1000:g} kHz")
    return (f"mid-exact: target = the service's target + each channel's deviation from the mid, by STFT "
            f"{n_fft}/{hop} sqrt-hann: the deviation's pan on the mid (±{LOOK} frames, ±{LOOK} bins) applied to the "
            f"target, the rest × the service's gain T·M̄ for that bin; gated by min(1, {OPPOSED:g}/r)², r = deviation "
            f"power / ((channels − 1) · mid power); nothing above {SERVICE_BANDWIDTH / 1000:g} kHz")


class MaskProjector:
    """Streaming mid-exact projection of a mono target/residual pair onto `channels` source channels."""

    def __init__(
        self,
        channels: int,
        samplerate: int,
        *,
        service_residual: bool = False,
        mid_from_source: bool = False,
        n_fft: int = N_FFT,
        hop: int = HOP,
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
        self.mid_from_source = mid_from_source
        periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self._window = np.sqrt(periodic_hann).astype(np.float32)
        # Σ over overlapping frames of window² (= Hann) is n_fft / (2·hop): undo it at synthesis.
        self._synthesis = (self._window * (2.0 * hop / n_fft)).astype(np.float32)
        self.latency = n_fft - hop
        # Rows: target, residual, source channels. Starting with `latency` zeros means the first real
        # sample is covered by every overlapping frame.
        self._input = np.zeros((2 + channels, self.latency), np.float32)
        # synthesised rows: C − 1 deviations (the last is minus their sum), then the mid when it is made too
        self._tail = np.zeros((channels - 1 + mid_from_source, self.latency), np.float32)
        # raw statistics of the last LOOK frames synthesised (rows: see _deviation_spectra)
        used = 1 if channels == 2 else channels
        self._history = np.zeros((1 + used, LOOK, bins), np.complex64)
        self._scratch = np.empty((0, 0, 0), np.complex64)
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
        # the service's target and the source channels (its residual is not needed: R = M − T)
        view = sliding_window_view(buffer, self.n_fft, axis=1)[:, :: self.hop][:, :n_frames]
        frames = np.empty((1 + self.channels, n_frames, self.n_fft), np.float32)
        np.multiply(view[0], self._window, out=frames[0])
        np.multiply(view[2:], self._window, out=frames[1:])
        spectra: Complex64Array = sfft.rfft(frames, axis=-1, overwrite_x=True)
        deviations = self._deviation_spectra(spectra, n_out)
        synthesized = sfft.irfft(deviations, n=self.n_fft, axis=-1, overwrite_x=True)
        synthesized *= self._synthesis
        out = self._overlap_add(synthesized)
        consumed = n_out * self.hop
        self._tail = out[:, consumed:]
        made = self.channels - 1  # deviations synthesised; the mid follows them when it is made too
        ready = np.empty((self.channels, consumed), np.float32)
        ready[:-1] = out[:made, :consumed]
        ready[-1] = -ready[:-1].sum(axis=0)
        # the mid: the service's answer itself, or its gain on the source's own mid (see the module doc)
        target = ready + (out[made, :consumed] if self.mid_from_source else buffer[0, :consumed])
        residual = None
        if self.service_residual:  # R + d_c − d̂_c, with d_c = S_c − mean(S)
            source = buffer[2:, :consumed]
            if self.mid_from_source:  # R is as far off the source's clock as T: what the source loses instead
                residual = source - target
            else:
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
        """D̂_c for the first `n_out` frames, channels 0..C−2 (rows: T, S_0..S_C−1 of all frames)."""
        channels = self.channels
        target, sources = spectra[0], spectra[1:]
        if channels == 2:  # D_R = −D_L: the left one says everything
            mid = sources[0] + sources[1]
            mid *= 0.5
            deviation = (sources[0] - mid)[None]
        else:
            mid = sources.mean(axis=0)
            deviation = sources - mid
        used = len(deviation)
        # raw statistics of frames −LOOK .. n_frames−1 (the first LOOK carried over from the last call),
        # complex rows: |M|² + i·mean_c|D_c|², then D_c·M̄ for each channel used
        history = self._raw(1 + used, (LOOK + mid.shape[0], mid.shape[1]))
        history[:, :LOOK] = self._history
        raw = history[:, LOOK:]
        powers = raw[0].view(np.float32).reshape(*mid.shape, 2)
        _power(mid, powers[..., 0])
        if used > 1:
            np.mean(deviation.real**2 + deviation.imag**2, axis=0, out=powers[..., 1])
        else:
            _power(deviation[0], powers[..., 1])
        np.multiply(deviation, mid.conj(), out=raw[1:])
        self._history = history[:, n_out : n_out + LOOK].copy()
        stats = _smooth(history, n_out)
        power_mid, power_dev = stats[0].real, stats[0].imag
        # 1. the pan of what the source holds in this bin: D = α·M for any one sound, wherever it is panned
        # (a complex α: an inter-channel delay too), trusted as far as D and M are coherent
        pan = stats[1:]
        inverse_mid = 1.0 / (power_mid + _EPS)
        explained = _power(pan).mean(axis=0) if len(pan) > 1 else _power(pan[0])
        explained *= inverse_mid  # mean_c |Σ D_c·M̄|² / Σ|M|²: the power the pans explain
        trust = np.minimum(1.0, explained / (COHERENT * power_dev + _EPS))  # min(1, c² / c₀²)²
        trust *= trust
        pan *= trust * inverse_mid
        # 2. the gate: the deviation power the pans leave unexplained, beyond (C − 1) × the mid's, comes
        # from sound that cancels in the mono mix: the service never heard it
        unexplained = power_dev - trust * (2.0 - trust) * explained
        allowed = OPPOSED * (channels - 1) * power_mid
        gate = allowed / (np.maximum(unexplained, allowed) + _EPS)  # min(1, r₀ / r) without overflow
        gate *= gate
        # 3. the gain G the service gave the mid in this bin and frame, T·M̄ / max(|M|², |T|²): |G| ≤ 1, and
        # 0 where the service kept nothing of it (its band limit, a lossy result's holes)
        t, m = target[:n_out], mid[:n_out]
        scale = np.maximum(powers[:n_out, :, 0], _power(t))  # |M|² of each frame
        scale += _EPS
        d = deviation[: channels - 1, :n_out]
        pan = pan[: channels - 1]
        if self.mid_from_source:
            # T is not on the source's clock to the sample: keep only the size of G, so that the mid (and with
            # it every channel) keeps the source's phase and its transients stay where they are
            magnitude = np.abs(t * m.conj())
            magnitude /= scale
            made = np.empty((channels, *m.shape), np.complex64)
            np.multiply(m, magnitude, out=made[-1])  # the mid: |G|·M
            gain = magnitude * gate
            pan *= made[-1] - gain * m
            pan += gain * d
            made[:-1] = pan
            made[..., self._heard_bins :] = 0.0
            return made
        np.divide(gate, scale, out=scale)
        gain = t * m.conj()
        gain *= scale
        # D̂ = g·(α·T + G·(D − α·M)): the pan acts on the service's answer, the rest of D gets its gain
        pan *= t - gain * m
        pan += gain * d
        pan[..., self._heard_bins :] = 0.0
        return pan

    def _raw(self, rows: int, shape: tuple[int, ...]) -> Complex64Array:
        """Scratch for the raw statistics, kept between calls (fresh big arrays cost page faults)."""
        if self._scratch.shape != (rows, *shape):
            self._scratch = np.empty((rows, *shape), np.complex64)
        return self._scratch

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


def _power(spectrum: Complex64Array, out: Float32Array | None = None) -> Float32Array:
    power: Float32Array = np.square(spectrum.real, out=out)
    power += spectrum.imag**2
    return power


def _smooth(history: Complex64Array, n_out: int) -> Complex64Array:
    """Triangular sums over ±2 frames and ±2 bins (two passes of a 3-wide box each way, unnormalised: only
    ratios of them are used), on the float32 view. `history` holds frames −2 .. n_out+1 on axis 1; the
    result frames 0 .. n_out−1."""
    rows, frames, bins = history.shape
    values = history.view(np.float32).reshape(rows, frames, bins, 2)
    for _ in range(2):  # along time: each pass drops a frame at either end
        summed = values[:, :-2] + values[:, 1:-1]
        summed += values[:, 2:]
        values = summed
    for _ in range(2):  # along frequency, the edges summing what there is
        summed = values.copy()
        summed[:, :, 1:] += values[:, :, :-1]
        summed[:, :, :-1] += values[:, :, 1:]
        values = summed
    result: Complex64Array = values.reshape(rows, n_out, bins * 2).view(np.complex64)
    return result
