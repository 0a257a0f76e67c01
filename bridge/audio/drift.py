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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from bridge.audio.align import (
    WEAK_CORRELATION,
    AlignedService,
    DriftProbe,
    LagEstimate,
    drift_rate_scale,
    measure_start_offset,
    mono_mix,
)
from bridge.audio.source import INTEGER_BITS, SourceInfo, read_block, refuse_non_finite
from bridge.common.errors import SourceError

log = logging.getLogger(__name__)

UNRELATED_CORRELATION = 0.2  # below this the measured lag is noise: keep the result where it is
REFINEMENTS = 5  # cheap measuring passes after the first estimate of the rate
_BLOCK = 1 << 16


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
    source = segment.source
    service = AlignedService(segment.target, segment.residual, source.samplerate, rate_scale=rate_scale)
    try:
        with open_source(source) as src:
            src.seek(segment.start_frame)
            remaining = [segment.frames]
            pcm = source.subtype in INTEGER_BITS

            def read_source(n: int) -> NDArray[np.float64]:
                n = max(0, min(n, remaining[0]))
                block = read_block(src, n, "float64")
                if not pcm:  # refused before a NaN or inf is measured on
                    refuse_non_finite(block, segment.start_frame + segment.frames - remaining[0], source)
                remaining[0] -= n
                return mono_mix(block)

            def read_service(n: int) -> NDArray[np.float32]:
                t, r = service.read(n)
                return t + r

            return measure_start_offset(read_source, read_service, source.samplerate, segment.frames)
    finally:
        service.close()


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
