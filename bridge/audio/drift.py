"""Where a service result sits on a segment of the source, and the rate to read it at when its clock drifts.

`measure_start` gives the offset (the first window with signal, see `bridge.audio.align`). A drift shows in
the end window, measured while the stems are written. To correct it, conform reads the result again at a
scaled rate. The lag measured over a window is not quite the lag at its middle when the result drifts
(transients early or late in the window pull the peak their way), so the first scale is refined by
measuring both windows again at that scale, which only decodes and resamples the result (no stems), until
the end window's lag is a sample or less. Those measurements are exactly what the stems made at that scale
would show, so a correction that would not line the end up better than none is never made.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from bridge.audio.align import (
    WEAK_CORRELATION,
    AlignedService,
    DriftProbe,
    Float32Array,
    Float64Array,
    LagEstimate,
    drift_rate_scale,
    measure_start_offset,
    mono_mix,
)
from bridge.audio.pcm_wav import PcmWavReader
from bridge.audio.source import INTEGER_BITS, SourceInfo, read_block, refuse_non_finite
from bridge.common.errors import SourceError

log = logging.getLogger(__name__)

UNRELATED_CORRELATION = 0.2  # below this the measured lag is noise: keep the result where it is
REFINEMENTS = 5  # cheap measuring passes after the first estimate of the rate
_BLOCK = 1 << 16
REPLAY_BYTES = 64 * 2**20  # decoded opening kept for the stems: 95 s of stereo 44.1 kHz


@dataclass(frozen=True)
class Segment:
    """The part of the source the stems are for, and the service's two result files."""

    source: SourceInfo
    start_frame: int
    frames: int
    target: Path
    residual: Path


@dataclass(frozen=True)
class DriftCorrection:
    scale: float  # the result is (or would have been) read as if its rate were this much higher
    found: LagEstimate  # the end window's lag before the correction
    first_start: LagEstimate  # the start window before the correction
    left: LagEstimate | None  # the end window's lag with the correction (None: not measurable)
    applied: bool = True  # False: the correction did not line the end up better, the stems are uncorrected


def usable_offset(start: LagEstimate) -> int:
    return start.lag if start.correlation >= UNRELATED_CORRELATION else 0


