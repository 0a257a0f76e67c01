"""The stems' own PCM WAV writer writes exactly the bytes libsndfile writes; the source reader reads exactly the
values libsndfile reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from bridge.audio import bwf
from bridge.audio.pcm_wav import PcmWavReader, PcmWavWriter, handles
from bridge.audio.source import probe_source, read_block
from bridge.audio.stem_output import Quantizer, StemFiles, plan_output
from tests.audio_fixtures import noise, write_audio


def _blocks(frames: int, channels: int, subtype: str) -> list[NDArray[np.generic]]:
    """Quantised blocks of odd sizes, full scale both ways included."""
    values = np.random.default_rng(frames + channels).uniform(-1.2, 1.2, (frames, channels))
    if frames >= 2:
        values[0], values[1] = 1.0, -1.0
    quantise = Quantizer(subtype)
    sizes = [1, 2, 3, 5, 4096, 65_536]
    blocks: list[NDArray[np.generic]] = [quantise(values[:0])[0]]  # an empty block first, as conform writes
    at = 0
    while at < frames:
        size = sizes[len(blocks) % len(sizes)]
        blocks.append(quantise(values[at : at + size])[0])
        at += size
    return blocks


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("channels", [1, 2, 3, 6])
@pytest.mark.parametrize("frames", [0, 1, 3, 7, 70_001])
def test_the_same_bytes_as_libsndfile(tmp_path: Path, subtype: str, channels: int, frames: int) -> None:
    blocks = _blocks(frames, channels, subtype)
    theirs, ours = tmp_path / "libsndfile.wav", tmp_path / "ours.wav"
    with sf.SoundFile(str(theirs), "w", 44_100, channels, subtype, format="WAV") as out:
        for block in blocks:
            out.write(block)
    writer = PcmWavWriter(os.open(ours, os.O_WRONLY | os.O_CREAT | os.O_EXCL), 44_100, channels, subtype)
    for block in blocks:
        writer.write(block)
    writer.close()
    assert ours.read_bytes() == theirs.read_bytes()
    assert sf.info(str(ours)).frames == frames


def test_stems_of_wav_pcm_sources_use_it_and_others_libsndfile(tmp_path: Path) -> None:
    assert handles("WAV", "PCM_24") and handles("WAV", "PCM_16")
    assert not any(handles(f, s) for f, s in [("WAV", "FLOAT"), ("WAVEX", "PCM_24"), ("RF64", "PCM_24"),
                                              ("AIFF", "PCM_16"), ("WAV", "PCM_32"), ("WAV", "PCM_U8")])
    info = probe_source(write_audio(tmp_path / "s.wav", noise(48_000, 0.1, channels=2), 48_000, "PCM_24"))
    stems = StemFiles((tmp_path / "t.wav", tmp_path / "r.wav"), plan_output(info, info.frames), info)
    assert all(isinstance(f, PcmWavWriter) for f in stems.files)
    stems.discard()
    assert not list(tmp_path.glob("[tr].wav"))


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32"])
@pytest.mark.parametrize(("fmt", "channels"), [("WAV", 1), ("WAV", 2), ("WAVEX", 6), ("RF64", 2), ("W64", 3)])
def test_the_reader_gives_libsndfiles_values(tmp_path: Path, fmt: str, subtype: str, channels: int) -> None:
    frames = 10_007
    values = np.random.default_rng(channels).uniform(-1.0, 1.0, (frames, channels))
    values[0], values[1] = 1.0, -1.0  # full scale both ways (+1.0 is clipped to the largest step)
    path = tmp_path / f"s.{'w64' if fmt == 'W64' else 'wav'}"
    sf.write(str(path), values, 48_000, subtype, format=fmt)
    if fmt != "W64":  # a chunk before the audio moves it
        bwf.append_chunks(path, bwf.with_time_reference(bytes(602), 48_000), b"<BWFXML/>")
    reader = PcmWavReader.open(path, fmt, subtype, channels)
    assert reader is not None
    with sf.SoundFile(str(path)) as f:
        for start, count in [(0, 1), (0, frames), (4_999, 3), (frames - 5, 100), (frames, 10), (7, 0)]:
            f.seek(start)
            theirs = read_block(f, count, "float64")
            ours = reader.read(start, count)
            assert ours.dtype == np.float64 and ours.shape == theirs.shape
            assert np.array_equal(ours, theirs)
    reader.close()


def test_the_reader_leaves_other_files_to_libsndfile(tmp_path: Path) -> None:
    audio = noise(8_000, 0.1, channels=2)
    for fmt, subtype, name in [("WAV", "FLOAT", "f.wav"), ("WAV", "PCM_U8", "u.wav"), ("AIFF", "PCM_24", "a.aiff"),
                               ("FLAC", "PCM_24", "f.flac")]:
        path = write_audio(tmp_path / name, audio, 8_000, subtype, fmt)
        assert PcmWavReader.open(path, fmt, subtype, 2) is None, name
    big_endian = tmp_path / "rifx.wav"
    sf.write(str(big_endian), audio, 8_000, "PCM_24", format="WAV", endian="BIG")
    assert sf.info(str(big_endian)).format == "WAV"
    assert PcmWavReader.open(big_endian, "WAV", "PCM_24", 2) is None
