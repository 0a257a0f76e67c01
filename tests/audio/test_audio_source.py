"""Probing sources, choosing the part, and making the upload file."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio import bwf
from bridge.audio.source import (
    check_finite,
    ends_early,
    frame_range,
    is_upload_copy,
    make_upload_file,
    probe_source,
    read_block,
    source_sha256,
    upload_plan,
)
from bridge.common.errors import SourceError
from tests.audio_fixtures import noise, tone, write_audio


def _stereo(seconds: float = 1.0, rate: int = 48_000) -> np.ndarray:
    return noise(rate, seconds, channels=2, amplitude=0.5)


def test_probe_describes_a_bwf_wav(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "Take 1.wav", _stereo(0.5), 48_000, "PCM_24")
    bwf.append_chunks(path, bwf.with_time_reference(b"take", 4242), b"<BWFXML/>")
    info = probe_source(path)
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
        "WAV", "PCM_24", 48_000, 2, 24_000,
    )  # fmt: skip
    assert info.bext is not None and bwf.time_reference(info.bext) == 4242
    assert info.ixml is not None and info.ixml.startswith(b"<BWFXML/>")
    assert not info.lossy and info.seconds == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("fmt", "subtype", "lossy"),
    [("FLAC", "PCM_16", False), ("AIFF", "FLOAT", False), ("MP3", None, True), ("OGG", "VORBIS", True)],
)
def test_probe_formats(tmp_path: Path, fmt: str, subtype: str | None, lossy: bool) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(str(path), _stereo(0.3, 44_100), 44_100, format=fmt, subtype=subtype)
    info = probe_source(path)
    assert info.format == fmt and info.lossy is lossy and info.channels == 2 and info.frames > 0
    assert info.bext is None and info.ixml is None


def _assert_refused(path: Path, words: str) -> str:
    with pytest.raises(SourceError) as caught:
        probe_source(path)
    text = str(caught.value)
    assert words in text, text
    assert caught.value.hint  # always says what to do
    return text


def test_probe_refuses_with_clear_words(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "missing.wav", "was not found")
    _assert_refused(tmp_path, "is a folder")
    text = tmp_path / "notes.wav"
    text.write_text("these are not the samples you are looking for")
    _assert_refused(text, "not an audio file we can read")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2)), 48_000)
    _assert_refused(empty, "contains no audio")
    nothing = tmp_path / "Bounce.wav"  # an export that wrote nothing (yet): said as such, not as "not audio"
    nothing.touch()
    assert "still exporting" in _assert_refused(nothing, "“Bounce.wav” is empty (0 bytes)")
    slow = write_audio(tmp_path / "slow.wav", tone(4_000, 0.5, 100), 4_000, "PCM_16")
    _assert_refused(slow, "8 kHz to 384 kHz")
    voc = tmp_path / "old.voc"
    sf.write(str(voc), tone(8_000, 0.2, 100), 8_000, format="VOC", subtype="PCM_16")
    _assert_refused(voc, "does not handle")


def test_probe_refuses_a_truncated_wav(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "copying.wav", _stereo(2.0), 48_000, "PCM_24")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)  # a copy caught halfway
    assert sf.info(str(path)).frames > 0  # libsndfile alone would happily read half the song
    message = _assert_refused(path, "looks incomplete")
    assert "still be copying" in message


def test_probe_refuses_a_truncated_rf64_and_aiff(tmp_path: Path) -> None:
    for name, fmt in (("big.wav", "RF64"), ("song.aiff", "AIFF")):
        path = tmp_path / name
        sf.write(str(path), _stereo(1.0), 48_000, format=fmt, subtype="PCM_24")
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 3000)
        _assert_refused(path, "looks incomplete")


def test_probe_refuses_a_flac_cut_short_and_one_that_does_not_say_its_length(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "copying.flac", _stereo(3.0), 48_000, "PCM_24")
    assert not ends_early(path) and probe_source(path).frames == 144_000
    whole = path.read_bytes()
    for kept in (len(whole) // 3, len(whole) - 200):
        path.write_bytes(whole[:kept])  # a copy caught before its end: the header counts every frame
        assert sf.info(str(path)).frames == 144_000 and ends_early(path)
        assert "still be copying" in _assert_refused(path, "looks incomplete: it ends before the 3.0 s")
    streamed = tmp_path / "streamed.flac"
    info_block = whole.index(b"fLaC") + 8  # STREAMINFO: total samples are the low 36 bits at bytes 13..17
    patched = bytearray(whole)
    patched[info_block + 13] &= 0xF0
    patched[info_block + 14 : info_block + 18] = b"\0\0\0\0"
    streamed.write_bytes(bytes(patched))
    _assert_refused(streamed, "does not say how long it is")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_a_whole_mp3_without_a_xing_frame_is_not_taken_for_cut_short(tmp_path: Path) -> None:
    """Its length is a guess from the file size that can run past the real end: only FLAC is judged."""
    wav = write_audio(tmp_path / "a.wav", _stereo(7.3), 44_100, "PCM_16")
    mp3 = tmp_path / "a.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-b:a", "128k", "-write_xing", "0", str(mp3)],
                   check=True)
    assert not ends_early(mp3) and probe_source(mp3).frames > 0


def test_probe_accepts_streaming_placeholder_sizes(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "stream.wav", _stereo(0.2), 48_000, "PCM_16")
    data = bwf.inspect_container(path).chunk("data")
    assert data is not None
    with open(path, "r+b") as f:  # how some streaming writers leave the header
        f.seek(4)
        f.write(struct.pack("<I", 0xFFFFFFFF))
        f.seek(data.header_offset + 4)
        f.write(struct.pack("<I", 0xFFFFFFFF))
    assert probe_source(path).frames == 9600


def test_frame_range(tmp_path: Path) -> None:
    info = probe_source(write_audio(tmp_path / "x.wav", tone(44_100, 2.0, 440), 44_100))
    assert frame_range(info, None, None) == (0, 88_200)
    assert frame_range(info, 0.5, None) == (22_050, 66_150)
    assert frame_range(info, 0.5, 1.0) == (22_050, 44_100)
    assert frame_range(info, 1.5, 10.0) == (66_150, 22_050)  # clamped to the end
    with pytest.raises(SourceError, match="past the end"):
        frame_range(info, 2.0, None)
    with pytest.raises(SourceError, match="empty"):
        frame_range(info, 0.0, 1e-6)
    with pytest.raises(SourceError, match="not a number"):
        frame_range(info, float("nan"), None)


@pytest.mark.parametrize(
    ("fmt", "subtype", "ctype"), [("WAV", "PCM_24", "audio/wav"), ("FLAC", "PCM_16", "audio/flac")]
)
def test_whole_wav_or_flac_is_uploaded_as_is(tmp_path: Path, fmt: str, subtype: str, ctype: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(str(path), _stereo(0.2), 48_000, format=fmt, subtype=subtype)
    info = probe_source(path)
    work = tmp_path / "work"
    assert make_upload_file(info, 0, info.frames, work) == (path, ctype)
    assert not work.exists()  # nothing written


def test_whole_mp3_is_uploaded_as_is(tmp_path: Path) -> None:
    path = tmp_path / "x.mp3"
    sf.write(str(path), _stereo(0.5), 48_000, format="MP3")
    info = probe_source(path)
    assert make_upload_file(info, 0, info.frames, tmp_path / "work") == (path, "audio/mpeg")


def _mean_24(data: np.ndarray) -> np.ndarray:
    """The channels' mean as a 24-bit writer rounds it (half to even), in 24-bit steps."""
    return np.rint(data.mean(axis=1) * 2**23).astype(np.int64)


