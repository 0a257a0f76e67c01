"""The exact length of MPEG files (bridge/audio/mpeg_length.py): a frame count trusted only where the first
frame carries one, else a decoded count, remembered for a bounded number of file versions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio import mpeg_length
from bridge.audio.mpeg_length import counts_frames, exact_frames

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg")


def mp3(tmp_path: Path, name: str, *codec: str) -> Path:
    wav = tmp_path / "take.wav"
    sf.write(str(wav), np.random.default_rng(3).uniform(-0.3, 0.3, (44100 * 2, 2)), 44100, "PCM_16")
    out = tmp_path / name
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), *codec, str(out)], check=True)
    return out


def decoded(path: Path) -> int:
    return len(sf.read(str(path), dtype="float32")[0])


def test_a_lame_header_is_trusted_and_right(tmp_path: Path) -> None:
    path = mp3(tmp_path, "vbr.mp3", "-c:a", "libmp3lame", "-q:a", "4")
    data = path.read_bytes()
    assert counts_frames(data)
    assert exact_frames(path, sf.info(str(path)).frames) == decoded(path)


def test_a_xing_tag_without_its_frame_count_is_not_trusted(tmp_path: Path) -> None:
    """A Xing header's fields are optional (its flags say which are there): without the frame count,
    libsndfile still guesses the length from the size."""
    path = mp3(tmp_path, "cbr.mp3", "-c:a", "libmp3lame", "-b:a", "128k")
    data = bytearray(path.read_bytes())
    at = data.index(b"Info")
    data[at + 7] &= 0xFE  # the frames flag
    path.write_bytes(bytes(data))
    assert not counts_frames(bytes(data))
    assert exact_frames(path, 10**9) == decoded(path)


def test_a_tag_name_met_in_the_audio_bits_proves_nothing(tmp_path: Path) -> None:
    """Searching the first 4 KiB for b"Xing" anywhere trusted libsndfile's guess for a file whose audio
    happened to hold those bytes: the paid-then-failed job again."""
    path = mp3(tmp_path, "noxing.mp3", "-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0")
    data = bytearray(path.read_bytes())
    data[300:308] = b"Xing\x00\x00\x00\x0f"  # inside the first frames' audio, not after the side information
    path.write_bytes(bytes(data))
    assert not counts_frames(bytes(data))
    said = sf.info(str(path)).frames
    assert said != decoded(path) and exact_frames(path, said) == decoded(path)


def test_decoded_lengths_are_remembered_for_a_bounded_number_of_files(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mpeg_length, "_KEPT", 2)
    monkeypatch.setattr(mpeg_length, "_counted", type(mpeg_length._counted)())
    path = mp3(tmp_path, "noxing.mp3", "-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0")
    copies = []
    for n in range(4):
        copy = tmp_path / f"copy{n}.mp3"
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
        exact_frames(copy, 0)
    assert len(mpeg_length._counted) == 2 and [key[0] for key in mpeg_length._counted] == [str(c) for c in copies[2:]]
