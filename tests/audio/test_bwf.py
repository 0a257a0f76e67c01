"""bext/iXML chunks: our reader against ffmpeg's writer, our writer against ffprobe and wavinfo."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import wavinfo

from bridge.audio import bwf

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
needs_ffmpeg = pytest.mark.skipif(not (FFMPEG and FFPROBE), reason="ffmpeg/ffprobe not installed")


def _wav(path: Path, frames: int = 4800, channels: int = 2, fmt: str = "WAV", subtype: str = "PCM_24") -> Path:
    data = np.random.default_rng(5).uniform(-0.5, 0.5, (frames, channels))
    sf.write(str(path), data, 48_000, subtype=subtype, format=fmt)
    return path


def _bext(description: bytes, ref: int) -> bytes:
    return bwf.with_time_reference(description, ref) + b"A=PCM,F=48000,W=24,M=stereo\r\n"


def _ffprobe_tags(path: Path) -> dict[str, str]:
    assert FFPROBE
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries", "format_tags", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(json.loads(out)["format"].get("tags", {}))


@needs_ffmpeg
def test_reads_bext_written_by_ffmpeg(tmp_path: Path) -> None:
    src = _wav(tmp_path / "plain.wav")
    out = tmp_path / "ff.wav"
    assert FFMPEG
    subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(src), "-c:a", "pcm_s24le", "-write_bext", "1",
         "-metadata", "time_reference=172800000", "-metadata", "description=Take 7", str(out)],
        check=True,
        timeout=60,
    )  # fmt: skip
    chunks = bwf.read_chunks(out)
    assert chunks.bext is not None
    assert bwf.time_reference(chunks.bext) == 172_800_000
    assert chunks.bext[:6] == b"Take 7"


@needs_ffmpeg
def test_ffprobe_and_wavinfo_read_what_we_insert(tmp_path: Path) -> None:
    path = _wav(tmp_path / "stem.wav")
    before, _ = sf.read(str(path), dtype="int32")
    ixml = b"<BWFXML><PROJECT>odd length</PROJECT></BWFXML>"  # 47 bytes: made even with a newline
    bwf.append_chunks(path, _bext(b"Stem of take 7", 2**33 + 5), ixml)

    assert _ffprobe_tags(path)["time_reference"] == str(2**33 + 5)
    info = wavinfo.WavInfoReader(str(path))
    assert info.bext is not None and info.bext.time_reference == 2**33 + 5
    assert info.ixml is not None and info.ixml.source.strip() == ixml
    after, _ = sf.read(str(path), dtype="int32")
    assert np.array_equal(before, after)  # the audio did not move or change

    layout = bwf.inspect_container(path)
    ids = [c.id for c in layout.chunks]
    assert ids.index("bext") < ids.index("data") and ids.index("iXML") < ids.index("data")
    assert layout.declared_size == layout.file_size  # RIFF size fixed
    assert all(c.header_offset % 2 == 0 and c.size % 2 == 0 for c in layout.chunks)


@needs_ffmpeg
def test_rf64_stem_gets_chunks_and_stays_readable(tmp_path: Path) -> None:
    path = _wav(tmp_path / "big.wav", fmt="RF64")
    before, _ = sf.read(str(path), dtype="int32")
    bwf.append_chunks(path, _bext(b"rf64", 1234) + b"!", b"<BWFXML/>")  # both odd-sized
    assert path.read_bytes()[:4] == b"RF64"
    layout = bwf.inspect_container(path)
    assert layout.kind == "RF64" and layout.declared_size == layout.file_size
    assert bwf.time_reference(bwf.read_chunks(path).bext or b"") == 1234
    assert _ffprobe_tags(path)["time_reference"] == "1234"
    after, _ = sf.read(str(path), dtype="int32")
    assert np.array_equal(before, after)


def test_w64_chunks_are_read(tmp_path: Path) -> None:
    path = _wav(tmp_path / "x.w64", fmt="W64")
    payload = _bext(b"w64", 777)
    guid = b"bext" + bytes.fromhex("f3acd3118cd100c04f8edb8a")
    chunk = guid + struct.pack("<Q", 24 + len(payload)) + payload
    chunk += b"\0" * (-len(chunk) % 8)
    data = bwf.inspect_container(path).chunk("data")
    assert data is not None
    raw = bytearray(path.read_bytes())
    raw[data.header_offset : data.header_offset] = chunk  # bext before data, as recorders write it
    raw[16:24] = struct.pack("<Q", len(raw))
    path.write_bytes(bytes(raw))
    chunks = bwf.read_chunks(path)
    assert chunks.bext is not None and bwf.time_reference(chunks.bext) == 777
    assert sf.info(str(path)).frames == 4800


def test_time_reference_helpers() -> None:
    bext = bwf.with_time_reference(b"x" * 700, 10)
    assert len(bext) == 700 and bwf.time_reference(bext) == 10
    short = bwf.with_time_reference(b"desc", 2**40)
    assert len(short) == bwf.BEXT_MIN_SIZE and bwf.time_reference(short) == 2**40
    assert bwf.time_reference(b"too short") == 0
    with pytest.raises(ValueError):
        bwf.with_time_reference(b"", -1)


def test_stem_bext_shifts_and_clears_umid() -> None:
    source = bytearray(bwf.with_time_reference(b"Take", 48_000 * 3600))
    source[348:412] = b"U" * 64
    stem = bwf.stem_bext(bytes(source) + b"history", 96_000)
    assert bwf.time_reference(stem) == 48_000 * 3600 + 96_000
    assert stem[348:412] == bytes(64)
    assert stem[:4] == b"Take" and stem.endswith(b"history")


def test_stem_ixml_keeps_its_time_reference_in_step() -> None:
    ixml = (
        b"<BWFXML><BEXT><BWF_TIME_REFERENCE_LOW>5</BWF_TIME_REFERENCE_LOW>"
        b"<BWF_TIME_REFERENCE_HIGH>0</BWF_TIME_REFERENCE_HIGH></BEXT></BWFXML>"
    )
    new = bwf.stem_ixml(ixml, 2**32 + 7)
    assert b"<BWF_TIME_REFERENCE_LOW>7</BWF_TIME_REFERENCE_LOW>" in new
    assert b"<BWF_TIME_REFERENCE_HIGH>1</BWF_TIME_REFERENCE_HIGH>" in new
    assert bwf.stem_ixml(b"<BWFXML/>", 9) == b"<BWFXML/>"


def test_ixml_time_reference_is_read_from_its_two_halves() -> None:
    ixml = (
        b"<BWFXML><BEXT><BWF_TIME_REFERENCE_LOW>7</BWF_TIME_REFERENCE_LOW>"
        b"<BWF_TIME_REFERENCE_HIGH>1</BWF_TIME_REFERENCE_HIGH></BEXT></BWFXML>"
    )
    assert bwf.ixml_time_reference(ixml) == 2**32 + 7
    assert bwf.ixml_time_reference(b"<BWFXML><BWF_TIME_REFERENCE_LOW>9</BWF_TIME_REFERENCE_LOW></BWFXML>") == 9
    assert bwf.ixml_time_reference(b"<BWFXML/>") is None


def test_stem_bext_marks_the_loudness_of_a_v2_chunk_not_computed() -> None:
    """The stems do not have the source's loudness: EBU Tech 3285 v2 says 0x7FFF for a value not known."""
    source = bytearray(bwf.with_time_reference(b"Take", 0))
    source[346:348] = struct.pack("<H", 2)
    source[412:422] = struct.pack("<5h", -1400, 500, -100, -1200, -1300)
    stem = bwf.stem_bext(bytes(source), 48_000)
    assert struct.unpack("<5h", stem[412:422]) == (0x7FFF,) * 5
    assert stem[422:602] == bytes(180)  # the reserved bytes stay zero
    version_1 = bytearray(source)
    version_1[346:348] = struct.pack("<H", 1)
    version_1[412:422] = bytes(10)  # reserved in v1: must stay zero
    assert bwf.stem_bext(bytes(version_1), 48_000)[412:602] == bytes(190)


