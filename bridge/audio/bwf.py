"""Broadcast-WAV metadata: read `bext`/`iXML` chunks, shift the time reference, write them into stems.

Reading walks the chunk list of RIFF/WAVE, RF64/BW64 (64-bit sizes from `ds64`) and Sony Wave64 files
ourselves, so the same walker also tells `audio_source` whether a header promises more bytes than the
file holds (a truncated copy or an unfinished recording).

Writing (`append_chunks`) INSERTS the chunks just BEFORE the `data` chunk of a RIFF or RF64 file: some
DAWs and field-recorder tools only look for `bext` before the audio (Wave64 files alike: see
`_append_w64_chunks`). The audio bytes are moved forward in place (no second file is made), then the
RIFF size (or the RF64 `ds64` RIFF size) is corrected. Every chunk we write has an even size (see
`_riff_chunk`), so no reader has to handle a RIFF pad byte.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BEXT_MIN_SIZE = 602  # fixed part of a version 1/2 bext chunk, before the coding history
_TIME_REFERENCE = slice(338, 346)  # little-endian uint64, samples since midnight
_VERSION = slice(346, 348)
_UMID = slice(348, 412)
_LOUDNESS = slice(412, 422)  # v2: LoudnessValue, LoudnessRange, MaxTruePeakLevel, MaxMomentary, MaxShortTerm
_LOUDNESS_NOT_COMPUTED = struct.pack("<5h", *([0x7FFF] * 5))  # EBU Tech 3285 v2: 0x7FFF = not known
_U32_MAX = 0xFFFFFFFF
_SHIFT_BLOCK = 4 * 2**20

# Wave64 chunk ids are GUIDs; the ones derived from RIFF FOURCCs share this tail.
_W64_FOURCC_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")
_W64_RIFF = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")
_W64_WAVE = b"wave" + _W64_FOURCC_TAIL


@dataclass(frozen=True)
class Chunk:
    id: str  # FOURCC ("fmt ", "data", "bext", "iXML"...); for Wave64 the FOURCC inside the GUID
    header_offset: int  # where the chunk header starts in the file
    data_offset: int  # where its payload starts
    size: int  # payload size in bytes as declared (64-bit sizes resolved)


@dataclass(frozen=True)
class ContainerLayout:
    kind: str  # "RIFF", "RF64", "W64", "AIFF" or "" when not a chunked container we know
    declared_size: int  # total file size the outer header promises
    file_size: int
    chunks: tuple[Chunk, ...]

    def chunk(self, chunk_id: str) -> Chunk | None:
        return next((c for c in self.chunks if c.id == chunk_id), None)


@dataclass(frozen=True)
class BwfChunks:
    bext: bytes | None
    ixml: bytes | None


def inspect_container(path: Path) -> ContainerLayout:
    """Walk the chunk list of a RIFF/RF64/W64/AIFF file (headers only, no audio is read)."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _walk_riff(f, file_size, "RIFF", struct.unpack("<I", head[4:8])[0] + 8)
        if len(head) >= 12 and head[:4] in (b"RF64", b"BW64") and head[8:12] == b"WAVE":
            return _walk_riff(f, file_size, "RF64", 0)
        if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _walk_aiff(f, file_size, struct.unpack(">I", head[4:8])[0] + 8)
        if head == _W64_RIFF:
            return _walk_w64(f, file_size)
    return ContainerLayout("", file_size, file_size, ())


def _walk_riff(f: BinaryIO, file_size: int, kind: str, declared: int) -> ContainerLayout:
    chunks: list[Chunk] = []
    ds64_sizes: dict[str, int] = {}
    pos = 12
    while pos + 8 <= file_size:
        f.seek(pos)
        raw_id, size = struct.unpack("<4sI", f.read(8))
        chunk_id = raw_id.decode("latin-1")
        if kind == "RF64" and chunk_id == "ds64":
            ds64 = f.read(min(size, 28))
            if len(ds64) >= 24:
                riff_size, data_size, _frames = struct.unpack("<QQQ", ds64[:24])
                declared = riff_size + 8
                ds64_sizes["data"] = data_size
        if size == _U32_MAX and chunk_id in ds64_sizes:
            size = ds64_sizes[chunk_id]
        chunks.append(Chunk(chunk_id, pos, pos + 8, size))
        pos += 8 + size + (size & 1)
    return ContainerLayout(kind, declared, file_size, tuple(chunks))


def _walk_aiff(f: BinaryIO, file_size: int, declared: int) -> ContainerLayout:
    chunks: list[Chunk] = []
    pos = 12
    while pos + 8 <= file_size:
        f.seek(pos)
        raw_id, size = struct.unpack(">4sI", f.read(8))
        chunks.append(Chunk(raw_id.decode("latin-1"), pos, pos + 8, size))
        pos += 8 + size + (size & 1)
    return ContainerLayout("AIFF", declared, file_size, tuple(chunks))


