"""The completeness gate: container size fields against the file's length, and the settle clock."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.common.file_gate import (
    Completeness,
    FileSnapshot,
    SettleState,
    can_open_exclusively,
    check_container,
)

FORMATS = [("WAV", ".wav", "RIFF"), ("WAVEX", ".wav", "RIFF"), ("RF64", ".wav", "RF64"),
           ("AIFF", ".aif", "AIFF"), ("W64", ".w64", "W64")]


def audio_bytes(fmt: str, frames: int = 4800, channels: int = 2) -> bytes:
    rng = np.random.default_rng(frames)
    data = rng.uniform(-0.5, 0.5, size=(frames, channels)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, data, 48000, format=fmt, subtype="PCM_24")
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("fmt", "ext", "container"), FORMATS)
def test_complete_files_pass(tmp_path: Path, fmt: str, ext: str, container: str) -> None:
    check = check_container(write(tmp_path, "take" + ext, audio_bytes(fmt)))
    assert check.completeness is Completeness.complete, check.reason
    assert check.container == container
    assert check.ok


@pytest.mark.parametrize(("fmt", "ext", "container"), FORMATS)
def test_a_file_shorter_than_its_header_says_waits(tmp_path: Path, fmt: str, ext: str,
                                                   container: str) -> None:
    data = audio_bytes(fmt)
    check = check_container(write(tmp_path, "take" + ext, data[: len(data) * 2 // 3]))
    assert check.completeness is Completeness.incomplete
    assert check.container == container
    assert "header announces" in check.reason


@settings(max_examples=60, deadline=None)
@given(fmt_index=st.integers(0, len(FORMATS) - 1), cut=st.floats(0.0, 0.999))
def test_every_truncation_is_incomplete(tmp_path_factory: pytest.TempPathFactory, fmt_index: int,
                                        cut: float) -> None:
    fmt, ext, _ = FORMATS[fmt_index]
    data = audio_bytes(fmt, frames=600)
    keep = max(16, int(len(data) * cut))  # 16 bytes: the magic must be there to know the container
    path = write(tmp_path_factory.mktemp("cut"), "take" + ext, data[:keep])
    assert check_container(path).completeness is Completeness.incomplete


def test_placeholder_header_written_first_waits_until_patched(tmp_path: Path) -> None:
    """What DAWs do: write the header with zero sizes, stream the audio, patch the header last."""
    final = audio_bytes("WAV")
    placeholder = bytearray(final)
    placeholder[4:8] = struct.pack("<I", 0)
    data_at = final.index(b"data")
    placeholder[data_at + 4 : data_at + 8] = struct.pack("<I", 0)
    path = write(tmp_path, "render.wav", bytes(placeholder))
    check = check_container(path)
    assert check.completeness is Completeness.incomplete and "placeholder" in check.reason
    # Header patched with a RIFF size but the data size still at zero: still waiting.
    placeholder[4:8] = final[4:8]
    path.write_bytes(bytes(placeholder))
    assert check_container(path).completeness is Completeness.incomplete
    path.write_bytes(final)
    assert check_container(path).completeness is Completeness.complete


def test_a_wav_written_to_a_pipe_is_judged_by_stability_alone(tmp_path: Path) -> None:
    """ffmpeg's wav muxer on a pipe writes 0xFFFFFFFF for the RIFF and data sizes and can never patch
    them: no size field tells it whole, like an MP3 (libsndfile reads it to its end)."""
    data = bytearray(audio_bytes("WAV"))
    data[4:8] = b"\xff\xff\xff\xff"
    data_at = data.index(b"data")
    data[data_at + 4 : data_at + 8] = b"\xff\xff\xff\xff"
    check = check_container(write(tmp_path, "piped.wav", bytes(data)))
    assert check.completeness is Completeness.unchecked and check.container == "RIFF"
    assert "pipe" in check.reason
    # zero sizes are a seekable writer's provisional header, which it patches at the end: still waited for
    data[4:8] = data[data_at + 4 : data_at + 8] = b"\0\0\0\0"
    assert check_container(write(tmp_path, "render.wav", bytes(data))).completeness is Completeness.incomplete


def test_audio_streamed_past_a_provisional_header_waits(tmp_path: Path) -> None:
    """A header written for the first second while ten are on disk: more bytes than it declares."""
    short = audio_bytes("WAV", frames=4800)
    long = audio_bytes("WAV", frames=48000)
    check = check_container(write(tmp_path, "grow.wav", short[:44] + long[44:]))
    assert check.completeness is Completeness.incomplete
    assert "header not final" in check.reason


@pytest.mark.parametrize("fmt", ["WAV", "AIFF"])
def test_an_id3_tag_appended_after_the_container_is_fine(tmp_path: Path, fmt: str) -> None:
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0aTIT2" + b"\x00" * 20
    check = check_container(write(tmp_path, "tagged.wav", audio_bytes(fmt) + tag))
    assert check.completeness is Completeness.complete, check.reason


def test_aiff_placeholder_size_waits(tmp_path: Path) -> None:
    data = bytearray(audio_bytes("AIFF"))
    data[4:8] = b"\xff\xff\xff\xff"
    assert check_container(write(tmp_path, "x.aif", bytes(data))).completeness is Completeness.incomplete


def test_rf64_with_unpatched_ds64_waits(tmp_path: Path) -> None:
    data = bytearray(audio_bytes("RF64"))
    data[20:28] = struct.pack("<Q", 0)  # ds64 riffSize
    assert check_container(write(tmp_path, "x.wav", bytes(data))).completeness is Completeness.incomplete


def test_pad_byte_left_out_of_the_size_is_tolerated(tmp_path: Path) -> None:
    """Mono 8-bit with an odd frame count ends in a pad byte; some writers leave it out of the RIFF size."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(4801, dtype=np.float32), 48000, format="WAV", subtype="PCM_U8")
    data = buffer.getvalue()
    riff_size = struct.unpack("<I", data[4:8])[0]
    assert len(data) == riff_size + 8 and data[-1] == 0  # padded and counted, as libsndfile writes it
    uncounted = data[:4] + struct.pack("<I", riff_size - 1) + data[8:]
    assert check_container(write(tmp_path, "odd.wav", uncounted)).completeness is Completeness.complete


