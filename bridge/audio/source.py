"""The source side: probe a user's audio file, pick the part to separate, and make the file to upload.

A source is only ever read. The service mixes its input to mono and works at 48 kHz, and conform takes the
stereo image, rate and length from the local source, so what is uploaded is the part's mono mix at 48 kHz as
FLAC (24-bit, or 16 for slow links), written block-wise into a work folder; a float source louder than
full scale goes as mono 48 kHz float WAV instead (FLAC would clip it). A whole file the service reads is
sent untouched when that costs nothing (over loopback) or is smaller (a lossy file).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

from bridge.audio import bwf
from bridge.audio.mpeg_length import exact_frames
from bridge.common.errors import SourceError
from bridge.common.file_gate import ends_early

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8_000, 384_000
READ_BLOCK = 1 << 16
SERVICE_RATE = 48_000  # the service mixes to mono and works at this rate

# Containers we conform to; anything else libsndfile opens (VOC, MAT5...) is refused up front.
SUPPORTED_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC", "CAF", "MP3", "OGG"})
LOSSY_FORMATS = frozenset({"MP3", "OGG"})
_LOSSY_CODECS = "VORBIS OPUS MPEG_LAYER_I MPEG_LAYER_II MPEG_LAYER_III GSM610 G721_32 G723_24 G723_40"
_LOSSY_PCM_LIKE = "IMA_ADPCM MS_ADPCM VOX_ADPCM NMS_ADPCM_16 NMS_ADPCM_24 NMS_ADPCM_32 ULAW ALAW"
LOSSY_SUBTYPES = frozenset(f"{_LOSSY_CODECS} {_LOSSY_PCM_LIKE}".split())
PCM_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
# Integer sample formats, lossless codecs included: read as int32 they are exact.
INTEGER_BITS = {**PCM_BITS, "ALAC_16": 16, "ALAC_20": 20, "ALAC_24": 24, "ALAC_32": 32}
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
# The largest float sample taken: +80 dBFS, far above any real mix (a float bus rarely passes +24 dBFS)
# and far below what overflows float32 power sums (~1e19 per sample), so a damaged sample is refused.
MAX_SAMPLE = 1e4
_UPLOAD_AS_IS = {"WAV": "audio/wav", "WAVEX": "audio/wav", "FLAC": "audio/flac", "MP3": "audio/mpeg"}
_WAV_SUBTYPES_SERVICE_READS = frozenset({"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"})
# Upload copies end in ".upload.<ext>", a name nothing else in a work folder takes: a stem set's later steps
# upload a copy of the 64-bit intermediate "step<k>.residual.wav", which must survive that copy intact.
_UPLOAD_COPY_NAME = re.compile(r".+\.upload\.(wav|flac)(\.partial)?")


@dataclass(frozen=True)
class SourceInfo:
    path: Path
    format: str  # libsndfile container name: WAV, WAVEX, RF64, W64, AIFF, FLAC, CAF, MP3, OGG
    subtype: str  # libsndfile sample format: PCM_16, PCM_24, FLOAT, VORBIS...
    samplerate: int
    channels: int
    frames: int
    bext: bytes | None  # raw chunk payloads from WAV/RF64/W64 sources
    ixml: bytes | None
    lossy: bool  # MP3/OGG/OPUS, ADPCM, u-law...: decoded values are not the original samples

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate


def probe_source(path: Path) -> SourceInfo:
    """Describe a source file, or raise SourceError saying in plain words why it cannot be used."""
    name = f"“{path.name}”"
    if not path.exists():
        raise SourceError(f"{name} was not found.", "Check the file name and folder, then try again.")
    if path.is_dir():
        raise SourceError(f"{name} is a folder, not an audio file.", "Choose an audio file inside it.")
    if not path.is_file():  # a FIFO: opening it would wait for a writer, for ever
        raise SourceError(f"{name} is not an ordinary file (a pipe, socket or device), so it cannot be read "
                          "as audio.", "Save the audio to a file (WAV, AIFF, FLAC or MP3) and give that file.")
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            raise SourceError(f"{name} is empty (0 bytes): no audio was written to it.",
                              "If your DAW or editor is still exporting it, wait for the export to finish; "
                              "else export the audio again.")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise SourceError(
            f"{name} is not an audio file we can read.",
            "Export it as WAV, AIFF, FLAC or MP3 and try again.",
        ) from exc
    fmt, subtype = str(info.format), str(info.subtype)
    if fmt not in SUPPORTED_FORMATS:
        raise SourceError(
            f"{name} is a {info.format_info} file, which sam-bridge does not handle.",
            "Export it as WAV, AIFF, FLAC or MP3 and try again.",
        )
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise SourceError(
            f"{name} has a sample rate of {info.samplerate} Hz; sam-bridge works with 8 kHz to 384 kHz.",
            "Convert it to a common rate such as 44.1 or 48 kHz and try again.",
        )
    _check_not_truncated(path, name)
    if info.frames <= 0:
        raise SourceError(f"{name} contains no audio.", "Check the export and try again.")
    if info.frames >= 2**62:  # 2**63 - 1: a FLAC written as a stream, its length never filled in
        raise SourceError(f"{name} does not say how long it is (it was written as a stream).",
                          "Export it again, or convert it to WAV, and try again.")
    if fmt == "FLAC" and ends_early(path):
        raise SourceError(
            f"{name} looks incomplete: it ends before the {info.frames / info.samplerate:.1f} s its header "
            "announces. It may still be copying, or an export was interrupted.",
            "Wait until the copy has finished, or export the file again.",
        )
    frames = int(info.frames)
    if fmt == "MP3":  # libsndfile's "MP3" is any MPEG layer; without a length header its figure is a guess
        frames = exact_frames(path, frames)
        if frames <= 0:
            raise SourceError(f"{name} contains no audio.", "Check the export and try again.")
    chunks = bwf.read_chunks(path) if fmt in ("WAV", "WAVEX", "RF64", "W64") else bwf.BwfChunks(None, None)
    return SourceInfo(
        path=path,
        format=fmt,
        subtype=subtype,
        samplerate=int(info.samplerate),
        channels=int(info.channels),
        frames=frames,
        bext=chunks.bext,
        ixml=chunks.ixml,
        lossy=fmt in LOSSY_FORMATS or subtype in LOSSY_SUBTYPES,
    )



def _check_not_truncated(path: Path, name: str) -> None:
    """Refuse a WAV/RF64/W64/AIFF whose header promises more bytes than the file holds."""
    layout = bwf.inspect_container(path)
    if not layout.kind:
        return
    # 0 and 0xFFFFFFFF are "size unknown" placeholders of streaming writers, which libsndfile reads fine.
    placeholders = (0, 0xFFFFFFFF) if layout.kind == "RIFF" else ()
    promised = 0 if layout.declared_size - 8 in placeholders else layout.declared_size
    audio = layout.chunk("SSND" if layout.kind == "AIFF" else "data")
    if audio is not None and audio.size not in placeholders:
        promised = max(promised, audio.data_offset + audio.size)
    # One byte of slack: the final pad byte of an odd-sized chunk is often missing.
    if promised > layout.file_size + 1:
        have, want = layout.file_size / 2**20, promised / 2**20
        raise SourceError(
            f"{name} looks incomplete: its header promises {want:.1f} MB of audio but the file holds only "
            f"{have:.1f} MB. It may still be copying or recording, or an export was interrupted.",
            "Wait until the copy or recording has finished, or export the file again.",
        )


def frame_range(info: SourceInfo, start: float | None, length: float | None) -> tuple[int, int]:
    """Seconds → (start_frame, frames), rounded to the nearest sample and clamped to the file's end."""
    if (start is not None and not np.isfinite(start)) or (length is not None and not np.isfinite(length)):
        raise SourceError("The start or length given is not a number.", "Give them in seconds, e.g. 12.5.")
    start_frame = round((start or 0.0) * info.samplerate)
    if start_frame < 0:
        raise SourceError("The start time is before the beginning of the file.", "Give a start of 0 or more.")
    if start_frame >= info.frames:
        raise SourceError(
            f"The start time {start_frame / info.samplerate:.2f} s is past the end of “{info.path.name}” "
            f"({info.seconds:.2f} s long).",
            "Choose a start time inside the file.",
        )
    end_frame = info.frames
    if length is not None:
        end_frame = min(info.frames, start_frame + round(length * info.samplerate))
    if end_frame <= start_frame:
        raise SourceError("The part of the file you asked for is empty.", "Give a length above zero.")
    return start_frame, end_frame - start_frame


