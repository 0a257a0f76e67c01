"""How stems are written: their container and sample format, exact quantisation, exclusive creation with
removal on failure, BWF/speaker metadata, and the words for a failed write."""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from bridge.audio import bwf, pcm_wav
from bridge.audio.source import INTEGER_BITS, LOSSY_FORMATS, SourceInfo
from bridge.common.errors import OutputError
from bridge.common.stems import DiskFull

log = logging.getLogger(__name__)

Float64Array = NDArray[np.float64]

WRITABLE_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC", "CAF"})
BWF_FORMATS = frozenset({"WAV", "WAVEX", "RF64"})
METADATA_FORMATS = BWF_FORMATS | {"W64"}  # the containers whose bext/iXML we read and write
_FOUR_GIB_FORMATS = frozenset({"WAV", "WAVEX", "AIFF"})
# bytes per sample, for the 4 GiB check (ALAC: its uncompressed worst case)
_BYTES = {**{name: -(-bits // 8) for name, bits in INTEGER_BITS.items()}, "FLOAT": 4, "DOUBLE": 8}
_FALLBACK_SUBTYPES = ("PCM_24", "PCM_16", "FLOAT")
RF64_THRESHOLD = 4 * 2**30 - 2**20  # bytes; WAV stems bigger than this are written as RF64


@dataclass(frozen=True)
class OutputPlan:
    format: str
    subtype: str
    reason: str | None


def plan_output(
    source: SourceInfo,
    frames: int,
    out_format: str | None = None,
    out_subtype: str | None = None,
    rf64_threshold: int = RF64_THRESHOLD,
) -> OutputPlan:
    """Container and sample format of `frames`-long stems of `source` (None: as the source, lossy →
    WAV FLOAT), and in words why they differ from the source's."""
    fmt = (out_format or source.format).upper()
    subtype = (out_subtype or source.subtype).upper()
    reasons: list[str] = []
    # a lossy source's decode is not its samples: we choose the stems' format, and say so from the final one
    chosen_subtype = source.lossy and out_subtype is None
    chosen_format = source.lossy and out_format is None and source.format in LOSSY_FORMATS
    if chosen_subtype:
        subtype = "FLOAT"
    if chosen_format:
        fmt = "WAV"
    if fmt not in WRITABLE_FORMATS:
        reasons.append(f"{fmt} cannot hold lossless stems, so they are WAV")
        fmt = "WAV"
    if subtype not in _BYTES:
        reasons.append(f"{subtype} samples cannot be written exactly, so the stems are 32-bit float")
        subtype = "FLOAT"
    if fmt == "FLAC" and source.channels > 8:
        reasons.append("FLAC holds at most 8 channels, so the stems are WAV")
        fmt = "WAV"
    if not sf.check_format(fmt, subtype):
        usable = next(s for s in _FALLBACK_SUBTYPES if sf.check_format(fmt, s))
        if not chosen_subtype:  # our own choice for a lossy source: said in its reason below
            reasons.append(f"{fmt} cannot store {subtype} samples, so the stems are {usable}")
        subtype = usable
    metadata = len(source.bext or b"") + len(source.ixml or b"")
    size = frames * source.channels * _BYTES[subtype] + metadata + 2**16
    if fmt in _FOUR_GIB_FORMATS and size > rf64_threshold:
        reasons.append(f"each stem is {size / 2**30:.2f} GiB, past the 4 GiB limit of {fmt}: written as RF64")
        fmt = "RF64"
    if chosen_subtype or chosen_format:
        reasons.insert(0, _lossy_reason(source, fmt, subtype))
    return OutputPlan(fmt, subtype, "; ".join(reasons) or None)


def _lossy_reason(source: SourceInfo, fmt: str, subtype: str) -> str:
    """Why a lossy source's stems are what they are, in words true of the format finally chosen: their null
    against the decoded source is measured (null_test_dbfs), never exact, and only float stems cannot clip."""
    bits = INTEGER_BITS.get(subtype)
    if bits is None:
        kind = "64-bit float" if subtype == "DOUBLE" else "32-bit float"
    else:
        kind = f"{bits}-bit" if subtype.startswith("PCM_") else subtype  # ALAC_20...
    text = f"the source is lossy ({source.format} {source.subtype}): the stems are {kind} {fmt}"
    if bits is not None and fmt == "FLAC":
        text += " (FLAC holds no float samples)"
    precision = "float" if bits is None else f"{bits}-bit"
    clips = ", so nothing clips," if bits is None else ""
    return (f"{text}{clips} and they null against the decoded source to {precision} precision, not exactly "
            "(see null_test_dbfs)")


class Quantizer:
    """Turns float values into what the writer gets, and says exactly what will be stored.

    float32 input stays float32 up to 24 bits (the service's target is float32): scaling by a power of two
    and rounding to an integer below 2**24 are exact in float32, so the result equals float64's at half
    the memory traffic; 32-bit PCM is quantised in float64 (2**31 - 1 has no float32)."""

    def __init__(self, subtype: str) -> None:
        self.bits = INTEGER_BITS.get(subtype)
        self.float32 = subtype == "FLOAT"
        self.clipped = 0

    def __call__(self, values: NDArray[np.floating]) -> tuple[NDArray[np.generic], NDArray[np.floating]]:
        if self.bits is not None:
            if self.bits > 24 or values.dtype != np.float32:
                values = values.astype(np.float64, copy=False)
            scale = 2.0 ** (self.bits - 1)
            steps: NDArray[np.floating] = values * values.dtype.type(scale)
            np.rint(steps, out=steps)
            if steps.size and (steps.max() > scale - 1 or steps.min() < -scale):
                self.clipped += int(np.count_nonzero((steps > scale - 1) | (steps < -scale)))
                np.clip(steps, -scale, scale - 1, out=steps)
            # left-justified int32: libsndfile shifts it down to the file's bit depth without rounding
            stored = steps.astype(np.int32)
            stored <<= 32 - self.bits
            steps *= values.dtype.type(1.0 / scale)  # a power of two: exact
            return stored, steps
        if self.float32:
            as_float32 = values.astype(np.float32, copy=False)
            return as_float32, as_float32
        return values, values

    def on_grid(self, values: Float64Array) -> tuple[NDArray[np.generic], float]:
        """What `__call__` stores for `values` that are whole steps of this integer format already (the
        complement of a PCM source no finer than the stems), and the peak of values − stored values:
        the same numbers in fewer passes, as rounding a whole step changes nothing and only clipping
        moves a value. `values` is consumed (scaled in place)."""
        assert self.bits is not None
        scale = 2.0 ** (self.bits - 1)
        steps = np.multiply(values, scale, out=values)  # exact: a power of two
        peak = 0.0
        high, low = (float(steps.max()), float(steps.min())) if steps.size else (0.0, 0.0)
        if math.isnan(high) or math.isnan(low):  # a NaN is the worst null test, never a fine one
            peak = math.inf
        elif high > scale - 1 or low < -scale:
            clipped = (steps > scale - 1) | (steps < -scale)
            self.clipped += int(np.count_nonzero(clipped))
            beyond = steps[clipped]
            peak = float(np.max(np.abs(beyond - np.clip(beyond, -scale, scale - 1)))) / scale
            np.clip(steps, -scale, scale - 1, out=steps)
        stored = steps.astype(np.int32)
        stored <<= 32 - self.bits
        return stored, peak


class StemFiles:
    """The two stem files: created exclusively (never overwriting), removed again on any failure."""

    def __init__(self, paths: tuple[Path, Path], plan: OutputPlan, source: SourceInfo) -> None:
        self.created: list[Path] = []
        self.files: list[sf.SoundFile | pcm_wav.PcmWavWriter] = []
        try:
            for path in paths:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                self.created.append(path)
                try:
                    stem: sf.SoundFile | pcm_wav.PcmWavWriter
                    if pcm_wav.handles(plan.format, plan.subtype):  # the same bytes, cheaper (see pcm_wav)
                        stem = pcm_wav.PcmWavWriter(fd, source.samplerate, source.channels, plan.subtype)
                    else:
                        stem = sf.SoundFile(fd, "w", source.samplerate, source.channels, plan.subtype,
                                            format=plan.format)
                except BaseException:
                    os.close(fd)
                    raise
                self.files.append(stem)
        except BaseException:
            self.discard()
            raise

    def write_pair(self, pair: tuple[NDArray[np.generic], NDArray[np.generic]]) -> None:
        self.files[0].write(pair[0])
        self.files[1].write(pair[1])

    def close(self) -> None:
        for f in self.files:
            f.close()

    def discard(self) -> None:
        for f in self.files:
            try:
                f.close()
            except Exception:  # already failing: removing the half-written files matters more
                log.debug("closing a failed stem", exc_info=True)
        for path in self.created:
            path.unlink(missing_ok=True)



def copy_metadata(source: SourceInfo, start_frame: int, plan: OutputPlan, paths: tuple[Path, Path]) -> None:
    """Speaker layout and bext/iXML from a RIFF-family or Wave64 source into such stems starting at
    `start_frame` of it (their time reference moves by as much)."""
    if plan.format not in METADATA_FORMATS or source.format not in METADATA_FORMATS:
        return
    mask = bwf.read_channel_mask(source.path)
    bext = bwf.stem_bext(source.bext, start_frame) if source.bext else None
    ixml = source.ixml
    if ixml is not None:  # its time reference moves with the bext's, or on its own when there is no bext
        ixml_ref = bwf.ixml_time_reference(ixml)
        if bext is not None:
            ixml = bwf.stem_ixml(ixml, bwf.time_reference(bext))
        elif ixml_ref is not None:
            ixml = bwf.stem_ixml(ixml, ixml_ref + start_frame)
    for path in paths:
        if mask is not None:
            bwf.write_channel_mask(path, mask)
        if bext is not None or ixml is not None:
            bwf.append_chunks(path, bext, ixml)



def loses_position(source: SourceInfo, plan: OutputPlan) -> bool:
    """Whether the source's time reference (bext, or iXML's copy) has nowhere to go in the stems' format
    (FLAC, AIFF, CAF): the stems then no longer say where on the timeline they start."""
    if plan.format in METADATA_FORMATS:
        return False
    return source.bext is not None or (source.ixml is not None and bwf.ixml_time_reference(source.ixml) is not None)


def output_error(exc: BaseException, out_path: Path) -> OutputError:
    """The words for a failed write of `out_path`, naming the file that actually failed when `exc` says
    which (it may be another file of the job, e.g. an intermediate in the work folder)."""
    failed = _failed_path(exc) or out_path
    folder = failed.parent
    disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if not disk_full and not isinstance(exc, OSError):
        try:
            # libsndfile reports only "System error": look at the disk itself
            disk_full = shutil.disk_usage(folder).free < 4 * 2**20 or "space" in str(exc).lower()
        except OSError:
            disk_full = False
    if disk_full:
        return DiskFull(  # how to run it again (and at what cost) is the way in's to say
            f"The disk holding “{folder}” is full; the stems could not be written.",
            "Free some space there (or choose another output folder).",
        )
    if isinstance(exc, FileExistsError):
        return OutputError(
            f"“{failed.name}” already exists in “{folder}”; sam-bridge never overwrites files.",
            "Move or rename the existing file, then run the job again.",
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return OutputError(
        f"The stems could not be written to “{folder}”: {reason}.",
        "Check that the folder exists and that you may write to it, then run the job again.",
    )


def _failed_path(exc: BaseException) -> Path | None:
    filename = exc.filename if isinstance(exc, OSError) else None  # an int when the OS call took an fd
    return Path(filename) if isinstance(filename, (str, os.PathLike)) else None
