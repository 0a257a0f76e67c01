"""The upload FLAC encoded while it is sent: the same samples as the whole-file encode, for every reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio.source import make_upload_file, probe_source, service_mix
from bridge.audio.upload_stream import encode_upload, flac_size_bound, service_frames
from bridge.local_service.separator import SeparationSpec, separate
from tests.audio_fixtures import noise, write_audio


def streamed(path: Path, start: int, frames: int, subtype: str, out: Path) -> tuple[Path, list[bytes]]:
    chunks: list[bytes] = []
    encode_upload(probe_source(path), start, frames, subtype, chunks.append)
    out.write_bytes(b"".join(chunks))
    return out, chunks


def ffmpeg_samples(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s32le", "-"], capture_output=True,
                         check=True).stdout
    return np.frombuffer(raw, np.int32)


@pytest.mark.parametrize(("rate", "channels", "subtype", "bits"), [
    (44_100, 2, "PCM_24", "PCM_24"), (48_000, 2, "PCM_24", "PCM_24"), (96_000, 6, "FLOAT", "PCM_24"),
    (44_100, 2, "PCM_16", "PCM_16"),
])
def test_the_streamed_flac_holds_exactly_the_whole_file_encodes_samples(tmp_path: Path, rate: int, channels: int,
                                                                         subtype: str, bits: str) -> None:
    source = write_audio(tmp_path / "mix.wav", noise(rate, 7.3, channels, amplitude=0.3), rate, subtype)
    info = probe_source(source)
    start, frames = 1234, info.frames - 5000  # a part: what a span or length asks for
    whole, _ = make_upload_file(info, start, frames, tmp_path / "work", shrink=True,
                                bits=16 if bits == "PCM_16" else 24)
    stream, chunks = streamed(source, start, frames, bits, tmp_path / "streamed.flac")
    assert len(chunks) > 3  # passed on block by block, not at the end
    expected, _ = sf.read(whole, dtype="int32")
    # soundfile (libsndfile): the length the header announces, and the very samples
    assert sf.info(str(stream)).frames == len(expected) == service_frames(rate, frames)
    got, got_rate = sf.read(stream, dtype="int32")
    assert got_rate == 48_000 and np.array_equal(got, expected)
    # the bytes differ only where STREAMINFO is filled in at close: frame sizes and MD5, left "unknown"
    a, b = whole.read_bytes(), stream.read_bytes()
    assert len(a) == len(b)
    assert {i for i in range(len(a)) if a[i] != b[i]} <= set(range(12, 18)) | set(range(26, 42))
    assert b[26:42] == bytes(16)
    # the stand-in (what the service hears) separates the same audio into the same results
    results = []
    for name, upload in (("whole", whole), ("stream", stream)):
        out = separate(upload, SeparationSpec(prompt="piano"), tmp_path / f"{name}.t.wav", tmp_path / f"{name}.r.wav")
        assert out.frames == len(expected)
        results.append([sf.read(out.target)[0], sf.read(out.residual)[0]])
    assert all(np.array_equal(x, y) for x, y in zip(*results, strict=True))
    if shutil.which("ffmpeg"):
        ff_whole, ff_stream = ffmpeg_samples(whole), ffmpeg_samples(stream)
        assert len(ff_stream) == len(expected) and np.array_equal(ff_whole, ff_stream)


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 47_999, 88_200, 96_000, 192_000, 384_000])
def test_the_announced_length_is_what_the_mix_yields(rate: int) -> None:
    """The header's total samples is written before any audio is encoded: it must be soxr's exact count."""
    rng = np.random.default_rng(rate)
    for frames in [1, 2, 7, 65_535, 65_536, 65_537, *rng.integers(1, 300_000, 4)]:
        import soxr

        resampler = soxr.ResampleStream(rate, 48_000, 1, dtype="float32", quality="HQ")
        count, left = 0, int(frames)
        while left > 0:
            n = min(65_536, left)
            left -= n
            count += len(resampler.resample_chunk(np.zeros(n, np.float32), last=left == 0))
        assert service_frames(rate, int(frames)) == max(count, 1), (rate, frames)


def test_a_part_too_short_to_resample_still_streams_one_sample(tmp_path: Path) -> None:
    source = write_audio(tmp_path / "hi.wav", noise(384_000, 0.01, 2), 384_000)
    stream, _ = streamed(source, 0, 1, "PCM_24", tmp_path / "one.flac")
    assert sf.info(str(stream)).frames == 1 and len(sf.read(stream)[0]) == 1
    assert list(service_mix(probe_source(source), 0, 1)) == []  # soxr gives none: hence the one sample


def test_the_size_bound_holds_for_white_noise_at_full_scale(tmp_path: Path) -> None:
    """Incompressible audio: the single-POST choice relies on the bound never being beaten."""
    rng = np.random.default_rng(5)
    source = write_audio(tmp_path / "loud.wav", rng.uniform(-1, 1, (48_000 * 3, 1)), 48_000, "PCM_24")
    stream, _ = streamed(source, 0, 48_000 * 3, "PCM_24", tmp_path / "loud.flac")
    assert stream.stat().st_size <= flac_size_bound(48_000 * 3, "PCM_24")
    assert stream.stat().st_size > 0.9 * 48_000 * 3 * 3  # it really was incompressible


def test_an_error_of_the_receiver_stops_the_encoder(tmp_path: Path) -> None:
    source = write_audio(tmp_path / "mix.wav", noise(44_100, 5.0, 2), 44_100)
    calls: list[int] = []

    def refuse(data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 2:
            raise RuntimeError("the upload failed")

    with pytest.raises(RuntimeError, match="upload failed"):
        encode_upload(probe_source(source), 0, probe_source(source).frames, "PCM_24", refuse)
    assert len(calls) == 2