def _int24(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="int32")[0].astype(np.int64) >> 8


def test_part_of_a_24_bit_wav_becomes_the_exact_mono_mix(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "Song (final).wav", _stereo(3.0), 48_000, "PCM_24")
    digest = source_sha256(path)
    info = probe_source(path)
    upload, ctype = make_upload_file(info, 48_000, 70_001, tmp_path / "work")
    assert ctype == "audio/flac" and upload == tmp_path / "work" / "Song _final_.upload.flac"
    described = sf.info(str(upload))
    assert (described.subtype, described.channels, described.samplerate) == ("PCM_24", 1, 48_000)
    whole, _ = sf.read(str(path), dtype="float64")
    assert np.array_equal(_int24(upload), _mean_24(whole[48_000:118_001]))  # exactly the mean, that part
    assert source_sha256(path) == digest  # the source was not touched
    assert [p.name for p in (tmp_path / "work").iterdir()] == [upload.name]  # no partial file left


def test_a_float_source_above_full_scale_goes_up_as_mono_float_wav(tmp_path: Path) -> None:
    floaty = write_audio(tmp_path / "f.wav", _stereo(1.0) * 3.0, 48_000, "FLOAT")  # above full scale
    info = probe_source(floaty)
    upload, ctype = make_upload_file(info, 100, 1_000, tmp_path / "w1")
    assert ctype == "audio/wav" and sf.info(str(upload)).subtype == "FLOAT"
    data = sf.read(str(floaty))[0][100:1_100]
    assert np.array_equal(sf.read(str(upload))[0], data.mean(axis=1).astype(np.float32))  # not clipped
    quiet = write_audio(tmp_path / "q.wav", _stereo(1.0) * 0.5, 48_000, "FLOAT")
    upload, ctype = make_upload_file(probe_source(quiet), 0, 1_000, tmp_path / "w2")
    assert ctype == "audio/flac" and sf.info(str(upload)).subtype == "PCM_24"