def _walk_w64(f: BinaryIO, file_size: int) -> ContainerLayout:
    f.seek(16)
    declared = struct.unpack("<Q", f.read(8))[0]
    if f.read(16) != _W64_WAVE:
        return ContainerLayout("", file_size, file_size, ())
    chunks: list[Chunk] = []
    pos = 40
    while pos + 24 <= file_size:
        f.seek(pos)
        guid = f.read(16)
        size_with_header = struct.unpack("<Q", f.read(8))[0]
        if size_with_header < 24:
            break  # corrupt: a size smaller than its own header would loop forever
        chunk_id = guid[:4].decode("latin-1") if guid[4:] == _W64_FOURCC_TAIL else guid.hex()
        chunks.append(Chunk(chunk_id, pos, pos + 24, size_with_header - 24))
        pos += (size_with_header + 7) & ~7
    return ContainerLayout("W64", declared, file_size, tuple(chunks))


def read_chunks(path: Path) -> BwfChunks:
    """The raw payloads of the first `bext` and `iXML` chunks of a RIFF/RF64/W64 file (None if absent)."""
    layout = inspect_container(path)
    if layout.kind not in ("RIFF", "RF64", "W64"):
        return BwfChunks(None, None)
    found: dict[str, bytes] = {}
    with open(path, "rb") as f:
        for chunk_id in ("bext", "iXML"):
            chunk = layout.chunk(chunk_id)
            if chunk is not None and chunk.data_offset + chunk.size <= layout.file_size:
                f.seek(chunk.data_offset)
                found[chunk_id] = f.read(chunk.size)
    return BwfChunks(found.get("bext"), found.get("iXML"))


def time_reference(bext: bytes) -> int:
    """Samples since midnight at which the file starts (0 when the chunk is too short to say)."""
    if len(bext) < _TIME_REFERENCE.stop:
        return 0
    return int(struct.unpack("<Q", bext[_TIME_REFERENCE])[0])


def with_time_reference(bext: bytes, new_ref: int) -> bytes:
    """A copy of `bext` whose TimeReference is `new_ref` (a short chunk is zero-padded to 602 bytes)."""
    if not 0 <= new_ref < 2**64:
        raise ValueError(f"time reference {new_ref} does not fit in 64 bits")
    data = bytearray(bext.ljust(BEXT_MIN_SIZE, b"\0"))
    data[_TIME_REFERENCE] = struct.pack("<Q", new_ref)
    return bytes(data)


def stem_bext(source_bext: bytes, start_frame: int) -> bytes:
    """The bext for a stem that starts `start_frame` samples into its source.

    The UMID is cleared: a stem is new material, and sharing the source's unique id could make an asset
    manager or DAW treat the two files as one. A version 2 chunk's loudness values are the source's, not
    the stem's: they are marked not computed (in v0/v1 those bytes are reserved and stay as they are).
    """
    data = bytearray(with_time_reference(source_bext, time_reference(source_bext) + start_frame))
    data[_UMID] = bytes(_UMID.stop - _UMID.start)
    if struct.unpack("<H", data[_VERSION])[0] >= 2:
        data[_LOUDNESS] = _LOUDNESS_NOT_COMPUTED
    return bytes(data)


_IXML_REF = re.compile(rb"<BWF_TIME_REFERENCE_(LOW|HIGH)>\s*(\d+)\s*</BWF_TIME_REFERENCE_\1>")


def ixml_time_reference(ixml: bytes) -> int | None:
    """The BEXT time-reference copy in an iXML chunk (LOW + HIGH · 2³²), or None when it has none."""
    parts = {match.group(1): int(match.group(2)) for match in _IXML_REF.finditer(ixml)}
    if b"LOW" not in parts:
        return None
    return parts[b"LOW"] + (parts.get(b"HIGH", 0) << 32)


def stem_ixml(source_ixml: bytes, new_ref: int) -> bytes:
    """The iXML with its BEXT time-reference copy (if any) set to `new_ref`, so both chunks agree."""
    parts = {b"LOW": new_ref & _U32_MAX, b"HIGH": new_ref >> 32}

    def replace(match: re.Match[bytes]) -> bytes:
        which = match.group(1)
        return b"<BWF_TIME_REFERENCE_%s>%d</BWF_TIME_REFERENCE_%s>" % (which, parts[which], which)

    return _IXML_REF.sub(replace, source_ixml)


def _riff_chunk(chunk_id: bytes, payload: bytes) -> bytes:
    # An odd payload is made even INSIDE the chunk (iXML: a newline, bext: a NUL after the coding
    # history) instead of adding a pad byte after it: libsndfile's RF64 reader skips unknown chunks
    # without their pad byte and then cannot find `data`.
    if len(payload) & 1:
        payload += b"\n" if chunk_id == b"iXML" else b"\0"
    return chunk_id + struct.pack("<I", len(payload)) + payload