_C_TYPES = {"float32": "float", "float64": "double", "int32": "int"}


def read_block(f: sf.SoundFile, count: int, dtype: Literal["float32", "float64", "int32"]) -> NDArray[Any]:
    """Read up to `count` frames (2-D) sequentially, straight through libsndfile.

    soundfile re-seeks to its own position after every read; for MP3 (libsndfile 1.2 + mpg123) that
    seek restarts the decoder and corrupts ~1000 samples after every block boundary. Calling
    libsndfile's sf_readf_* directly keeps the decoder running, so block reads equal one whole read.
    """
    out = np.empty((count, f.channels), dtype=dtype)
    c_type = _C_TYPES[dtype]
    lib, ffi = getattr(sf, "_snd", None), getattr(sf, "_ffi", None)
    handle = getattr(f, "_file", None)
    if lib is None or ffi is None or handle is None:  # a future soundfile: fall back to its public read
        return np.asarray(f.read(count, dtype=dtype, always_2d=True))
    got = int(getattr(lib, f"sf_readf_{c_type}")(handle, ffi.cast(f"{c_type} *", out.ctypes.data), count))
    code = int(lib.sf_error(handle))
    if code:
        raise sf.LibsndfileError(code, prefix=f"Error reading {f.name!r}: ")
    return out[:got]


