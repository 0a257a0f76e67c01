"""Project the service's MONO result onto the source's channels: exact in the mid, a guess only in the side.

The service heard the source's mono mix, the mean of its channels m = mean_c S_c, and split exactly that
into a target T and a residual R = m − T. Write each source channel as the mid plus its deviation from it,
S_c = m + d_c (the deviations sum to 0; in stereo d_L = −d_R = (L − R)/2, the side). Then

    target_c = T + d̂_c        (time domain: the mean of the target channels is T itself, sample for sample)

and only the deviations d̂_c, which the service never heard, need an estimate. Per STFT bin and frame
(capitals: spectra; Σ: sums over ±2 pairs of frames, weighted 1 2 2 2 1, and ±1 bin, weighted 1 2 1; the
two frames of a pair share α, γ and g, which halves the cost of the statistics; Σₜ: over the frames only):

    D̂_c = g · (α_c · T + f · G · (D_c − α_c · M − γ_c · R))
    α_c = t · Σ D_c·M̄ / Σ |M|²          the pan of what the source holds in this bin (complex: a delay too),
                                        trusted by t = min(1, c² / 0.5)² with c² the coherence of D and M
    γ_c = t_R · Σ U_c·R̄ / Σ |R|²         what the pan leaves, U_c = D_c − α_c·M, explained by the service's
                                        residual, trusted by t_R = min(1, c_R² / 0.5)² the same way
    G   = T·M̄ / max(|M|², |T|²)          the gain the service gave the mid here (|G| ≤ 1; T/M when the
                                        service's answer is a filter of what it heard)
    g   = min(1, r₀ / r)², r = mean_c Σₜ|D_c − α_c·M|² / ((C − 1) · Σₜ|M|²), r₀ = 6, and no more than
          min(1, r₁ / r_long)², r_long the same over a long window (Σ over the piece of 32 frames the
          frame is in and the piece before it, less 2 frames: 1.4-2.8 s back at 48 kHz), r₁ = 5
    f   = max(0, 1 − β · e / u)², u = mean_c Σₜ|D_c − α_c·M|² (r's numerator), e = max(0, min u −
          k · (C − 1) · min Σₜ|M|²), the minima over the pairs of frames of the piece the frame is in and the
          two before it (2.7-4.1 s), k = 8, β = 6

- One sound, panned anywhere (a·x left, b·x right), has D = α·M with α its pan, so it gets α·T: its pan
  applied to the service's own answer, as sharp at the band edges as T. A source with L = R (D = 0) gets
  exactly T in every channel.
- Two sounds in one bin, one the service kept and one it left (a bass hard left under hiss hard right):
  the pan is a blend of the two, and what it leaves is the kept sound's and the left sound's deviation in
  opposite measure. The part of it that follows the service's residual R is the left sound's: it stays
  out of the target (without γ the hiss in the bass's own bins reached the bass stem at −31 dB).
- Whatever is left (decorrelated reverb, wide stereo instruments) gets the service's gain for that bin, G:
  the mid's treatment applied to the deviation.
- The gate g: deviation power that no pan explains, far beyond (C − 1) × the mid's, comes from sound that
  cancels in the mono mix, incoherent with what the service heard (an anti-phase pad: L = p, R = −p): the
  service never heard it, so the bin's deviation goes to the residual. Its statistics Σₜ are summed over
  the ±4 frames only, not over neighbouring bins: a sustained pad's partials are a bin wide, and summing
  over ±2 bins mixed the mid around them in (a pad's share in the residual of a busy mix 52 → 61 %, voice
  band). Independent sounds in every channel (a wide reverb, a spaced pair) give r about 1; r₀ leaves
  room for the way wide stereo recordings fluctuate from bin to bin. A partial out of phase between the
  channels but coherent with the mid (a spaced pair's comb) is a pan, not gated.
- The long window: a sustained pad is there all the time, the notes of the mix sharing its bins come and
  go. Over ±4 frames a note's mid can hide the pad (r < r₀ while the note sounds, in the busy piece 39 %
  of the pad's energy in the voice band reached the target); summed over seconds the pad's deviation
  stands out. One long gate per piece and bin costs little (its sums are a few of the short window's);
  lowering r₀ instead cost the mixes' target SDR (median 37.9 → 32.6 dB at r₀ = 2),
  since wide content does exceed the mid in single bins for a few frames. In the bench's busy piece the
  long gate took the pad's share in the residual 61 → 69 % (voice band), 48 → 56 % (full band), with
  the mixes' SDR unchanged: what is left shares its bins with the mix's own wide content and no level
  rule tells them apart.
- The steady floor f: what is left is told apart by time. A kept instrument's wide sound (stereo samples,
  reverb) comes and goes with its notes, and with it the mid; the pad's side stays while the mid, between
  the notes, falls to nothing. So the least unexplained side power over seconds, beyond k × the least mid
  power, is sound that cancels in the mono mix (minimum statistics, as noise estimators track a noise
  floor), and the U term keeps only what rises above it. β = 6 because a minimum is well below the mean of
  what it tracks: the soundfont pad's power in a bin averages 2.5-25× its minimum over 4 s. k = 8, above r₀, leaves
  alone steady wide sound that the gates pass (a stereo noise bed: with k = 2 its minima crossed in 6 % of
  the bins and a test's target fell 39 → 19 dB). In the bench's busy piece the pad's share in the residual
  rose 59.9 → 79.7 % (low band), 69.3 → 85.7 (voice), 58.0 → 75.3 (mid), 56.2 → 83.1 (full), over the bass
  alone 77.1 → 91.5 (low), 84.4 → 95.2 (voice), 76.7 → 93.6 (full), the mixes' SDR unchanged (every mix
  row the same to the digit) and +5 % CPU. The price: where a kept instrument's wide part is much louder than the
  floor under it, the subtraction takes some of it (a pure-tone pad 26 dB under wide notes of its pitches:
  that target 21 → 18 dB against the ideal, while a pad as loud as them gains 2 dB); and while a note
  holds the pad's pitch through the whole window (the bench's strings hold E4 for 4 s) the mid never
  falls, so nothing is taken there.
- Above the service's bandwidth (24 kHz: it works at 48 kHz) D̂ is 0 and T holds nothing, so a hi-res
  source's ultrasonics stay in the residual.

A result on a drifting clock is read at a corrected rate that lines it up only to a sample or two, and
T + d̂_c would carry that error (clicks 2 samples off near the end of a 40 s take). With `mid_from_source`
(conform sets it whenever it reads the result at a corrected rate) the mid is made from the source too:

    target_mid = |G| · M,    D̂_c = g · |G| · (α_c · M + f · (D_c − α_c · M))

i.e. the rule above with T replaced by |G|·M, G by its size |G| and no γ (R is as far off the clock as T;
without a steady floor, f = 1, it is g · |G| · D_c):
the phase of G = T·M̄/… carries T's misalignment, and dropping it keeps the source's phase, so every
transient stays where the source has it, whatever the drift estimate. The price is the mask's band
edges in the mid, only for drift-corrected results. With `service_residual` the residual is then
source − target.

5.1 (C = 6) follows the same rule with six deviations; the gate, f and the trusts are common to all channels
so that the deviations still sum to 0 and the target's mean stays T. With `service_residual` the residual
is R + d_c − d̂_c, so target + residual == source up to float32 rounding as with the complement.

STFT: 4096-point frames (11.7 Hz bins at 48 kHz: the deviations' band edges measured 3-6 dB better than
with 2048 and 8192 smeared the hats), hop 2048, periodic sqrt-Hann analysis and synthesis (perfect
reconstruction); in stereo the mid and side are transformed, not the channels, and only C − 1 deviations
are synthesised (the last is minus their sum). The statistics run on separate real and imaginary float32
planes (numpy's complex arithmetic on interleaved values costs ~2× per value). Processing is streaming,
32 frames at a time: the planes and raw statistics of the frames the next piece looks back and ahead at,
and the overlap-add tail, carry over (nothing is transformed twice). The projector emits samples in source
order and `flush` emits the rest, so the total equals the input exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from bridge.audio.align import SERVICE_BANDWIDTH
from bridge.audio.projection_stats import (
    EPS,
    OPPOSED,
    OPPOSED_LONG,
    STEADY_MID,
    STEADY_OVER,
    gates,
    long_gates,
    long_sums,
    pans,
    piece_floors,
    raw_statistics,
    residual_shares,
    smooth_bins,
    smooth_pairs,
    stat_rows,
    steady_weights,
)

Float32Array = NDArray[np.float32]
Complex64Array = NDArray[np.complex64]

N_FFT = 4096
HOP = 2048
LOOK = 4  # frames either side of a frame its statistics are summed over
CHUNK = 32  # frames synthesised per piece: what conform feeds per block; more measured no faster


_STEADY = (f"what no pan explains × max(0, 1 − {STEADY_OVER:g}·e/u)², e its steady floor: the least unexplained "
           f"deviation power over {3 * CHUNK} frames beyond {STEADY_MID:g} × (channels − 1) × the least mid power")


def describe(channels: int, n_fft: int = N_FFT, hop: int = HOP, *, mid_from_source: bool = False) -> str:
    if channels == 1:
        return "direct (mono source: the aligned service result as is)"
    if mid_from_source:
        return (f"source-phase (the result was read at a drift-corrected rate): each channel × the size of the "
                f"service's gain |T·M̄| / max(|M|², |T|²) per bin, by STFT {n_fft}/{hop} sqrt-hann; the deviations "
                f"gated by min(1, {OPPOSED:g}/r)², r = unexplained deviation power / ((channels − 1) · mid power), "
                f"and by min(1, {OPPOSED_LONG:g}/r)² over {2 * CHUNK} frames; {_STEADY}; "
                f"nothing above {SERVICE_BANDWIDTH / 1000:g} kHz")
    return (f"mid-exact: target = the service's target + each channel's deviation from the mid, by STFT "
            f"{n_fft}/{hop} sqrt-hann: the deviation's pan on the mid (±{LOOK} frames, ±1 bin) applied to the "
            f"target, the part the service's residual explains left out, the rest × the service's gain T·M̄ "
            f"for that bin; gated by min(1, {OPPOSED:g}/r)², r = unexplained deviation power / ((channels − 1) "
            f"· mid power) over ±{LOOK} frames, and by min(1, {OPPOSED_LONG:g}/r)² over {2 * CHUNK} frames; "
            f"{_STEADY}; nothing above {SERVICE_BANDWIDTH / 1000:g} kHz")


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
        import scipy.fft  # here, not at import: commands that never project do not pay its start-up

        self._fft: Any = scipy.fft
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
        self._used = 1 if channels == 2 else channels  # deviations the statistics need (stereo: D_R = −D_L)
        # raw statistics of the LOOK frames before the next call's first and of those it is given again
        self._history = np.zeros((stat_rows(self._used), LOOK, bins + 1), np.float32)
        # the real and imaginary planes of the frames the next call is given again (see _deviation_spectra)
        self._ahead = np.zeros((2, 3 + self._used, 0, bins + 1), np.float32)
        # the long gate's sums over the last piece's frames (see _deviation_spectra)
        self._last_piece = np.zeros((2 + 2 * self._used, bins + 1), np.float32)
        # the steady floor's minima (unexplained deviation power, mid power) of the two pieces before: none yet
        self._floors = np.full((2, 2, bins + 1), np.inf, np.float32)
        self._scratch: dict[str, Float32Array] = {}
        self._pending: list[tuple[Float32Array, Float32Array, NDArray[np.floating]]] = []  # fed, not yet run
        self._pending_count = 0
        self._skip = self.latency  # leading output samples that belong to the zero padding
        self._fed = 0
        self._emitted = 0

    def process(
        self, target: Float32Array, residual: Float32Array, source: NDArray[np.floating]
    ) -> tuple[Float32Array, Float32Array | None]:
        """Feed n aligned samples (source: (n, channels)); returns (target, residual) as (m, channels)
        for the samples now complete, in order (nothing until CHUNK frames are complete: see _drain)."""
        self._pending.append((target, residual, source))
        self._pending_count += len(target)
        self._fed += len(target)
        if self._input.shape[1] + self._pending_count < self.n_fft + (CHUNK + LOOK) * self.hop:
            return self._empty()
        return self._drain(self._take_pending(), final=False)

    def flush(self) -> tuple[Float32Array, Float32Array | None]:
        """Emit every remaining sample (the total emitted then equals the total fed)."""
        buffer = self._take_pending()
        pad = np.zeros((2 + self.channels, self.n_fft + (LOOK + 1) * self.hop), np.float32)
        target, residual = self._drain(np.concatenate((buffer, pad), axis=1), final=True)
        keep = self._fed - (self._emitted - len(target))
        self._emitted = self._fed
        return target[:keep], None if residual is None else residual[:keep]

    def _take_pending(self) -> Float32Array:
        """The kept input and the blocks fed since, as one buffer (rows: target, residual, channels)."""
        kept = self._input.shape[1]
        buffer = np.empty((2 + self.channels, kept + self._pending_count), np.float32)
        buffer[:, :kept] = self._input
        for target, residual, source in self._pending:
            count = len(target)
            buffer[0, kept : kept + count] = target
            buffer[1, kept : kept + count] = residual
            buffer[2:, kept : kept + count] = source.T
            kept += count
        self._pending, self._pending_count = [], 0
        return buffer

    def _drain(self, buffer: Float32Array, *, final: bool) -> tuple[Float32Array, Float32Array | None]:
        """Synthesise `buffer` CHUNK frames at a time and keep what is left: the planes of one piece stay in
        the cache (a 10 s block at once cost 1.2× the CPU time), and short blocks wait for a whole piece
        (fewer calls, less of numpy's per-call cost); the output does not depend on how the input is cut."""
        pieces = []
        while True:
            n_frames = (buffer.shape[1] - self.n_fft) // self.hop + 1 if buffer.shape[1] >= self.n_fft else 0
            n_out = min(CHUNK, n_frames - LOOK)  # the last LOOK frames are only looked ahead at
            n_out -= n_out % 2  # whole pairs (see _deviation_spectra)
            if n_out <= 0 or (n_out < CHUNK and not final):
                break
            pieces.append(self._run(buffer, n_out))
            buffer = buffer[:, n_out * self.hop :]
        self._input = buffer
        if not pieces:
            return self._empty()
        if len(pieces) == 1:
            return pieces[0]
        residuals = [r for _, r in pieces if r is not None]
        return np.concatenate([t for t, _ in pieces]), np.concatenate(residuals) if residuals else None

    def _run(self, buffer: Float32Array, n_out: int) -> tuple[Float32Array, Float32Array | None]:
        """Synthesise the first `n_out` frames' hops of `buffer`, which holds LOOK frames more."""
        n_frames = n_out + LOOK
        known = self._ahead.shape[2]  # the first frames of this buffer, analysed by the last call
        spectra = self._spectra(buffer[:, known * self.hop :], n_frames - known)
        deviations = self._deviation_spectra(spectra, known, n_out)
        synthesized = self._fft.irfft(deviations, n=self.n_fft, axis=-1, overwrite_x=True)
        synthesized *= self._synthesis
        out = self._overlap_add(synthesized)
        consumed = n_out * self.hop
        self._tail = out[:, consumed:]
        skip = min(self._skip, consumed)
        self._skip -= skip
        self._emitted += consumed - skip
        if self.channels == 2 and not self.mid_from_source:
            return self._stereo(buffer[:, skip:consumed], out[0, skip:consumed])
        made = self.channels - 1  # deviations synthesised; the mid follows them when it is made too
        ready = np.empty((self.channels, consumed), np.float32)
        ready[:-1] = out[:made, :consumed]
        ready[-1] = -ready[:-1].sum(axis=0) if made > 1 else -ready[0]
        # the mid: the service's answer itself, or its gain on the source's own mid (see the module doc)
        target = ready + (out[made, :consumed] if self.mid_from_source else buffer[0, :consumed])
        residual = None
        if self.service_residual:  # R + d_c − d̂_c, with d_c = S_c − mean(S)
            source = buffer[2:, :consumed]
            if self.mid_from_source:  # R is as far off the source's clock as T: what the source loses instead
                residual = source - target
            else:
                residual = source - source.mean(axis=0) - ready + buffer[1, :consumed]
        target, residual = target[:, skip:], None if residual is None else residual[:, skip:]
        return np.ascontiguousarray(target.T), None if residual is None else np.ascontiguousarray(residual.T)

    def _stereo(self, rows: Float32Array, left: Float32Array) -> tuple[Float32Array, Float32Array | None]:
        """T ± d̂ (and R ± (d − d̂)) written straight into (n, 2) stems: no transposed copies."""
        target = np.empty((len(left), 2), np.float32)
        np.add(rows[0], left, out=target[:, 0])
        np.subtract(rows[0], left, out=target[:, 1])
        if not self.service_residual:
            return target, None
        lost = rows[2] - rows[3]  # d − d̂: the side the target does not take
        lost *= 0.5
        lost -= left
        residual = np.empty_like(target)
        np.add(rows[1], lost, out=residual[:, 0])
        np.subtract(rows[1], lost, out=residual[:, 1])
        return target, residual

    def _spectra(self, buffer: Float32Array, n_frames: int) -> Complex64Array:
        """Rows T, M, D_0 … of every frame: stereo transforms its mid and side (two transforms, no sum or
        difference of spectra); more channels transform each channel and take the mean and deviations."""
        rows = buffer[:, : (n_frames - 1) * self.hop + self.n_fft]
        if self.channels == 2:
            signals = np.empty((3, rows.shape[1]), np.float32)
            signals[0] = rows[0]
            np.add(rows[2], rows[3], out=signals[1])
            signals[1] *= 0.5
            np.subtract(rows[2], signals[1], out=signals[2])
        else:
            signals = np.concatenate((rows[:1], rows[2:]))
        view = sliding_window_view(signals, self.n_fft, axis=1)[:, :: self.hop]
        frames = np.multiply(view, self._window, dtype=np.float32)
        spectra: Complex64Array = self._fft.rfft(frames, axis=-1, overwrite_x=True)
        if self.channels == 2:
            return spectra
        mid = spectra[1:].mean(axis=0)
        out = np.empty((2 + self.channels, *mid.shape), np.complex64)
        out[0], out[1] = spectra[0], mid
        np.subtract(spectra[1:], mid, out=out[2:])
        return out

    def _deviation_spectra(self, spectra: Complex64Array, known: int, n_out: int) -> Complex64Array:
        """D̂_c for the first `n_out` frames, channels 0..C−2, then the mid |G|·M when it is made from the
        source. `spectra`: rows T, M, D_0 … of the frames after the `known` ones the last call analysed."""
        used = self._used
        fresh, bins = spectra.shape[1:]
        n_frames = known + fresh
        width = bins + 1  # each frame's planes end in a zero bin, so that whole planes are one contiguous run
        # real and imaginary planes: T, M, R = M − T, D_0 …
        parts = self._plane("parts", (2, 3 + used, n_frames, width))
        parts[:, :, :known] = self._ahead
        re, im = parts[0, :, known:], parts[1, :, known:]
        np.copyto(re[0, :, :bins], spectra[0].real)
        np.copyto(im[0, :, :bins], spectra[0].imag)
        np.copyto(re[1, :, :bins], spectra[1].real)
        np.copyto(im[1, :, :bins], spectra[1].imag)
        np.subtract(re[1], re[0], out=re[2])
        np.subtract(im[1], im[0], out=im[2])
        np.copyto(re[3:, :, :bins], spectra[2 : 2 + used].real)
        np.copyto(im[3:, :, :bins], spectra[2 : 2 + used].imag)
        # raw statistics of frames −LOOK … n_frames − 1: those the last call computed, then the fresh ones
        raw = self._plane("raw", (stat_rows(used), LOOK + n_frames, width))
        raw[:, : LOOK + known] = self._history
        raw_statistics(re, im, raw[:, LOOK + known :], self._plane("tmp", (fresh, width)))
        # what the next call starts with: the frames it looks back at, and those it is now given again
        self._history = raw[:, n_out:].copy()
        self._ahead = parts[:, :, n_out:].copy()
        re, im = parts[0], parts[1]
        # the sums over frames, one per pair of frames (frames 2j and 2j + 1 share their pan, share and gate:
        # the sums span ±4 frames either way, and this halves the cost of all that follows them)
        pairs = n_out // 2
        work = self._plane("work", (2, len(raw), pairs + LOOK, width))
        summed = np.add(raw[:, : n_out + 2 * LOOK : 2], raw[:, 1 : n_out + 2 * LOOK : 2], out=work[0])
        timed = smooth_pairs(summed, work)  # pairs 0 … n_out/2 − 1, in work[1]
        # the long gate, one per bin for the whole piece: every 4th pair's sums over ±2 pairs (weights 1 2 2 2 1)
        # tile the piece's frames −4 … 29 (evenly but for the two ends), and the last piece's the 32 before them
        # (a sum over the piece's pairs costs 3× as much; the lookahead measured no better)
        piece = long_sums(timed[:, ::4])
        sums = piece + self._last_piece
        self._last_piece = piece
        long_gate = long_gates(sums, used, self.channels)
        stats = smooth_bins(timed, work[0, :, :pairs])
        k = slice(0, n_out)
        t_re, t_im = re[0, k], im[0, k]
        here = raw[:, LOOK : LOOK + n_out]  # this frame's own |M|², D_c·M̄ and M·R̄ (rows: see _stat_rows)
        gate, unexplained = gates(timed, used, self.channels)
        np.minimum(gate, long_gate, out=gate)
        gate = gate[:, None]  # one per pair: against (pairs, 2, width) of frames
        # the steady floor over this piece and the two before it (see the module doc)
        floors = piece_floors(unexplained, timed[0])
        window = np.minimum(floors, self._floors[0])
        np.minimum(window, self._floors[1], out=window)
        self._floors = np.stack((self._floors[1], floors))
        steady = steady_weights(unexplained, window, self.channels)[:, None]  # f, one per pair like the gate
        t_re, t_im = t_re.reshape(pairs, 2, width), t_im.reshape(pairs, 2, width)
        here = here.reshape(len(here), pairs, 2, width)
        # s = max(|M|², |T|²): G = T·M̄ / s is the gain the service gave the mid in this bin and frame
        scale = self._plane("scale", (pairs, 2, width))
        np.multiply(t_re, t_re, out=scale)
        scale += t_im * t_im
        np.maximum(scale, here[0], out=scale)
        scale += EPS
        made = self.channels - 1
        out = np.empty((made + self.mid_from_source, n_out, bins), np.complex64)
        pan_re, pan_im, trust, explained = pans(stats, used)
        if self.mid_from_source:
            # T is not on the source's clock to the sample: keep only the size of G, |T·M̄| / s, so that the mid
            # (and with it every channel) keeps the source's phase and its transients stay where they are
            m_re, m_im = re[1, k].reshape(pairs, 2, width), im[1, k].reshape(pairs, 2, width)
            size = np.sqrt((t_re * m_re + t_im * m_im) ** 2 + (t_im * m_re - t_re * m_im) ** 2)
            size /= scale
            size = size.reshape(n_out, width)
            out[-1].real, out[-1].imag = (re[1, k] * size)[:, :bins], (im[1, k] * size)[:, :bins]
            size.reshape(pairs, 2, width)[...] *= gate
            # D̂ = g·|G|·(α·M + f·(D − α·M)) = g·|G|·(f·D + (1 − f)·α·M)
            kept = (1.0 - steady) * size.reshape(pairs, 2, width)
            size.reshape(pairs, 2, width)[...] *= steady
            for c in range(made):
                row = c if used > 1 else 0
                a_re, a_im = pan_re[row, :, None], pan_im[row, :, None]
                pm_re = (a_re * m_re - a_im * m_im) * kept  # (1 − f)·g·|G|·α·M
                pm_im = (a_re * m_im + a_im * m_re) * kept
                out[c].real = (re[3 + c, k] * size + pm_re.reshape(n_out, width))[:, :bins]
                out[c].imag = (im[3 + c, k] * size + pm_im.reshape(n_out, width))[:, :bins]
            out[..., self._heard_bins :] = 0.0
            return out
        gamma_re, gamma_im = residual_shares(stats, used, pan_re, pan_im, trust, explained)
        # D̂ = g·(α·T + f·G·(D − α·M − γ·R)) = g·(T/s)·(α·(s − f·|M|²) + f·(D·M̄ − γ·conj(M·R̄))), with this
        # frame's own |M|², D·M̄ and M·R̄: no product of spectra is formed twice
        weight = gate / scale  # g / s
        scale -= steady * here[0]  # s − f·|M|²
        z_re, z_im = here[3], here[4]
        for c in range(made):
            row = c if used > 1 else 0
            a_re, a_im = pan_re[row, :, None], pan_im[row, :, None]
            y_re, y_im = gamma_re[row, :, None], gamma_im[row, :, None]
            b_re = y_re * z_re
            b_re += y_im * z_im
            np.subtract(here[5 + 4 * c], b_re, out=b_re)
            b_re *= steady
            b_re += a_re * scale
            b_im = y_re * z_im
            b_im -= y_im * z_re
            b_im += here[6 + 4 * c]
            b_im *= steady
            b_im += a_im * scale
            b_re *= weight
            b_im *= weight
            out[c].real = (t_re * b_re - t_im * b_im).reshape(n_out, width)[:, :bins]
            out[c].imag = (t_re * b_im + t_im * b_re).reshape(n_out, width)[:, :bins]
        out[..., self._heard_bins :] = 0.0
        return out

    def _plane(self, name: str, shape: tuple[int, ...]) -> Float32Array:
        """Scratch kept between calls (fresh big arrays cost page faults): a view of at least `shape`, zeros
        where nothing was written (the planes' last bin: see _deviation_spectra)."""
        size = int(np.prod(shape))
        store = self._scratch.get(name)
        if store is None or store.size < size:
            store = self._scratch[name] = np.zeros(size, np.float32)
        return store[:size].reshape(shape)

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

