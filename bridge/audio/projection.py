"""Project the service's MONO result onto the source's channels without losing the stereo image.

The model mixes its input down to mono, so its target has no image of its own. Copying it to every
channel would collapse a stereo or 5.1 source to the middle. Instead we treat the service output as a
time-frequency mask and apply that mask to each source channel:

    M(t, f) = |T|² / (|T|² + |R|²) · g,   g = H² / (H² + (δ · mean_c |S_c|²)²),   H = |T|² + |R|²
    target_c = ISTFT( M · STFT(source_c) )

where T and R are the STFTs of the (aligned, resampled) service target and residual and S_c those of the
source channels: a power-ratio ("Wiener-like") mask in 0..1. A sound that sits hard left in the source
keeps its energy in the left channel of the target, and each target channel is a filtered version of the
matching source channel, so phase and timing come from the source itself.

The gate g compares what the service heard with what the SOURCE holds in that bin. Where the service's
mix holds (almost) nothing of it (H below δ = -30 dB of the channels' mean power: anti-phase content its
mono mix cancelled, what a lossy result dropped) it never heard that sound, so it goes to the residual
instead of being shared out by the ratio of two near-zero powers. The gate is squared so that where the
service does hear the sound it costs nothing measurable: even a sound in one channel of 5.1 (H = 1/6 of
the mean) loses 4e-5 of its level (−0.0003 dB). Above the service's bandwidth (24 kHz: it works at
48 kHz) the mask is 0, so a hi-res source's ultrasonics never reach the target.

STFT: 2048-point frames, hop 1024, periodic sqrt-Hann for analysis and synthesis (their product, a
Hann window at 50 % overlap, sums to exactly 1: perfect reconstruction when M == 1). Processing is
streaming: each call consumes whole hops and carries the frame overlap and the overlap-add tail to the
next call, so memory stays constant whatever the file length. The output lags the input internally by
`n_fft - hop` samples; the projector hides that and always emits samples in source order, and `flush`
emits the rest so the total equals the input exactly.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from bridge.audio.align import SERVICE_BANDWIDTH

Float32Array = NDArray[np.float32]

N_FFT = 2048
HOP = 1024
UNHEARD = 1e-3  # δ: service power below this fraction of the source's (-30 dB) counts as nothing heard
_EPS = 1e-30  # keeps digital silence (all powers 0) from dividing by zero


def describe(channels: int, n_fft: int = N_FFT, hop: int = HOP) -> str:
    if channels == 1:
        return "direct (mono source: the aligned service result as is)"
    return (f"stft-ratio-mask {n_fft}/{hop} sqrt-hann, M=|T|²/(|T|²+|R|²) gated to 0 where |T|²+|R|² < "
            f"{UNHEARD:g}·mean|S|² and above {SERVICE_BANDWIDTH / 1000:g} kHz, applied per channel")


class MaskProjector:
    """Streaming STFT mask projection of a mono target/residual pair onto `channels` source channels."""

    def __init__(
        self, channels: int, samplerate: int, *, service_residual: bool = False, n_fft: int = N_FFT, hop: int = HOP
    ):
        if n_fft % hop:
            raise ValueError("n_fft must be a multiple of hop")
        self.channels = channels
        # first bin above the service's bandwidth (bin k is at k · rate / n_fft Hz)
        self._heard_bins = min(n_fft // 2 + 1, int(SERVICE_BANDWIDTH * n_fft / samplerate) + 1)
        self.n_fft = n_fft
        self.hop = hop
        self.service_residual = service_residual
        periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self._window = np.sqrt(periodic_hann).astype(np.float32)
        # Σ over overlapping frames of window² (= Hann) is n_fft / (2·hop): undo it at synthesis.
        self._synthesis = (self._window * (2.0 * hop / n_fft)).astype(np.float32)
        self.latency = n_fft - hop
        outputs = channels * (2 if service_residual else 1)
        # Rows: target, residual, source channels. Starting with `latency` zeros means the first real
        # sample is covered by every overlapping frame. Rows keep each frame contiguous for the FFT.
        self._input = np.zeros((2 + channels, self.latency), np.float32)
        self._tail = np.zeros((outputs, self.latency), np.float32)
        self._work = np.empty((4, 0, 0), np.float32)  # the mask's scratch arrays, kept between calls
        self._skip = self.latency  # leading output samples that belong to the zero padding
        self._fed = 0
        self._emitted = 0

    def process(
        self, target: Float32Array, residual: Float32Array, source: NDArray[np.floating]
    ) -> tuple[Float32Array, Float32Array | None]:
        """Feed n aligned samples (source: (n, channels)); returns (target, residual) as (m, channels)
        for the samples now complete, in order."""
        count = len(target)
        buffer = np.empty((2 + self.channels, self._input.shape[1] + count), np.float32)
        kept = self._input.shape[1]
        buffer[:, :kept] = self._input
        buffer[0, kept:] = target
        buffer[1, kept:] = residual
        buffer[2:, kept:] = source.T
        self._fed += count
        return self._run(buffer)

    def flush(self) -> tuple[Float32Array, Float32Array | None]:
        """Emit every remaining sample (the total emitted then equals the total fed)."""
        padded = np.concatenate((self._input, np.zeros((2 + self.channels, self.n_fft), np.float32)), axis=1)
        target, residual = self._run(padded)
        keep = self._fed - (self._emitted - len(target))
        self._emitted = self._fed
        return target[:keep], None if residual is None else residual[:keep]

    def _run(self, buffer: Float32Array) -> tuple[Float32Array, Float32Array | None]:
        length = buffer.shape[1]
        n_frames = (length - self.n_fft) // self.hop + 1 if length >= self.n_fft else 0
        if n_frames <= 0:
            self._input = buffer
            return self._empty()
        # (rows, frames, n_fft), windowed into one contiguous array
        frames = sliding_window_view(buffer, self.n_fft, axis=1)[:, :: self.hop][:, :n_frames] * self._window
        spectra = sfft.rfft(frames, axis=-1, overwrite_x=True)
        target_mask = self._target_mask(spectra)
        masks = [target_mask]
        if self.service_residual:  # the complement: what the service did not put in the target, or never heard
            masks.append(1.0 - target_mask)
        pieces = [sfft.irfft(spectra[2:] * mask, n=self.n_fft, axis=-1, overwrite_x=True) for mask in masks]
        synthesized = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)  # (outputs, frames, n_fft)
        synthesized *= self._synthesis
        out = self._overlap_add(synthesized)
        consumed = n_frames * self.hop
        self._input = buffer[:, consumed:]
        ready = out[:, :consumed]
        self._tail = out[:, consumed:]
        if self._skip:
            skipped = min(self._skip, ready.shape[1])
            ready = ready[:, skipped:]
            self._skip -= skipped
        self._emitted += ready.shape[1]
        target = np.ascontiguousarray(ready[: self.channels].T)
        residual = np.ascontiguousarray(ready[self.channels :].T) if self.service_residual else None
        return target, residual

    def _target_mask(self, spectra: NDArray[np.complex64]) -> Float32Array:
        """M = |T|²·H / (H² + (δ·S̄)²): the ratio |T|²/H times the gate H²/(H² + (δ·S̄)²), in 0..1; valid
        until the next call (it lives in a buffer kept between calls: fresh big arrays cost page faults)."""
        shape = spectra.shape[1:]
        if self._work.shape[1:] != shape:
            self._work = np.empty((4, *shape), np.float32)
        mask, heard, unheard, scratch = self._work
        target, residual = spectra[0], spectra[1]
        np.square(target.real, out=mask)
        mask += np.square(target.imag, out=scratch)  # |T|²
        np.square(residual.real, out=heard)
        heard += np.square(residual.imag, out=scratch)
        heard += mask  # H = |T|² + |R|²
        unheard.fill(0.0)
        for channel in spectra[2:]:
            unheard += np.square(channel.real, out=scratch)
            unheard += np.square(channel.imag, out=scratch)
        unheard *= UNHEARD / self.channels  # δ·S̄
        mask *= heard
        np.square(heard, out=heard)
        heard += np.square(unheard, out=unheard)
        heard += _EPS
        mask /= heard
        mask[:, self._heard_bins :] = 0.0
        return mask

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
