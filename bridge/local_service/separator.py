"""The local service's deterministic stand-in for SAM Audio. Tests assert on this rule.

1. Decode the input with soundfile (WAV/FLAC/MP3), mix it to MONO (mean of the channels) and resample
   it to 48 kHz with soxr ("HQ"), as the real model does. Call this `mono48`.
2. Pick a band from the prompt's words (case-insensitive, whole words, also the parts of hyphenated
   words; the rules are tried in this order and the first that matches wins):
     bass kick sub 808 low                                   -> LOW   (below 200 Hz)
     vocal voice vocals singing speech dialogue talk         -> VOICE (300-3400 Hz)
     hat hats hi-hat cymbal shaker air high                  -> HIGH  (above 6 kHz)
     anything else                                           -> MID   (500-2000 Hz)
   span-separate without a prompt -> FULL (the whole signal; the spans say what to keep).
3. target = mono48 through a ZERO-PHASE filter for that band: a 4801-tap linear-phase FIR (Kaiser
   window, beta 8.6; band edges are its -6 dB points) with its 2400-sample delay removed exactly and
   the signal taken as zero outside its ends, so no transient moves by a sample. Computed in 5 s
   blocks that overlap by the filter's reach, each by float32 overlap-save (32768-point transforms,
   one batch per block: 5x faster than one float64 transform per block): the same as filtering the
   whole signal at once to float32 rounding (within 2e-6 of float64 on a signal peaking at 4), with
   memory bounded whatever the input's length (~50 MB above idle).
4. span-separate: the target is silenced outside the spans to keep (the union of `include` spans, or
   everything when there are none, minus the `include: false` spans).
5. residual = mono48 - target, so target + residual == mono48 up to float32 rounding.
6. Output: mono 48 kHz, WAV FLOAT or MP3 (libsndfile's LAME encoder, 160 kbit/s CBR; the file
   carries encoder delay and padding, which decoders honouring its LAME tag, such as libsndfile and
   ffmpeg, trim), as long as mono48.

Fault hooks: `shift` delays (positive) or advances (negative) both outputs by whole samples keeping
their length; `drift_ppm` resamples to 48000 * (1 + ppm/1e6) Hz while still labelling it 48 kHz;
`noise_seed` replaces mono48 with seeded noise unrelated to the input.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from bridge.audio.prefetch import ReadAhead

SAMPLE_RATE = 48_000
TAPS = 4801
REACH = (TAPS - 1) // 2
BLOCK = 5 * SAMPLE_RATE
SEGMENT = 1 << 15  # overlap-save FFT size: 27968 new samples per transform of the 4801 taps
Audio = NDArray[np.float64]


@dataclass(frozen=True)
class Band:
    name: str
    low_hz: float | None  # high-pass edge
    high_hz: float | None  # low-pass edge


LOW = Band("low", None, 200.0)
VOICE = Band("voice", 300.0, 3400.0)
HIGH = Band("high", 6000.0, None)
MID = Band("mid", 500.0, 2000.0)
FULL = Band("full", None, None)

BAND_WORDS: tuple[tuple[frozenset[str], Band], ...] = (
    (frozenset({"bass", "kick", "sub", "808", "low"}), LOW),
    (frozenset({"vocal", "voice", "vocals", "singing", "speech", "dialogue", "talk"}), VOICE),
    (frozenset({"hat", "hats", "hi-hat", "cymbal", "shaker", "air", "high"}), HIGH),
)


def band_for_prompt(prompt: str | None) -> Band:
    if prompt is None or not prompt.strip():
        return FULL
    tokens = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", prompt.lower())
    words = set(tokens) | {part for token in tokens for part in token.split("-")}
    for names, band in BAND_WORDS:
        if words & names:
            return band
    return MID


@functools.cache
def band_filter(band: Band) -> Audio | None:
    """Linear-phase FIR taps for `band` (None for FULL: the target is the signal itself).

    A Kaiser-windowed sinc, scaled to unit gain at the middle of the pass band: the same taps as
    scipy.signal.firwin, made with numpy alone (importing scipy.signal costs ~75 MB of RAM).
    """
    if band.low_hz is None and band.high_hz is None:
        return None
    nyquist = SAMPLE_RATE / 2
    left = (band.low_hz or 0.0) / nyquist
    right = (band.high_hz or nyquist) / nyquist
    m = np.arange(TAPS) - REACH
    taps: Audio = (right * np.sinc(right * m) - left * np.sinc(left * m)) * np.kaiser(TAPS, 8.6)
    centre = 0.0 if left == 0 else 1.0 if right == 1 else (left + right) / 2
    taps /= np.sum(taps * np.cos(np.pi * m * centre))
    taps.setflags(write=False)
    return taps


@dataclass(frozen=True)
class SeparationSpec:
    prompt: str | None
    output_format: str = "wav"
    spans: tuple[tuple[float, float, bool], ...] = ()  # (start, end, include) in seconds
    shift: int = 0
    drift_ppm: float = 0.0
    noise_seed: int | None = None  # set: the result is noise unrelated to the input


@dataclass(frozen=True)
class SeparationOutput:
    target: Path
    residual: Path
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / SAMPLE_RATE


class AudioDecodeError(Exception):
    pass


def probe(path: Path) -> Any:
    """soundfile's info for `path`; AudioDecodeError with the reason when it is not audio."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(f"Could not decode audio: {exc}") from None
    if info.frames <= 0:
        raise AudioDecodeError("Could not decode audio: the file holds no samples")
    return info


