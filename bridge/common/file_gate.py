"""Is a file in a hot folder complete? Stability plus the container's own size fields.

DAWs write an export in many chunks over seconds or minutes and often patch the header at the very
end, and a half-written WAV reads without error. So a file is taken only when
1. its size and mtime stayed unchanged (and no watcher event arrived) for a settle window,
2. on Windows, an exclusive open succeeds (the writer has closed it), and
3. the container's size fields (RIFF/RIFX, RF64/BW64, Wave64, AIFF/AIFC) agree with the file's length
   and its audio-data chunk lies inside the file.
Formats without such fields (FLAC, MP3, Ogg, CAF), and a WAV written to a pipe (its sizes 0xFFFFFFFF for
good), rely on 1 and 2 only, with a longer settle window.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import soundfile as sf

_PLACEHOLDER_SIZES = (0, 0xFFFFFFFF)  # what writers put in a size field before they know the size
_MAX_CHUNKS = 4096  # stop walking a corrupt chunk list long before it costs anything
_W64_RIFF_GUID = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"
_W64_DATA_NAME = b"data"  # first bytes of the Wave64 data-chunk GUID


@dataclass(frozen=True)
class FileSnapshot:
    """What stability is judged on: a file's size and modification time."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileSnapshot | None:
        """The file's snapshot, or None when it is gone or not a regular file."""
        try:
            info = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return cls(info.st_size, info.st_mtime_ns)


@dataclass
class SettleState:
    """Tracks how long a file has been quiet: unchanged snapshot and no watcher activity."""

    snapshot: FileSnapshot
    quiet_since: float  # time.monotonic() of the last change or event

    def observe(self, current: FileSnapshot, now: float) -> bool:
        """Record a fresh snapshot; return True when it differs from the last one (the clock restarts)."""
        if current == self.snapshot:
            return False
        self.snapshot = current
        self.quiet_since = now
        return True

    def activity(self, now: float) -> None:
        """A watcher event arrived: with coarse mtimes (FAT, SMB) a write can leave the snapshot equal."""
        self.quiet_since = max(self.quiet_since, now)

    def settled_at(self, settle_seconds: float) -> float:
        return self.quiet_since + settle_seconds


class Completeness(StrEnum):
    complete = "complete"
    incomplete = "incomplete"
    unchecked = "unchecked"  # the format has no size fields; stability is all there is


@dataclass(frozen=True)
class ContainerCheck:
    completeness: Completeness
    container: str  # "RIFF", "RF64", "W64", "AIFF", … or "" when not recognised
    reason: str = ""
    streamed: bool = False  # a WAV whose sizes were never filled in: written to a pipe, or still being written

    @property
    def ok(self) -> bool:
        return self.completeness is not Completeness.incomplete