def append_chunks(wav_path: Path, bext: bytes | None, ixml: bytes | None) -> None:
    """Insert `bext` and `iXML` chunks before the `data` chunk of a RIFF/RF64 file, in place (a Wave64 file:
    see `_append_w64_chunks`).

    Raises ValueError when the file is not RIFF/RF64/W64, already has one of these chunks, or would grow past
    the 4 GiB a plain RIFF can describe (write RF64 instead).
    """
    new_bytes = b"".join(
        _riff_chunk(chunk_id, payload)
        for chunk_id, payload in ((b"bext", bext), (b"iXML", ixml))
        if payload is not None
    )
    if not new_bytes:
        return
    layout = inspect_container(wav_path)
    if layout.kind not in ("RIFF", "RF64", "W64"):
        raise ValueError(f"{wav_path.name} is not a RIFF/RF64/W64 file")
    data = layout.chunk("data")
    if data is None:
        raise ValueError(f"{wav_path.name} has no data chunk")
    present = [c.id for c in layout.chunks if c.id in ("bext", "iXML")]
    if present:
        raise ValueError(f"{wav_path.name} already has {', '.join(present)}")
    if layout.kind == "W64":
        _append_w64_chunks(wav_path, layout, data, bext, ixml)
        return
    grow = len(new_bytes)
    with open(wav_path, "r+b") as f:
        if layout.kind == "RIFF":
            f.seek(4)
            riff_size = struct.unpack("<I", f.read(4))[0]
            if riff_size + grow > _U32_MAX:
                raise ValueError(f"{wav_path.name} would pass 4 GiB; write it as RF64")
            _shift_tail(f, data.header_offset, layout.file_size, grow)
            f.seek(4)
            f.write(struct.pack("<I", riff_size + grow))
        else:
            ds64 = layout.chunk("ds64")
            if ds64 is None:
                raise ValueError(f"{wav_path.name} is RF64 without a ds64 chunk")
            _shift_tail(f, data.header_offset, layout.file_size, grow)
            f.seek(ds64.data_offset)
            riff_size = struct.unpack("<Q", f.read(8))[0]
            f.seek(ds64.data_offset)
            f.write(struct.pack("<Q", riff_size + grow))
        f.seek(data.header_offset)
        f.write(new_bytes)
        f.flush()
        os.fsync(f.fileno())


def _w64_chunk(chunk_id: bytes, payload: bytes) -> bytes:
    """A Wave64 chunk: the FOURCC's GUID, a 64-bit size counting the 24-byte header, zeros to 8 bytes."""
    size = 24 + len(payload)
    return chunk_id + _W64_FOURCC_TAIL + struct.pack("<Q", size) + payload + bytes(-size % 8)


def _append_w64_chunks(path: Path, layout: ContainerLayout, data: Chunk, bext: bytes | None,
                       ixml: bytes | None) -> None:
    """`bext` and `iXML` before the `data` chunk of a Wave64 file, as in a WAV: libsndfile reads a Wave64
    file's audio up to the end of the file, so a chunk after `data` would become noise at the stem's end."""
    new_bytes = b"".join(_w64_chunk(chunk_id, payload) for chunk_id, payload in ((b"bext", bext), (b"iXML", ixml))
                         if payload is not None)
    with open(path, "r+b") as f:
        _shift_tail(f, data.header_offset, layout.file_size, len(new_bytes))
        f.seek(data.header_offset)
        f.write(new_bytes)
        f.seek(16)
        f.write(struct.pack("<Q", layout.file_size + len(new_bytes)))  # the riff size is the whole file's
        f.flush()
        os.fsync(f.fileno())


def _shift_tail(f: BinaryIO, start: int, end: int, grow: int) -> None:
    """Move bytes [start, end) forward by `grow`, last block first so nothing is overwritten unread."""
    pos = end
    while pos > start:
        block_start = max(start, pos - _SHIFT_BLOCK)
        f.seek(block_start)
        block = f.read(pos - block_start)
        f.seek(block_start + grow)
        f.write(block)
        pos = block_start


def read_channel_mask(path: Path) -> int | None:
    """dwChannelMask of a WAVE_FORMAT_EXTENSIBLE `fmt ` chunk (speaker layout), or None."""
    layout = inspect_container(path)
    fmt = layout.chunk("fmt ")
    if layout.kind not in ("RIFF", "RF64", "W64") or fmt is None or fmt.size < 24:
        return None
    with open(path, "rb") as f:
        f.seek(fmt.data_offset)
        payload = f.read(24)
    if struct.unpack("<H", payload[:2])[0] != 0xFFFE:
        return None
    return int(struct.unpack("<I", payload[20:24])[0])


def write_channel_mask(path: Path, mask: int) -> bool:
    """Set dwChannelMask of an extensible `fmt ` chunk in place; False when the file has none."""
    if read_channel_mask(path) is None:
        return False
    fmt = inspect_container(path).chunk("fmt ")
    assert fmt is not None
    with open(path, "r+b") as f:
        f.seek(fmt.data_offset + 20)
        f.write(struct.pack("<I", mask))
    return True