def separate(source: Path, spec: SeparationSpec, target_path: Path, residual_path: Path,
             on_block: Callable[[int, int], None] = lambda _start, _count: None) -> SeparationOutput:
    """Write target and residual for `source` by the module's rule.

    `on_block(start_frame, frames)` runs after each block is written (progress, pacing, cancel: it may
    raise to stop). AudioDecodeError when the input is not readable audio.
    """
    taps = band_filter(band_for_prompt(spec.prompt))
    if spec.output_format == "wav":
        options: dict[str, Any] = {"subtype": "FLOAT", "format": "WAV"}
    else:  # 160 kbit/s CBR, a typical service mp3 (libsndfile's default VBR drops to 32 kbit/s)
        options = {"subtype": "MPEG_LAYER_III", "format": "MP3", "compression_level": 0.5,
                   "bitrate_mode": "CONSTANT"}
    frames = 0
    with (
        ExitStack() as stack,
        sf.SoundFile(str(target_path), "x", SAMPLE_RATE, 1, **options) as target_out,
        sf.SoundFile(str(residual_path), "x", SAMPLE_RATE, 1, **options) as residual_out,
    ):
        decoded = stack.enter_context(ReadAhead(_mono48(source, spec), name="stand-in-decode"))  # overlaps
        for mono, target in _shifted(_zero_phase_blocks(decoded, taps), spec.shift):
            if spec.spans:
                target = target * _span_mask(spec.spans, frames, len(target))
            target_out.write(target.astype(np.float32))
            residual_out.write((mono - target).astype(np.float32))
            on_block(frames, len(mono))
            frames += len(mono)
    return SeparationOutput(target_path, residual_path, frames)


def chunk_starts(duration: float, max_chunk: float, overlap: float) -> list[float]:
    """Where the real service's chunks would start (it splits long audio with overlap)."""
    step = max(max_chunk - overlap, max_chunk * 0.1, 1.0)  # bounded log lines for odd settings
    count = 1 if duration <= max_chunk else 1 + math.ceil((duration - max_chunk) / step)
    return [index * step for index in range(count)]