def open_source(source: SourceInfo) -> sf.SoundFile:
    try:
        return sf.SoundFile(str(source.path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise SourceError(
            f"“{source.path.name}” can no longer be read.",
            "Check that the file is still there and unchanged.",
        ) from exc


def measure_start(segment: Segment, rate_scale: float = 1.0) -> LagEstimate:
    with SegmentReader(segment, rate_scale) as reader:
        return reader.measure_start()


class SegmentReader:
    """The segment's exact source samples and the service's result on the source's grid, decoded once.

    `measure_start` reads the opening of both; `restart(offset)` goes back to the segment's start with the
    result shifted by the offset measured, replaying what the measurement decoded (the same samples: soxr's
    stream gives the same output whatever is read when) instead of decoding and resampling it again. What
    is kept for that is bounded (`replay_bytes`); past it, `restart` opens both anew."""

    def __init__(self, segment: Segment, rate_scale: float = 1.0, replay_bytes: int = REPLAY_BYTES) -> None:
        self.segment = segment
        self.rate_scale = rate_scale
        source = segment.source
        self.pcm = source.subtype in INTEGER_BITS
        self._service = AlignedService(segment.target, segment.residual, source.samplerate, rate_scale=rate_scale)
        try:
            self._src = open_source(source)
            self._src.seek(segment.start_frame)
        except BaseException:
            self._service.close()
            raise
        try:  # integer PCM WAV read with numpy (see pcm_wav): the same values at a quarter of the cost
            self._direct = PcmWavReader.open(source.path, source.format, source.subtype, source.channels)
        except (OSError, RuntimeError):  # libsndfile has just opened it: let it read it and say what is wrong
            self._direct = None
        except BaseException:
            self._service.close()
            self._src.close()
            raise
        self._read = 0  # source frames taken from the file since the last seek...
        self.decoded_source = 0  # ...and in all (what `restart` saves shows in these two)
        self._decoded_before = 0  # result frames decoded by services closed since
        self._replay_bytes = replay_bytes
        # what was decoded so far, while it may still be replayed (None once it is past `replay_bytes`)
        self._kept_source: list[Float64Array] | None = []
        self._kept_service: list[tuple[Float32Array, Float32Array]] | None = []
        self._kept_size = 0
        self._source_queue: list[Float64Array] = []  # replayed blocks not yet handed out again
        self._service_queue: list[tuple[Float32Array, Float32Array]] = []

    def source(self, count: int) -> Float64Array:
        """The next `count` exact source frames (float64, bit-exact), fewer only at the segment's end."""
        if self._source_queue:
            return _take(self._source_queue, count, self._next_source)
        return self._next_source(count)

    def service(self, count: int) -> tuple[Float32Array, Float32Array]:
        """The next `count` samples of the aligned target and residual (zeros past the result's end)."""
        if self._service_queue:
            return _take_pair(self._service_queue, count, self._service.read)
        pair = self._service.read(count)
        if self._kept_service is not None:
            self._kept_service.append(pair)
            self._keep(pair[0].nbytes + pair[1].nbytes)
        return pair

    def _next_source(self, count: int) -> Float64Array:
        count = max(0, min(count, self.segment.frames - self._read))
        if self._direct is not None:
            block = self._direct.read(self.segment.start_frame + self._read, count)
            if len(block) < count:
                raise _ended_early(self.segment.source)
        else:
            block = read_exact(self._src, count, self.segment.source)
        if not self.pcm:  # refused before a NaN, inf or absurd value is measured on or written
            refuse_non_finite(block, self.segment.start_frame + self._read, self.segment.source)
        self._read += count
        self.decoded_source += count
        if self._kept_source is not None:
            self._kept_source.append(block)
            self._keep(block.nbytes)
        return block

    def _keep(self, size: int) -> None:
        self._kept_size += size
        if self._kept_size > self._replay_bytes:
            self._kept_source = self._kept_service = None

    def measure_start(self) -> LagEstimate:
        """The start offset (`measure_start_offset`), from the segment's start."""

        def read_service(n: int) -> NDArray[np.float32]:
            t, r = self.service(n)
            return t + r

        return measure_start_offset(lambda n: mono_mix(self.source(n)), read_service,
                                    self.segment.source.samplerate, self.segment.frames)

    def restart(self, offset: int) -> None:
        """Back to the segment's start, the result `offset` samples late (skipped) or early (zeros first)."""
        if self._kept_source is not None and self._kept_service is not None:
            self._source_queue = self._kept_source + self._source_queue
            self._service_queue = self._kept_service + self._service_queue
        else:  # too much was read to keep: decode again
            self._source_queue, self._service_queue = [], []
            self._src.seek(self.segment.start_frame)
            self._read = 0
            self._service.close()
            self._decoded_before += self.decoded_result
            self._service = AlignedService(self.segment.target, self.segment.residual,
                                           self.segment.source.samplerate, rate_scale=self.rate_scale)
        self._kept_source = self._kept_service = None  # replayed once: nothing more is kept
        if offset > 0:
            self.service(offset)
        elif offset < 0:
            silence = np.zeros(-offset, np.float32)
            self._service_queue.insert(0, (silence, silence))

    @property
    def decoded_result(self) -> int:
        """Frames of the result's target file decoded so far (its residual's are as many)."""
        return self._decoded_before + self._service.target.samples_read

    def close(self) -> None:
        try:
            self._service.close()
        finally:
            self._src.close()
            if self._direct is not None:
                self._direct.close()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_exact(src: sf.SoundFile, count: int, source: SourceInfo) -> Float64Array:
    """`count` source frames as float64, bit-exact: libsndfile scales integer samples by a power of two
    (what their int32 reading × 2**-31 gives, pinned by a test), so no second pass is needed."""
    try:
        block = read_block(src, count, "float64")
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise SourceError(f"“{source.path.name}” could not be read to the end.", "Export it again.") from exc
    if len(block) < count:
        raise _ended_early(source)
    return np.asarray(block, dtype=np.float64)


def _ended_early(source: SourceInfo) -> SourceError:
    return SourceError(
        f"“{source.path.name}” ended earlier than expected; it may have changed while the job ran.",
        "Run the job again once the file is final.",
    )


def _take(queue: list[Float64Array], count: int, more: Callable[[int], Float64Array]) -> Float64Array:
    """`count` frames from the front of `queue`, then from `more` once it is empty."""
    parts, got = [], 0
    while got < count and queue:
        head = queue[0]
        part = head[: count - got]
        if len(part) == len(head):
            queue.pop(0)
        else:
            queue[0] = head[len(part):]
        parts.append(part)
        got += len(part)
    if got < count:
        parts.append(more(count - got))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _take_pair(queue: list[tuple[Float32Array, Float32Array]], count: int,
               more: Callable[[int], tuple[Float32Array, Float32Array]]) -> tuple[Float32Array, Float32Array]:
    targets, residuals, got = [], [], 0
    while got < count and queue:
        t, r = queue[0]
        take = min(len(t), count - got)
        if take == len(t):
            queue.pop(0)
        else:
            queue[0] = (t[take:], r[take:])
        targets.append(t[:take])
        residuals.append(r[:take])
        got += take
    if got < count:
        t, r = more(count - got)
        targets.append(t)
        residuals.append(r)
    if len(targets) == 1:
        return targets[0], residuals[0]
    return np.concatenate(targets), np.concatenate(residuals)


@dataclass(frozen=True)
class RateFit:
    """A rate to read the result at, and both windows measured with it (the start's offset applied)."""

    scale: float
    start: LagEstimate
    end: LagEstimate | None

    def lines_up_better_than(self, uncorrected_end: LagEstimate) -> bool:
        """Whether stems made at this rate end closer to the source than the uncorrected ones."""
        end = self.end
        sure = end is not None and end.has_signal and end.correlation >= WEAK_CORRELATION
        return sure and self.start.has_signal and end is not None and abs(end.lag) < abs(uncorrected_end.lag)


def refine_scale(segment: Segment, scale: float) -> RateFit:
    """`scale` (from the first pass) adjusted until the end window lines up: the best measured in up to
    REFINEMENTS tries (a try that misses further is never kept)."""
    best: RateFit | None = None
    for _ in range(REFINEMENTS):
        fit = RateFit(scale, *_measure_ends(segment, scale))
        if best is None or _end_miss(fit) < _end_miss(best):
            best = fit
        step = drift_rate_scale(fit.start, fit.end) if fit.end is not None else None
        if step is None:  # a sample or less left (or nothing sure to go on): done
            break
        log.debug("drift: %+d samples left at %+.2f ppm; refining", fit.end.lag if fit.end else 0, (scale - 1) * 1e6)
        scale *= step
    assert best is not None
    return best


def _end_miss(fit: RateFit) -> float:
    return abs(fit.end.lag) if fit.end is not None and fit.end.has_signal else math.inf


def _measure_ends(segment: Segment, scale: float) -> tuple[LagEstimate, LagEstimate | None]:
    """The start and end windows' lags with the result read at `scale`, the start's offset applied."""
    start = measure_start(segment, scale)
    source = segment.source
    probe = DriftProbe(segment.frames, source.samplerate)
    service = AlignedService(segment.target, segment.residual, source.samplerate, usable_offset(start), scale)
    try:
        with open_source(source) as src:
            for position in range(0, segment.frames, _BLOCK):
                count = min(_BLOCK, segment.frames - position)
                target, residual = service.read(count)  # read through: the resampler streams from the start
                if probe.wants(position, count):
                    src.seek(segment.start_frame + position)
                    probe.feed_source(position, mono_mix(read_block(src, count, "float64")))
                    probe.feed_service(position, target + residual)
            tail_t, tail_r = service.read(probe.max_lag)
            probe.feed_service(segment.frames, tail_t + tail_r)
    finally:
        service.close()
    return start, probe.estimate()