def test_a_ten_channel_source_goes_up_as_its_mono_mix(tmp_path: Path) -> None:
    ten = write_audio(tmp_path / "ten.wav", noise(48_000, 0.1, channels=10), 48_000, "PCM_16")
    upload, ctype = make_upload_file(probe_source(ten), 0, 4_800, tmp_path / "w2", shrink=True)
    assert ctype == "audio/flac" and sf.info(str(upload)).channels == 1
    assert np.array_equal(_int24(upload), _mean_24(sf.read(str(ten))[0]))


def test_the_upload_copy_of_a_file_in_the_work_folder_leaves_that_file_intact(tmp_path: Path) -> None:
    """A stem set's later step uploads a copy of the 64-bit intermediate that sits in the same folder."""
    work = tmp_path / "work"
    work.mkdir()
    exact = _stereo(0.5) + 1e-9  # values float32 cannot hold
    intermediate = work / "step0.residual.wav"
    sf.write(str(intermediate), exact, 48_000, subtype="DOUBLE")
    digest = source_sha256(intermediate)
    upload, ctype = make_upload_file(probe_source(intermediate), 0, len(exact), work)
    assert ctype == "audio/flac" and upload.name == "step0.residual.upload.flac"
    assert np.max(np.abs(_int24(upload) - exact.mean(axis=1) * 2**23)) <= 0.5 + 1e-6
    assert source_sha256(intermediate) == digest  # still the 64-bit original
    assert np.array_equal(sf.read(str(intermediate), dtype="float64")[0], exact)
    assert sorted(p.name for p in work.iterdir()) == ["step0.residual.upload.flac", "step0.residual.wav"]


def test_upload_copies_are_recognised_by_name() -> None:
    assert is_upload_copy("Song (final).upload.flac") and is_upload_copy(".Song.upload.wav.partial")
    assert not any(map(is_upload_copy, ["Song.wav", "step0.residual.wav", "upload.wav", "Song.upload.mp3"]))


def test_whole_aiff_and_part_of_an_mp3_become_mono_flac(tmp_path: Path) -> None:
    aiff = tmp_path / "x.aiff"
    sf.write(str(aiff), _stereo(0.5), 48_000, format="AIFF", subtype="PCM_16")
    upload, ctype = make_upload_file(probe_source(aiff), 0, 24_000, tmp_path / "w1")
    assert ctype == "audio/flac" and sf.info(str(upload)).subtype == "PCM_24"  # a mean needs the 17th bit
    assert np.array_equal(_int24(upload), _mean_24(sf.read(str(aiff))[0]))
    mp3 = tmp_path / "x.mp3"
    sf.write(str(mp3), _stereo(2.0), 48_000, format="MP3")
    info = probe_source(mp3)
    upload, ctype = make_upload_file(info, 10_000, 50_000, tmp_path / "w2")
    assert ctype == "audio/flac" and sf.info(str(upload)).frames == 50_000
    with sf.SoundFile(str(mp3)) as f:
        decoded = read_block(f, info.frames, "float64")
    got = sf.read(str(upload))[0]
    expected = np.clip(decoded[10_000:60_000].mean(axis=1), -1.0, 1.0 - 2**-23)  # overshoots clipped, not wrapped
    assert np.max(np.abs(got - expected)) < 2e-7  # 24-bit FLAC of our own decode's mix