# the chunks that hold a chunked file's audio: its format and its samples (not bext, iXML, LIST, cue…)
_AUDIO_CHUNKS = {"RIFF": ("fmt ", "data"), "RF64": ("fmt ", "data"), "W64": ("fmt ", "data"),
                 "AIFF": ("COMM", "SSND")}


def source_sha256(path: Path, stop: threading.Event | None = None) -> str:
    """The sha256 of the source's audio, which dedupe and the changed-source checks go by: of a WAV, RF64,
    W64 or AIFF file its format and audio-data chunks and its timeline position only, so a re-export that
    changes nothing but metadata (a BWF date, a LIST tag, a description) is the same audio and is not paid
    for again; of other formats (FLAC, MP3…) the whole file. "" when `stop` was set before the end (the job
    it was for has ended)."""
    layout = bwf.inspect_container(path)
    chunks = [layout.chunk(name) for name in _AUDIO_CHUNKS.get(layout.kind, ())]
    if not chunks or None in chunks:
        return file_sha256(path, stop)
    digest = hashlib.sha256(f"sam-bridge audio of a {layout.kind} file\n".encode())
    # where the audio sits on a timeline is part of it: reused stems carry the earlier file's bext and iXML,
    # so a take moved on the timeline is other audio to dedupe (a new date or description is not)
    if layout.kind != "AIFF":
        placed = bwf.read_chunks(path)
        digest.update(f"at {bwf.time_reference(placed.bext) if placed.bext else None} "
                      f"{bwf.ixml_time_reference(placed.ixml) if placed.ixml else None}\n".encode())
    with open(path, "rb") as f:
        for chunk in chunks:
            assert chunk is not None
            f.seek(chunk.data_offset)
            left = max(0, min(chunk.size, layout.file_size - chunk.data_offset))  # a piped WAV's size: to the end
            digest.update(f"{chunk.id}:{left}\n".encode())
            while left and (block := f.read(min(left, 1 << 20))):
                if stop is not None and stop.is_set():
                    return ""
                digest.update(block)
                left -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path, stop: threading.Event | None = None) -> str:
    """The whole file's sha256 (what source_sha256 was up to 0.2.0: a job journalled then still matches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            if stop is not None and stop.is_set():
                return ""
            digest.update(block)
    return digest.hexdigest()


def same_audio(path: Path, recorded: str) -> bool:
    """Whether `path` still holds the audio a job recorded `recorded` for (either hash: see file_sha256)."""
    return recorded in (source_sha256(path), file_sha256(path))


def upload_plan(info: SourceInfo, start_frame: int, frames: int, shrink: bool = False, bits: int = 24,
                above_full_scale: bool = False) -> tuple[str | None, str, str]:
    """(format, subtype, content_type) of the upload; format None means "send the user's file".

    A written upload is always the part's MONO mix (the exact mean of the channels) at 48 kHz: the service
    mixes to mono and works at 48 kHz, and conform takes the stereo image and the rate from the local
    source, so nothing more would reach the stems. `shrink` (a service across a network): even a whole file
    is sent as that mono FLAC, unless it is lossy (an MP3 is smaller than any lossless copy) or that mono
    FLAC already. Without `shrink` (loopback, bytes cost nothing) a whole file the service reads goes as is.
    `bits`: 24, or 16 for slow links (the service hears a −96 dB noise floor instead of −144 dB).
    `above_full_scale`: a float source whose mix exceeds ±1.0, which FLAC would clip: sent as float WAV.
    """
    # a part shorter than one 48 kHz sample (1 frame at 192 kHz) resamples to nothing at the service, whose
    # empty result would fail every time: the written copy holds at least one sample
    whole = start_frame == 0 and frames == info.frames and frames * SERVICE_RATE >= info.samplerate
    content_type = _UPLOAD_AS_IS.get(info.format)
    wav_ok = info.format not in ("WAV", "WAVEX") or info.subtype in _WAV_SUBTYPES_SERVICE_READS
    source_bits = INTEGER_BITS.get(info.subtype)
    if whole and content_type is not None and wav_ok:
        floor_already = (info.format == "FLAC" and info.channels == 1 and info.samplerate == SERVICE_RATE
                         and source_bits is not None and source_bits <= bits)
        if not shrink or info.lossy or floor_already:
            return None, "", content_type
    if above_full_scale:
        return "WAV", "FLOAT", "audio/wav"
    # a 16-bit mono 48 kHz source is its own mix: 16 bits hold it exactly (a mean or resampling needs 24)
    as_is_rate = info.channels == 1 and info.samplerate == SERVICE_RATE and not info.lossy
    narrow = bits <= 16 or (as_is_rate and source_bits is not None and source_bits <= 16)
    return "FLAC", "PCM_16" if narrow else "PCM_24", "audio/flac"


def is_upload_copy(name: str) -> bool:
    """Whether `name` is that of an upload copy `make_upload_file` writes (or its partial file)."""
    return _UPLOAD_COPY_NAME.fullmatch(name) is not None


def refuse_non_finite(block: NDArray[np.float64], first_frame: int, source: SourceInfo) -> None:
    """A float source can hold NaN or ±inf, which would spread through the STFT into both stems, or a huge
    but finite value (1e20: a damaged or mis-scaled sample) whose power overflows the float32 statistics of
    the projection into NaN stems: both refused."""
    if not block.size:
        return
    high, low = float(block.max()), float(block.min())  # a NaN anywhere makes them NaN
    if low >= -MAX_SAMPLE and high <= MAX_SAMPLE:  # False for a NaN too
        return
    bad = ~(np.abs(block) <= MAX_SAMPLE).all(axis=1)  # NaN, ±inf and the absurd alike
    row = int(np.argmax(bad))
    values = block[row][~(np.abs(block[row]) <= MAX_SAMPLE)]
    what = ("not a number or infinite" if not np.isfinite(values).all()
            else f"a value of {float(values[np.argmax(np.abs(values))]):.3g}, far beyond any real audio: "
                 f"over {20 * np.log10(MAX_SAMPLE):+.0f} dBFS")
    frame = first_frame + row
    raise SourceError(
        f"“{source.path.name}” holds an invalid sample ({what}) at "
        f"{frame / source.samplerate:.3f} s (sample {frame}); it cannot be separated.",
        "Repair or re-export the file from your DAW or editor (a float file with a damaged sample), then run "
        "the job again.",
    )


def check_finite(info: SourceInfo, start_frame: int, frames: int) -> None:
    """A FLOAT/DOUBLE source's part read once and refused if it holds NaN, ±inf or an absurd value (see
    `refuse_non_finite`): before anything is paid for (integer samples are always within ±1)."""
    if info.subtype not in ("FLOAT", "DOUBLE"):
        return
    with sf.SoundFile(str(info.path)) as src:
        src.seek(start_frame)
        for position in range(start_frame, start_frame + frames, READ_BLOCK):
            block = read_block(src, min(READ_BLOCK, start_frame + frames - position), "float64")
            refuse_non_finite(block, position, info)


def upload_format(info: SourceInfo, start_frame: int, frames: int, shrink: bool = False,
                  bits: int = 24) -> tuple[str | None, str, str]:
    """`upload_plan` of this part, a float source's peak read to know whether FLAC would clip it."""
    above = info.subtype in FLOAT_SUBTYPES and _mono_peak(info, start_frame, frames) > 1.0
    return upload_plan(info, start_frame, frames, shrink, bits, above)