def check_container(path: Path) -> ContainerCheck:
    """Compare the container's size fields with the file's length. Raises OSError if unreadable."""
    with open(path, "rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        head = handle.read(16)
        if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
            return _check_riff(handle, head, length)
        if head[:4] in (b"RF64", b"BW64") and head[8:12] == b"WAVE":
            return _check_rf64(handle, head, length)
        if head == _W64_RIFF_GUID:
            return _check_w64(handle, length)
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _check_aiff(handle, head, length)
        if head[:4] == b"fLaC":  # no size fields; its header counts frames (audio_source.ends_early)
            return ContainerCheck(Completeness.unchecked, "FLAC")
    return ContainerCheck(Completeness.unchecked, "")


def can_open_exclusively(path: Path) -> bool:
    """On Windows, True when no other process holds the file open; elsewhere always True.

    POSIX has no mandatory share modes, so stability is the only signal there."""
    if sys.platform != "win32":
        return True
    import ctypes

    generic_read, no_sharing, open_existing, normal = 0x80000000, 0, 3, 0x80
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateFileW.restype = ctypes.c_void_p
    handle = kernel32.CreateFileW(str(path), generic_read, no_sharing, None, open_existing, normal, None)
    if handle is None or handle == ctypes.c_void_p(-1).value:
        return False
    kernel32.CloseHandle(ctypes.c_void_p(handle))
    return True


def _length_mismatch(
    handle: BinaryIO, container: str, declared_total: int, length: int
) -> ContainerCheck | None:
    """None when the declared total length fits the file. Tolerated: a pad byte left out of the size,
    and an ID3 tag a tagger appended after the container (never what a half-written render looks like)."""
    if length < declared_total:
        return _incomplete(
            container, f"its header announces {declared_total} bytes but only {length} are there yet"
        )
    if length > declared_total + 1 and not _id3_tag_at(handle, declared_total):
        return _incomplete(
            container, f"it has {length} bytes but its header says {declared_total} (header not final yet)"
        )
    return None


def _id3_tag_at(handle: BinaryIO, offset: int) -> bool:
    for start in (offset, offset + 1):  # after an optional pad byte
        handle.seek(start)
        if handle.read(3) == b"ID3":
            return True
    return False


def _incomplete(container: str, reason: str) -> ContainerCheck:
    return ContainerCheck(Completeness.incomplete, container, reason)


def _check_riff(handle: BinaryIO, head: bytes, length: int) -> ContainerCheck:
    container = head[:4].decode()
    order = "<" if container == "RIFF" else ">"
    (riff_size,) = struct.unpack(order + "I", head[4:8])
    if riff_size == 0xFFFFFFFF and container == "RIFF":
        streamed = _check_data_chunk(handle, container, order, 12, length, data_id=b"data", streamed=True)
        if streamed.completeness is Completeness.unchecked:
            return streamed
    if riff_size in _PLACEHOLDER_SIZES:
        return _incomplete(container, "its header still holds a placeholder size")
    mismatch = _length_mismatch(handle, container, riff_size + 8, length)
    if mismatch:
        return mismatch
    return _check_data_chunk(handle, container, order, 12, length, data_id=b"data")


def _check_rf64(handle: BinaryIO, head: bytes, length: int) -> ContainerCheck:
    container = head[:4].decode()
    handle.seek(12)
    chunk = handle.read(8 + 16)
    if len(chunk) < 24 or chunk[:4] != b"ds64":
        return _incomplete(container, "its ds64 size chunk is missing")
    riff_size, data_size = struct.unpack("<QQ", chunk[8:24])
    if riff_size == 0:
        return _incomplete(container, "its header still holds a placeholder size")
    mismatch = _length_mismatch(handle, container, riff_size + 8, length)
    if mismatch:
        return mismatch
    return _check_data_chunk(handle, container, "<", 12, length, data_id=b"data", large_data_size=data_size)


def _check_aiff(handle: BinaryIO, head: bytes, length: int) -> ContainerCheck:
    container = head[8:12].decode()
    (form_size,) = struct.unpack(">I", head[4:8])
    if form_size in _PLACEHOLDER_SIZES:
        return _incomplete(container, "its header still holds a placeholder size")
    mismatch = _length_mismatch(handle, container, form_size + 8, length)
    if mismatch:
        return mismatch
    return _check_data_chunk(handle, container, ">", 12, length, data_id=b"SSND")


def _check_data_chunk(
    handle: BinaryIO,
    container: str,
    order: str,
    offset: int,
    length: int,
    *,
    data_id: bytes,
    large_data_size: int | None = None,
    streamed: bool = False,
) -> ContainerCheck:
    """Walk the chunk list up to the audio-data chunk and check that it ends inside the file. `streamed`:
    the RIFF size is 0xFFFFFFFF; a data size of 0xFFFFFFFF too is a WAV written to a pipe (ffmpeg's wav
    muxer, arecord), whose writer can never patch them: judged by stability alone, like an MP3."""
    for _ in range(_MAX_CHUNKS):
        handle.seek(offset)
        header = handle.read(8)
        if len(header) < 8:
            break
        (size,) = struct.unpack(order + "I", header[4:8])
        if header[:4] == data_id:
            if size == 0xFFFFFFFF and large_data_size is not None:
                size = large_data_size  # RF64: the real size lives in ds64
            if streamed and size == 0xFFFFFFFF:
                return ContainerCheck(Completeness.unchecked, container,
                                      "its sizes were never filled in (written to a pipe)", streamed=True)
            unpatched = size == 0xFFFFFFFF or (size == 0 and offset + 8 < length)
            if unpatched and large_data_size is None:
                return _incomplete(container, "its audio chunk still holds a placeholder size")
            if offset + 8 + size > length:
                return _incomplete(container, "its audio chunk runs past the end of the file")
            return ContainerCheck(Completeness.complete, container)
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return _incomplete(container, "no audio chunk found")


def _check_w64(handle: BinaryIO, length: int) -> ContainerCheck:
    container = "W64"
    size_field = handle.read(8)
    if len(size_field) < 8:
        return _incomplete(container, "its header is not all there yet")
    (total,) = struct.unpack("<Q", size_field)
    if total in (0, 0xFFFFFFFFFFFFFFFF):
        return _incomplete(container, "its header still holds a placeholder size")
    mismatch = _length_mismatch(handle, container, total, length)
    if mismatch:
        return mismatch
    offset = 40  # riff GUID + size + wave GUID
    for _ in range(_MAX_CHUNKS):
        handle.seek(offset)
        header = handle.read(24)
        if len(header) < 24:
            break
        (size,) = struct.unpack("<Q", header[16:24])  # Wave64 chunk sizes include the 24-byte header
        if size < 24:
            return _incomplete(container, "its chunk list is damaged")
        if header[:4] == _W64_DATA_NAME:
            if offset + size > length:
                return _incomplete(container, "its audio chunk runs past the end of the file")
            return ContainerCheck(Completeness.complete, container)
        offset += (size + 7) // 8 * 8  # chunks are aligned to 8 bytes
    return _incomplete(container, "no audio chunk found")

def flac_length_unknown(path: Path) -> bool:
    """True for a FLAC whose header does not give its length yet: libsndfile and sox write it only when
    they close the file, so a FLAC still being exported looks like this (as does one written as a stream)."""
    try:
        return bool(sf.info(str(path)).frames >= 2**62)  # 2**63 - 1: no length in the header
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False  # not readable at all: said elsewhere, in its own words


def ends_early(path: Path) -> bool:
    """True for a FLAC file that stops before the length its header gives: a copy still under way or an
    interrupted export (the header, written or copied first, is whole). Only the end is read. FLAC alone:
    an MP3's length is a guess (a complete one without a Xing frame can read short)."""
    try:
        audio = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False  # not readable at all: said elsewhere, in its own words
    with audio:
        if audio.format != "FLAC" or not 0 < audio.frames < 2**62:  # 2**63 - 1: length not in the header
            return False
        tail = min(audio.frames, 1024)
        try:
            audio.seek(audio.frames - tail)
            return bool(len(audio.read(tail, dtype="float32")) < tail)
        except (sf.LibsndfileError, RuntimeError):  # the frames the header counts are not there
            return True