def _mono48(source: Path, spec: SeparationSpec) -> Iterator[Audio]:
    """The input as mono 48 kHz blocks (with the drift and noise faults applied)."""
    try:
        sound = sf.SoundFile(str(source))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(f"Could not decode audio: {exc}") from None
    with sound:
        rate = float(SAMPLE_RATE) * (1.0 + spec.drift_ppm * 1e-6)
        resampler = soxr.ResampleStream(sound.samplerate, rate, 1, dtype="float64", quality="HQ")
        noise = np.random.default_rng(spec.noise_seed) if spec.noise_seed is not None else None
        block_frames = max(1, int(sound.samplerate) * BLOCK // SAMPLE_RATE)
        for block in _resampled(sound, resampler, block_frames):
            yield 0.1 * noise.standard_normal(len(block)) if noise is not None else block


def _resampled(sound: sf.SoundFile, resampler: soxr.ResampleStream, block_frames: int) -> Iterator[Audio]:
    while True:
        try:
            data = sound.read(block_frames, dtype="float64", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioDecodeError(f"Could not decode audio: {exc}") from None
        last = len(data) < block_frames
        out = resampler.resample_chunk(_channel_mean(data), last=last)
        if len(out):
            yield np.asarray(out, dtype=np.float64)
        if last:
            return


def _channel_mean(data: Audio) -> Audio:
    """data.mean(axis=1) without numpy's slow strided reduction: the same sums in the same order for
    up to 7 channels (from 8 on numpy sums pairwise, so it does the sums itself)."""
    if data.shape[1] >= 8:
        return np.asarray(data.mean(axis=1), dtype=np.float64)
    mono = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    if data.shape[1] > 1:
        mono /= data.shape[1]
    return mono


def _shifted(pairs: Iterator[tuple[Audio, Audio]], shift: int) -> Iterator[tuple[Audio, Audio]]:
    """Delay (shift > 0) or advance (shift < 0) the (mono, target) stream by whole samples, same length."""
    if shift == 0:
        yield from pairs
        return
    if shift > 0:
        held: NDArray[np.float64] = np.zeros((2, shift))
        for mono, target in pairs:
            joined = np.concatenate([held, np.stack([mono, target])], axis=1)
            held = joined[:, -shift:]
            if joined.shape[1] > shift:
                yield joined[0, :-shift], joined[1, :-shift]
        return
    to_skip = skipped = -shift
    for mono, target in pairs:
        cut = min(to_skip, len(mono))
        to_skip -= cut
        if len(mono) > cut:
            yield mono[cut:], target[cut:]
    skipped -= to_skip
    if skipped:
        yield np.zeros(skipped), np.zeros(skipped)


def _zero_phase_blocks(blocks: Iterator[Audio], taps: Audio | None) -> Iterator[tuple[Audio, Audio]]:
    """(mono block, target block) pairs: `taps` applied with its delay removed, zeros beyond the ends."""
    if taps is None:
        for block in blocks:
            yield block, block.copy()
        return
    # `window` holds the signal from REACH samples before the next output sample onwards.
    window: Audio = np.zeros(REACH)
    for block in blocks:
        window = np.concatenate([window, block])
        while len(window) >= BLOCK + 2 * REACH:
            yield _filter_span(window, BLOCK, taps)
            window = window[BLOCK:]
    window = np.concatenate([window, np.zeros(REACH)])
    remaining = len(window) - 2 * REACH
    if remaining > 0:
        yield _filter_span(window, remaining, taps)


def _filter_span(window: Audio, count: int, taps: Audio) -> tuple[Audio, Audio]:
    """`count` output samples: the 'valid' part of the window convolved with the taps, by overlap-save
    in float32 segments of SEGMENT samples, transformed as one batch (scipy caches the plan)."""
    import scipy.fft as sfft  # ~0.15 s: paid by the first job, not by every command that starts the stand-in

    useful = SEGMENT - (TAPS - 1)  # valid outputs per segment
    segments = -(-count // useful)
    padded = np.zeros(segments * useful + TAPS - 1, np.float32)
    used = min(len(window), len(padded))
    padded[:used] = window[:used]
    frames = sliding_window_view(padded, SEGMENT)[::useful][:segments]
    spectra = sfft.rfft(frames, axis=-1)
    spectra *= _taps_spectrum(taps.tobytes())
    target = sfft.irfft(spectra, SEGMENT, axis=-1, overwrite_x=True)[:, TAPS - 1 :]
    return window[REACH : REACH + count].copy(), target.reshape(-1)[:count].astype(np.float64)


@functools.lru_cache(maxsize=8)
def _taps_spectrum(taps: bytes) -> NDArray[np.complex64]:
    import scipy.fft as sfft

    spectrum: NDArray[np.complex64] = sfft.rfft(np.frombuffer(taps, dtype=np.float64).astype(np.float32), SEGMENT)
    return spectrum


def _span_mask(spans: tuple[tuple[float, float, bool], ...], start: int, count: int) -> Audio:
    """1 where the target is kept in samples [start, start + count), else 0."""
    index = np.arange(start, start + count)
    includes = [(s, e) for s, e, keep in spans if keep]
    keep = np.zeros(count, dtype=bool) if includes else np.ones(count, dtype=bool)
    for span_start, span_end in includes:
        keep |= (index >= round(span_start * SAMPLE_RATE)) & (index < round(span_end * SAMPLE_RATE))
    for span_start, span_end, included in spans:
        if not included:
            keep &= ~((index >= round(span_start * SAMPLE_RATE)) & (index < round(span_end * SAMPLE_RATE)))
    return keep.astype(np.float64)