def upload_copy_name(info: SourceInfo, fmt: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", info.path.stem).strip(" .")[:60] or "source"
    return f"{stem}.upload.{'flac' if fmt == 'FLAC' else 'wav'}"


def make_upload_file(info: SourceInfo, start_frame: int, frames: int, workdir: Path,
                     shrink: bool = False, bits: int = 24,
                     plan: tuple[str | None, str, str] | None = None) -> tuple[Path, str]:
    """Return (file to upload, content type); writes the part's mono 48 kHz mix into `workdir` only when
    needed (see `upload_plan`; `plan`: its `upload_format`, when the caller has it already)."""
    fmt, subtype, content_type = plan or upload_format(info, start_frame, frames, shrink, bits)
    if fmt is None:
        return info.path, content_type
    workdir.mkdir(parents=True, exist_ok=True)
    final = workdir / upload_copy_name(info, fmt)
    partial = workdir / f".{final.name}.partial"
    try:
        with sf.SoundFile(str(partial), "w", SERVICE_RATE, 1, subtype, format=fmt) as dst:
            written = 0
            for block in service_mix(info, start_frame, frames, PCM_BITS.get(subtype)):
                dst.write(block)
                written += len(block)
            if written == 0:  # a few samples at 192/384 kHz resample to none: an empty file is no audio file
                dst.write(np.zeros(1, np.float32))
        os.replace(partial, final)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SourceError(
            f"Could not prepare “{info.path.name}” for upload: {exc.strerror or exc}.",
            "Check free disk space in the temporary folder and try again.",
        ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.debug("upload file %s (%s %s mono 48 kHz, %d source frames)", final.name, fmt, subtype, frames)
    return final, content_type


def channel_mean(block: NDArray[np.floating]) -> NDArray[np.float64]:
    """(frames, channels) → (frames,): the mean of the channels, in float64 (exact for PCM up to 32-bit
    and 8 channels but for the last bit of the division). The projection's gate compares the service's
    power with the channels' mean power: it relies on the service hearing exactly this mix."""
    if block.shape[1] == 1:
        return np.asarray(block[:, 0], dtype=np.float64)
    return np.asarray(block.astype(np.float64, copy=False) @ np.full(block.shape[1], 1.0 / block.shape[1]))


def service_mix(info: SourceInfo, start_frame: int, frames: int, clip_bits: int | None = None
                ) -> Iterator[NDArray[np.floating]]:
    """The part's mono mix at 48 kHz, block by block: a 48 kHz source's exact mean (float64), any other's
    resampled by soxr "HQ" (the quality the service's own resampling uses) in float32, whose rounding
    stays far below a 24-bit step and which is twice as fast.
    `clip_bits`: clipped to what that many PCM bits hold (libsndfile would wrap an overshoot)."""
    resampler = (None if info.samplerate == SERVICE_RATE
                 else soxr.ResampleStream(info.samplerate, SERVICE_RATE, 1, dtype="float32", quality="HQ"))
    top = 1.0 - 2.0 ** (1 - clip_bits) if clip_bits is not None else None
    with sf.SoundFile(str(info.path)) as src:
        src.seek(start_frame)
        remaining = frames
        while remaining > 0:
            block = read_block(src, min(READ_BLOCK, remaining), "float64")
            if len(block) == 0:
                raise SourceError(
                    f"“{info.path.name}” ended early while reading it.",
                    "The file may have changed or be damaged; export it again.",
                )
            remaining -= len(block)
            mono = channel_mean(block)  # float64 at 48 kHz: rounded once, by the writer
            if resampler is not None:
                mono = resampler.resample_chunk(mono.astype(np.float32), last=remaining == 0)
            if top is not None:
                np.clip(mono, -1.0, top, out=mono)
            if len(mono):
                yield mono


def _mono_peak(info: SourceInfo, start_frame: int, frames: int) -> float:
    """The peak of the part's mono mix at its own rate (a float source's only: PCM cannot exceed ±1)."""
    peak = 0.0
    with sf.SoundFile(str(info.path)) as src:
        src.seek(start_frame)
        for position in range(start_frame, start_frame + frames, READ_BLOCK):
            block = read_block(src, min(READ_BLOCK, start_frame + frames - position), "float64")
            if len(block):
                peak = max(peak, float(np.max(np.abs(channel_mean(block)))))
    return peak