@pytest.mark.parametrize(("fmt", "ext"), [("FLAC", ".flac"), ("OGG", ".ogg")])
def test_formats_without_size_fields_are_left_to_stability(tmp_path: Path, fmt: str, ext: str) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((4800, 2), dtype=np.float32), 48000, format=fmt)
    check = check_container(write(tmp_path, "x" + ext, buffer.getvalue()))
    assert check.completeness is Completeness.unchecked
    assert check.ok


def test_not_audio_is_unchecked_here(tmp_path: Path) -> None:
    """The gate judges completeness only; the watcher's audio check refuses garbage afterwards."""
    check = check_container(write(tmp_path, "junk.wav", b"this is not a wave file at all" * 10))
    assert check.completeness is Completeness.unchecked


def test_a_damaged_chunk_list_is_incomplete(tmp_path: Path) -> None:
    data = bytearray(audio_bytes("WAV"))
    data[12:16] = b"junk"
    data[16:20] = struct.pack("<I", 10**8)  # first chunk claims to run far past the end
    assert check_container(write(tmp_path, "bad.wav", bytes(data))).completeness is Completeness.incomplete


def test_snapshot_of_missing_file_and_folder(tmp_path: Path) -> None:
    assert FileSnapshot.of(tmp_path / "nope.wav") is None
    assert FileSnapshot.of(tmp_path) is None
    path = write(tmp_path, "x.wav", b"1234")
    snap = FileSnapshot.of(path)
    assert snap is not None and snap.size == 4


def test_settle_clock_restarts_on_change_and_on_activity() -> None:
    state = SettleState(FileSnapshot(100, 1), quiet_since=10.0)
    assert state.settled_at(2.0) == 12.0
    assert not state.observe(FileSnapshot(100, 1), now=11.0)  # unchanged: clock keeps running
    assert state.settled_at(2.0) == 12.0
    assert state.observe(FileSnapshot(200, 2), now=11.5)  # grew: start again
    assert state.settled_at(2.0) == 13.5
    state.activity(now=12.0)  # an event with an unchanged snapshot (coarse mtime) still counts
    assert state.settled_at(2.0) == 14.0
    state.activity(now=11.0)  # a late, older event never moves the clock back
    assert state.settled_at(2.0) == 14.0


def test_exclusive_open_is_true_where_posix_has_no_share_modes(tmp_path: Path) -> None:
    path = write(tmp_path, "x.wav", b"1")
    with open(path, "ab"):
        assert can_open_exclusively(path) is True
