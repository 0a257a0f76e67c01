"""Project the service's MONO result onto the source's channels without losing the stereo image.

The model mixes its input down to mono, so its target has no image of its own. Copying it to every
channel would collapse a stereo or 5.1 source to the middle. Instead we treat the service output as a
time-frequency mask and apply that mask to each source channel:

    M(t, f) = |T|² / (|T|² + |R|² + eps)      (power-ratio, "Wiener-like", mask in 0..1)
    target_c = ISTFT( M · STFT(source_c) )

where T and R are the STFTs of the (aligned, resampled) service target and residual. A sound that sits
hard left in the source keeps its energy in the left channel of the target, and each target channel is
a filtered version of the matching source channel, so phase and timing come from the source itself.

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

Float32Array = NDArray[np.float32]

N_FFT = 2048
HOP = 1024
_EPS = 1e-10  # power floor: bins where the service has (almost) nothing go to the residual


def describe(channels: int, n_fft: int = N_FFT, hop: int = HOP) -> str:
    if channels == 1:
        return "direct (mono source: the aligned service result as is)"
    return f"stft-ratio-mask {n_fft}/{hop} sqrt-hann, M=|T|²/(|T|²+|R|²), applied per channel"


class MaskProjector:
    """Streaming STFT mask projection of a mono target/residual pair onto `channels` source channels."""

    def __init__(self, channels: int, *, service_residual: bool = False, n_fft: int = N_FFT, hop: int = HOP):
        if n_fft % hop:
            raise ValueError("n_fft must be a multiple of hop")
        self.channels = channels
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
        service = spectra[:2]
        power = service.real**2 + service.imag**2  # only the service rows need their power
        total = power[0] + power[1] + _EPS
        masks = [power[0] / total]
        if self.service_residual:
            masks.append(power[1] / total)
        sources = spectra[2:]
        pieces = [sfft.irfft(sources * mask, n=self.n_fft, axis=-1, overwrite_x=True) for mask in masks]
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
