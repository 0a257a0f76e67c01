"""Conform: turn the service's mono 48 kHz result into two stems that drop onto the source's timeline.

Streaming, block by block (64 Ki frames), so an hour-long source costs no more memory than a song:

1. measure where the result sits (`align`): offset at the start, drift at the end;
2. read the result through a soxr stream at the source's rate, skip/pad the offset, pad/trim to exactly
   the segment's frame count (the opening the measurement decoded, source and result, is replayed, not
   decoded again: `drift.SegmentReader`); when the end window shows a drift, the stems are made a second
   time from the result read at a corrected rate (and its offset measured anew);
3. project mono → the source's channels (`projection`: direct for mono; otherwise the result as the mid plus
   estimated deviations, or, for a result read at a drift-corrected rate, its gain on the source's own channels);
4. quantise the target exactly as it will be written, then residual = source − written target (the
   "complement": target + residual == source to the last bit for PCM) or the service's own residual;
5. write both stems in the source's container, sample format, rate and channel count (RF64 past the
   4 GiB WAV limit, WAV for lossy sources), then copy bext/iXML with the time reference moved to the
   segment's start.

The null test reported is the PEAK of source − (target + residual) over the values handed to the writer
(which, for the lossless containers we write, are the values in the files), in dBFS.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from bridge.audio.align import (
    SEARCH_SECONDS,
    WEAK_CORRELATION,
    WINDOW_SECONDS,
    DriftProbe,
    LagEstimate,
    drift_rate_scale,
    mono_mix,
    windows_apart,
)
from bridge.audio.drift import (
    DriftCorrection,
    Segment,
    SegmentReader,
    refine_scale,
    usable_offset,
)
from bridge.audio.prefetch import ReadAhead, WriteBehind
from bridge.audio.projection import MaskProjector, describe
from bridge.audio.quality import QualityMeter, QualityReport
from bridge.audio.source import INTEGER_BITS, SourceInfo
from bridge.audio.stem_output import (
    RF64_THRESHOLD,
    OutputPlan,
    Quantizer,
    StemFiles,
    copy_metadata,
    loses_position,
    output_error,
    plan_output,
)
from bridge.common.errors import BridgeError

log = logging.getLogger(__name__)

Float64Array = NDArray[np.float64]

BLOCK = 1 << 16


@dataclass(frozen=True)
class ConformSpec:
    source: SourceInfo
    start_frame: int
    frames: int
    out_format: str | None = None  # None = same as source (lossy → WAV)
    out_subtype: str | None = None
    residual_method: Literal["complement", "service"] = "complement"
    rf64_threshold: int = RF64_THRESHOLD  # bytes; WAV stems bigger than this are written as RF64


@dataclass(frozen=True)
class ConformReport:
    offset_samples: int  # where the service result sat vs the source, in SOURCE-rate samples (+ = late)
    drift_samples: int  # end offset − start offset
    correlation: float  # normalised peak correlation 0..1
    null_test_dbfs: float  # peak of source − (target + residual) as written, dBFS (−inf if exact)
    method: str
    projection: str
    out_format: str
    out_subtype: str
    format_reason: str | None
    frames: int
    samplerate: int
    channels: int
    # "weak-correlation", "drift" (the stems may drift), "drift-corrected", "drift-unmeasured", "silent-source",
    # "clipped", "position-not-kept" (FLAC/AIFF/CAF stems of a source with a time reference), and the quality
    # flags "target-silent", "target-is-everything", "target-unlikely"
    flags: tuple[str, ...]
    quality: QualityReport | None = None  # how much the result looks like a separation of this source



class _StemValues:
    """Quantises a block's target exactly as it will be stored, makes the residual and measures the null
    test: the two arrays to write."""

    def __init__(self, subtype: str, complement: bool, tally: _Tally, source_subtype: str = "") -> None:
        self.target_q, self.residual_q = Quantizer(subtype), Quantizer(subtype)
        self.complement = complement
        self.tally = tally
        # an integer source no finer than the stems: source − target is whole steps of the stems' format
        stem_bits, source_bits = INTEGER_BITS.get(subtype), INTEGER_BITS.get(source_subtype)
        self.on_grid = complement and stem_bits is not None and source_bits is not None and source_bits <= stem_bits

    @property
    def clipped(self) -> int:
        return self.target_q.clipped + self.residual_q.clipped

    def __call__(
        self, exact: Float64Array, target: NDArray[np.float32], service_residual: NDArray[np.float32] | None
    ) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
        counts, null_peak = (self.target_q.clipped, self.residual_q.clipped), self.tally.null_peak
        stored = self._values(exact, target, service_residual)
        bits = self.target_q.bits
        if not self.complement or bits is None or (self.target_q.clipped, self.residual_q.clipped) == counts:
            return stored
        # A loud block: near full scale, the kept part can swing against the rest (a mastered mix's kick at
        # +0.8 where the limited mix is at +0.95), so source − target is beyond what the residual's format
        # holds, and a clipped residual no longer adds up to the source. The target gives way there, just
        # enough: each sample into [source − (FS − lsb), source + FS] ∩ [−FS, FS − lsb], which is never
        # empty for a source within full scale. The clip counts of the first pass stay: "clipped" says the
        # target was limited; the null is measured again.
        first = (self.target_q.clipped, self.residual_q.clipped)
        self.tally.null_peak = null_peak
        largest = 1.0 - 2.0 ** (1 - bits)
        lowest = np.maximum(exact - largest, -1.0)
        highest = np.minimum(exact + 1.0, largest)
        stored = self._values(exact, np.clip(target.astype(np.float64), lowest, highest), None)
        self.target_q.clipped, self.residual_q.clipped = first
        return stored

    def _values(
        self, exact: Float64Array, target: NDArray[np.floating], service_residual: NDArray[np.float32] | None
    ) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
        stored_t, values_t = self.target_q(target)  # float32 in, exact (see Quantizer)
        if self.on_grid:
            stored_r, peak = self.residual_q.on_grid(exact - values_t)  # exact: both are whole steps
            self.tally.null_peak = max(self.tally.null_peak, peak)
            return stored_t, stored_r
        if self.complement:
            residual = exact - values_t  # float64: a difference of two 24-bit values needs 25 bits
            stored_r, values_r = self.residual_q(residual)
            error = residual - values_r  # == exact - (values_t + values_r): every step here is exact
        else:
            stored_r, values_r = self.residual_q(np.asarray(service_residual, dtype=np.float32))
            error = exact - values_t
            error -= values_r
        if error.size:
            np.abs(error, out=error)
            peak = float(error.max())
            # a NaN would lose every comparison and leave the test looking fine: it is the worst result
            self.tally.null_peak = max(self.tally.null_peak, peak if math.isfinite(peak) else math.inf)
        return stored_t, stored_r


@dataclass
class _Tally:
    quality: QualityReport | None = None
    null_peak: float = 0.0
    clipped: int = 0
    last_progress: float = -1.0


def conform(
    spec: ConformSpec,
    service_target: Path,
    service_residual: Path,
    out_target: Path,
    out_residual: Path,
    progress: Callable[[float], None] | None = None,
) -> ConformReport:
    """Write the target and residual stems at exactly `out_target`/`out_residual`; see the module doc."""
    source = spec.source
    if spec.frames <= 0 or spec.start_frame < 0 or spec.start_frame + spec.frames > source.frames:
        raise ValueError(f"segment {spec.start_frame}+{spec.frames} is outside the source")
    if Path(out_target) == Path(out_residual):
        raise ValueError("target and residual must be different files")
    plan = plan_output(source, spec.frames, spec.out_format, spec.out_subtype, spec.rf64_threshold)
    segment = Segment(source, spec.start_frame, spec.frames, service_target, service_residual)
    reader = SegmentReader(segment)
    try:
        start = reader.measure_start()
        offset = usable_offset(start)
        stems = StemFiles((out_target, out_residual), plan, source)
    except (OSError, RuntimeError) as exc:
        reader.close()
        raise output_error(exc, out_target) from exc
    except BaseException:
        reader.close()
        raise
    correction: DriftCorrection | None = None
    try:
        probe = DriftProbe(spec.frames, source.samplerate)
        tally = _stream(spec, plan, reader, offset, stems, probe, progress)
        end = probe.estimate()
        scale = drift_rate_scale(start, end) if end is not None and offset == start.lag else None
        if scale is not None and end is not None:
            fit = refine_scale(segment, scale)
            if fit.lines_up_better_than(end):
                log.info("%s: the result drifts %+d samples by the end; making the stems again from it read "
                         "%+.1f ppm faster", source.path.name, end.lag, (fit.scale - 1) * 1e6)
                stems.discard()
                stems = StemFiles((out_target, out_residual), plan, source)
                offset = usable_offset(fit.start)
                probe = DriftProbe(spec.frames, source.samplerate)
                at_end = None if progress is None else (lambda _fraction: progress(0.99))  # the bar stays put
                tally = _stream(spec, plan, SegmentReader(segment, fit.scale), offset, stems, probe, at_end)
                correction = DriftCorrection(fit.scale, end, start, probe.estimate())
            else:  # the stems already written are the better ones
                log.info("%s: the result drifts %+d samples by the end, and reading it at a corrected rate "
                         "would not line it up better: kept uncorrected", source.path.name, end.lag)
                correction = DriftCorrection(fit.scale, end, start, fit.end, applied=False)
        stems.close()
        _refuse_non_finite_stems(tally, source)
        copy_metadata(source, spec.start_frame, plan, (out_target, out_residual))
        for path in (out_target, out_residual):
            if sf.info(str(path)).frames != spec.frames:
                raise OSError(errno.EIO, "the stem came out short")
    except BridgeError:
        stems.discard()
        raise
    except (OSError, RuntimeError, AssertionError) as exc:  # libsndfile write failures are RuntimeErrors
        error = output_error(exc, out_target)  # before discarding: a full disk is only full until then
        stems.discard()
        raise error from exc
    except BaseException:
        stems.discard()
        raise
    if progress is not None:
        progress(1.0)
    return _report(spec, plan, start, offset, end, tally, correction)


def _refuse_non_finite_stems(tally: _Tally, source: SourceInfo) -> None:
    """Stems holding a NaN or infinite sample (the null test is then +inf) are no result: never written as
    one. The source's samples were checked, so only an overflow of our own arithmetic gets here; the same
    audio would fail again, so nothing suggests running it again."""
    if math.isfinite(tally.null_peak):
        return
    raise BridgeError(
        f"The stems of “{source.path.name}” came out damaged (samples that are not numbers), so none were "
        "written.",
        "Check the source in your editor for extreme values (a float file far above full scale); if it "
        "looks and plays normally, report this with the file.",
    )


def _stream(
    spec: ConformSpec,
    plan: OutputPlan,
    reader: SegmentReader,
    offset: int,
    stems: StemFiles,
    probe: DriftProbe,
    progress: Callable[[float], None] | None,
) -> _Tally:
    """Make the stems from `reader`, restarted at the segment's start with the result `offset` samples late
    (the opening it decoded to measure that is replayed); closes it."""
    source = spec.source
    rate_scale = reader.rate_scale
    tally = _Tally()
    complement = spec.residual_method == "complement"
    emit = _StemValues(plan.subtype, complement, tally, source.subtype)
    projector = (
        MaskProjector(
            source.channels, source.samplerate, service_residual=not complement, mid_from_source=rate_scale != 1.0
        )
        if source.channels > 1
        else None
    )
    waiting: list[Float64Array] = []  # exact source blocks not yet matched by projector output
    meter = QualityMeter(source.samplerate)

    def submit_projected(out_t: NDArray[np.float32], out_r: NDArray[np.float32] | None) -> None:
        """The projector's output, written against the waiting source blocks it matches, block by block:
        its pieces straddle them (by its latency), and joining the blocks copied every exact sample again."""
        done = 0
        while done < len(out_t):
            head = waiting[0]
            take = min(len(head), len(out_t) - done)
            part_r = None if out_r is None else out_r[done : done + take]
            writer.submit(emit(head[:take], out_t[done : done + take], part_r))
            if take == len(head):
                waiting.pop(0)
            else:
                waiting[0] = head[take:]
            done += take

    try:
        reader.restart(offset)
        with (
            ReadAhead(_blocks(spec, reader, meter, probe), name="conform-read") as blocks,
            WriteBehind(stems.write_pair, name="conform-write") as writer,
        ):
            for position, exact, target, residual in blocks:
                count = len(exact)
                if projector is None:
                    writer.submit(emit(exact, target[:, None], residual[:, None]))
                else:
                    waiting.append(exact)
                    submit_projected(*projector.process(target, residual, exact))
                _report_progress(progress, tally, (position + count) / spec.frames)
            if projector is not None:
                submit_projected(*projector.flush())
            tail_t, tail_r = reader.service(probe.max_lag)
            probe.feed_service(spec.frames, tail_t + tail_r)
    finally:
        reader.close()
    tally.clipped = emit.clipped
    tally.quality = meter.report()
    return tally


def _blocks(
    spec: ConformSpec, reader: SegmentReader, meter: QualityMeter, probe: DriftProbe
) -> Iterator[tuple[int, Float64Array, NDArray[np.float32], NDArray[np.float32]]]:
    """(position, exact source block, aligned service target, residual) for the whole segment, measured
    on the way (quality, end window): in the read-ahead thread, so that on two cores this work runs
    beside the projection instead of after it. Both are read only once the thread has ended."""
    for position in range(0, spec.frames, BLOCK):
        count = min(BLOCK, spec.frames - position)
        exact = reader.source(count)
        target, residual = reader.service(count)
        mono = mono_mix(exact)
        meter.feed(mono, target, residual)
        if probe.wants(position, count):
            probe.feed_source(position, mono)
            probe.feed_service(position, target + residual)
        yield position, exact, target, residual


def _report_progress(progress: Callable[[float], None] | None, tally: _Tally, fraction: float) -> None:
    if progress is not None and fraction - tally.last_progress >= 0.01:
        tally.last_progress = fraction
        progress(min(fraction, 0.99))



def _report(
    spec: ConformSpec,
    plan: OutputPlan,
    start: LagEstimate,
    offset: int,
    end: LagEstimate | None,
    tally: _Tally,
    correction: DriftCorrection | None = None,
) -> ConformReport:
    flags: list[str] = []
    correlation = start.correlation
    drift = 0
    method = (
        f"gcc-phat lag + normalised xcorr of service target+residual vs source mono mix, "
        f"±{SEARCH_SECONDS:g} s search, windows of up to {WINDOW_SECONDS:g} s at start and end"
    )
    if not start.has_signal:
        flags.append("silent-source")
    elif start.correlation < WEAK_CORRELATION:
        flags.append("weak-correlation")
        if offset == 0 and start.lag != 0:
            method += "; offset kept at 0 (the result does not resemble the source)"
    if end is not None and start.has_signal:
        usable_end = end.has_signal and end.correlation >= WEAK_CORRELATION
        if end.has_signal:
            correlation = min(correlation, end.correlation)
            if end.correlation < WEAK_CORRELATION and "weak-correlation" not in flags:
                flags.append("weak-correlation")
        if usable_end:
            drift = end.lag
            applied = correction is not None and correction.applied
            left = correction.left if correction is not None and applied else end
            if correction is not None and applied:
                flags.append("drift-corrected")
                left_text = f"{left.lag:+d}" if left is not None and left.has_signal else "unmeasured"
                method += (f"; a drift of {drift:+d} samples was corrected by reading the result "
                           f"{(correction.scale - 1) * 1e6:+.1f} ppm faster (left at the end: {left_text})")
            elif correction is not None:
                tried = correction.left
                tried_text = f"{tried.lag:+d}" if tried is not None and tried.has_signal else "unmeasured"
                method += (f"; a drift of {drift:+d} samples was found, but reading the result "
                           f"{(correction.scale - 1) * 1e6:+.1f} ppm faster would have left {tried_text} at the "
                           "end: not corrected")
            elif abs(drift) > 1 and not windows_apart(start, end):
                method += (f"; a drift of {drift:+d} samples was found, but the start and end windows are too "
                           "close together to measure a clock rate: not corrected")
            if left is None or not left.has_signal or abs(left.lag) > 1:  # not shown to line up: say so
                flags.append("drift")
        else:
            flags.append("drift-unmeasured")
    if tally.clipped:
        flags.append("clipped")
    if loses_position(spec.source, plan):
        flags.append("position-not-kept")
    if tally.quality is not None and start.has_signal:
        flags.extend(tally.quality.flags)
    null_dbfs = 20.0 * math.log10(tally.null_peak) if tally.null_peak > 0 else -math.inf
    log.info(
        "conformed %s: offset %+d, drift %+d, correlation %.3f, null %.1f dBFS, flags %s",
        spec.source.path.name,
        offset,
        drift,
        correlation,
        null_dbfs,
        flags or "-",
    )
    return ConformReport(
        offset_samples=offset,
        drift_samples=drift,
        correlation=round(correlation, 4),
        null_test_dbfs=null_dbfs,
        method=method,
        projection=describe(
            spec.source.channels, mid_from_source=correction is not None and correction.applied
        ),
        out_format=plan.format,
        out_subtype=plan.subtype,
        format_reason=plan.reason,
        frames=spec.frames,
        samplerate=spec.source.samplerate,
        channels=spec.source.channels,
        flags=tuple(flags),
        quality=tally.quality,
    )