def test_refuses_files_it_cannot_extend(tmp_path: Path) -> None:
    aiff = _wav(tmp_path / "x.aiff", fmt="AIFF")
    with pytest.raises(ValueError, match="not a RIFF"):
        bwf.append_chunks(aiff, b"b" * 602, None)
    wav = _wav(tmp_path / "x.wav")
    bwf.append_chunks(wav, b"b" * 602, None)
    with pytest.raises(ValueError, match="already has bext"):
        bwf.append_chunks(wav, b"b" * 602, None)
    # a RIFF that already claims almost 4 GiB (sparse file): adding chunks would overflow its size field
    huge = tmp_path / "huge.wav"
    header = _wav(tmp_path / "h.wav", frames=1).read_bytes()[:44]
    data_size = 0xFFFFFFFF - 100
    header = header[:4] + struct.pack("<I", 36 + data_size) + header[8:40] + struct.pack("<I", data_size)
    with open(huge, "wb") as f:
        f.write(header)
        f.truncate(44 + data_size)
    with pytest.raises(ValueError, match="RF64"):
        bwf.append_chunks(huge, b"b" * 602, None)
    assert huge.stat().st_size == 44 + data_size  # untouched


def test_channel_mask_round_trip(tmp_path: Path) -> None:
    path = _wav(tmp_path / "x.wav", channels=6, fmt="WAVEX")
    assert bwf.read_channel_mask(path) is not None
    assert bwf.write_channel_mask(path, 0x60F)  # 5.1 with side surrounds
    assert bwf.read_channel_mask(path) == 0x60F
    assert sf.info(str(path)).channels == 6
    plain = _wav(tmp_path / "plain.wav")
    assert bwf.read_channel_mask(plain) is None and not bwf.write_channel_mask(plain, 3)
    assert bwf.read_chunks(plain) == bwf.BwfChunks(None, None)