def test_mp3_block_reads_equal_one_whole_read(tmp_path: Path) -> None:
    """Guards `read_block`: soundfile's own read() re-seeks MP3 after every block and garbles it."""
    path = tmp_path / "x.mp3"
    sf.write(str(path), _stereo(4.0), 48_000, format="MP3")
    whole = sf.read(str(path), dtype="float32")[0]
    with sf.SoundFile(str(path)) as f:
        blocks = [read_block(f, 10_000, "float32") for _ in range(len(whole) // 10_000 + 2)]
    assert np.array_equal(np.concatenate(blocks), whole)


def test_source_sha256_streams_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    data = np.random.default_rng(1).bytes(3 * 2**20 + 17)
    path.write_bytes(data)
    assert source_sha256(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("fmt", "subtype", "channels", "rate", "shrunk"), [
    ("WAV", "PCM_16", 2, 48_000, ("FLAC", "PCM_24", "audio/flac")),
    ("WAV", "PCM_24", 2, 44_100, ("FLAC", "PCM_24", "audio/flac")),
    ("WAV", "FLOAT", 2, 48_000, ("FLAC", "PCM_24", "audio/flac")),  # within full scale: FLAC holds it
    ("WAV", "PCM_32", 6, 96_000, ("FLAC", "PCM_24", "audio/flac")),
    ("WAV", "PCM_16", 1, 48_000, ("FLAC", "PCM_16", "audio/flac")),  # its own mix: 16 bits hold it
    ("FLAC", "PCM_24", 2, 48_000, ("FLAC", "PCM_24", "audio/flac")),
    ("FLAC", "PCM_24", 1, 48_000, (None, "", "audio/flac")),  # the mono 48 kHz FLAC already
    ("MP3", "MPEG_LAYER_III", 2, 44_100, (None, "", "audio/mpeg")),  # smaller than any lossless copy
])
def test_shrinking_uploads_sends_the_mono_48k_mix(tmp_path: Path, fmt: str, subtype: str, channels: int,
                                                  rate: int, shrunk: tuple[str | None, str, str]) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(str(path), noise(rate, 0.2, channels=channels), rate, format=fmt, subtype=subtype)
    info = probe_source(path)
    assert upload_plan(info, 0, info.frames, shrink=True) == shrunk
    assert upload_plan(info, 0, info.frames)[0] is None  # not asked to: the file as is
    sixteen = upload_plan(info, 0, info.frames, shrink=True, bits=16)
    assert sixteen in ((None, "", "audio/mpeg"), ("FLAC", "PCM_16", "audio/flac"))


@pytest.mark.parametrize("rate", [44_100, 88_200, 96_000])
def test_a_shrunk_upload_is_the_mix_resampled_to_48k(tmp_path: Path, rate: int) -> None:
    import soxr

    path = tmp_path / "x.wav"
    data = noise(rate, 0.5, channels=2, amplitude=0.3)
    sf.write(str(path), data, rate, subtype="PCM_24")
    info = probe_source(path)
    upload, ctype = make_upload_file(info, 0, info.frames, tmp_path / "work", shrink=True)
    assert ctype == "audio/flac" and upload.suffix == ".flac"
    got = sf.read(str(upload), dtype="float64")[0]
    expected = soxr.resample(sf.read(str(path))[0].mean(axis=1), rate, 48_000, quality="HQ")
    assert len(got) == len(expected) == round(info.frames * 48_000 / rate)
    assert np.max(np.abs(got - expected)) < 1e-5  # streamed in blocks, float32, then 24-bit
    sixteen, _ = make_upload_file(info, 0, info.frames, tmp_path / "w16", shrink=True, bits=16)
    assert sf.info(str(sixteen)).subtype == "PCM_16"
    assert np.max(np.abs(sf.read(str(sixteen), dtype="float64")[0] - expected)) < 2**-15


@pytest.mark.parametrize("rate", [8_000, 96_000, 384_000])
def test_a_part_of_a_few_samples_still_makes_an_audio_file(tmp_path: Path, rate: int) -> None:
    """One sample at 384 kHz is an eighth of a 48 kHz one: soxr gives none, and an empty FLAC is no file."""
    path = write_audio(tmp_path / "x.wav", noise(rate, 0.01, channels=2), rate, "PCM_24")
    upload, _ = make_upload_file(probe_source(path), 0, 1, tmp_path / "work")
    assert sf.info(str(upload)).frames >= 1


@pytest.mark.parametrize("huge", [1e20, 3e38, -2e4])
def test_a_float_sample_of_absurd_size_is_refused_before_upload(tmp_path: Path, huge: float) -> None:
    """Two samples of 1e20 in a stereo float WAV once overflowed the projection's float32 power sums: both
    stems 100 % NaN, exit 0."""
    music = noise(44_100, 2.0, channels=2, amplitude=0.3)
    music[100:102, 0] = huge  # 2.3 ms in
    path = write_audio(tmp_path / "float mix.wav", music, 44_100, "FLOAT")
    with pytest.raises(SourceError, match=r"“float mix\.wav” holds an invalid sample \(a value of .*far beyond "
                                          r"any real audio.*\) at 0\.002 s \(sample 100\)"):
        check_finite(probe_source(path), 0, 88_200)
    check_finite(probe_source(path), 200, 10_000)  # a part without it is fine


def test_a_float_source_far_above_full_scale_is_still_taken(tmp_path: Path) -> None:
    music = noise(48_000, 0.5, channels=2, amplitude=0.3)
    music[1_000, 1] = 9_000.0  # +79 dBFS: absurdly loud, yet within what the stems can carry
    path = write_audio(tmp_path / "hot.wav", music, 48_000, "FLOAT")
    check_finite(probe_source(path), 0, 24_000)


@pytest.mark.parametrize(("rate", "frames"), [(176_400, 1), (192_000, 1), (384_000, 3)])
def test_a_whole_file_shorter_than_one_48k_sample_is_sent_as_a_padded_copy(
    tmp_path: Path, rate: int, frames: int
) -> None:
    """Sent as is over loopback, it resampled to nothing at the service, whose empty result failed every time
    with "run the separation again (charged again)"."""
    path = write_audio(tmp_path / "blip.wav", noise(rate, 0.001, channels=2)[:frames], rate, "PCM_24")
    info = probe_source(path)
    assert upload_plan(info, 0, frames)[0] is not None  # never the user's file as is
    upload, ctype = make_upload_file(info, 0, frames, tmp_path / "work")
    assert upload != path and ctype == "audio/flac"
    assert sf.info(str(upload)).samplerate == 48_000 and sf.info(str(upload)).frames >= 1
    four = write_audio(tmp_path / "four.wav", noise(192_000, 0.001, channels=2)[:4], 192_000, "PCM_24")
    assert upload_plan(probe_source(four), 0, 4)[0] is None  # one whole 48 kHz sample: as is, as before


@pytest.mark.parametrize("fmt", ["WAV", "RF64", "W64", "AIFF"])
def test_the_audio_hash_ignores_metadata_but_not_audio(tmp_path: Path, fmt: str) -> None:
    """A re-export that changes only a BWF date or a tag is the same audio: dedupe went by the file's bytes
    and paid for it again. A change of a single sample is other audio."""
    from bridge.audio import bwf
    from bridge.audio.source import file_sha256, same_audio

    audio = _stereo(1.0)
    first, second, other = (tmp_path / f"{name}.{fmt.lower()}" for name in ("a", "b", "c"))
    for path in (first, second):
        sf.write(str(path), audio, 48_000, format=fmt, subtype="PCM_24")
    if fmt != "AIFF":  # the same place on the timeline, a new description and an iXML chunk
        bwf.append_chunks(first, bwf.with_time_reference(b"take 1", 48_000), None)
        bwf.append_chunks(second, bwf.with_time_reference(b"re-exported 2026-12-07", 48_000), b"<BWFXML/>")
    else:  # an AIFF text chunk after the sound
        with open(second, "r+b") as f:
            f.seek(0, 2)
            f.write(b"NAME\x00\x00\x00\x04take")
            size = f.tell() - 8
            f.seek(4)
            f.write(size.to_bytes(4, "big"))
    assert first.read_bytes() != second.read_bytes()
    assert source_sha256(first) == source_sha256(second)
    changed = audio.copy()
    changed[1000, 0] += 2**-20
    sf.write(str(other), changed, 48_000, format=fmt, subtype="PCM_24")
    assert source_sha256(other) != source_sha256(first)
    if fmt != "AIFF":  # moved on the timeline: reused stems would carry the old position, so other audio
        sf.write(str(other), audio, 48_000, format=fmt, subtype="PCM_24")
        bwf.append_chunks(other, bwf.with_time_reference(b"take 1", 96_000), None)
        assert source_sha256(other) != source_sha256(first)
    assert same_audio(first, file_sha256(first))  # a hash journalled by 0.2.0 (the whole file) still matches
