"""Conform on real files: alignment to the sample, exact length, format kept, null against the source."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import wavinfo

from bridge.audio import bwf
from bridge.audio.conform import ConformReport, ConformSpec, _StemValues, _Tally, conform
from bridge.audio.source import SourceInfo, probe_source, read_block
from bridge.common.errors import BridgeError, JobFailed, OutputError, SourceError
from bridge.local_service.separator import SeparationSpec, separate
from tests.audio_fixtures import (
    click_train,
    clicky_pink_noise,
    fake_service_result,
    lag_at,
    level_dbfs,
    low_noise,
    noise,
    peak_positions,
    tone,
    write_audio,
)

ROOT = Path(__file__).resolve().parents[2]


def _bed(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    """What the service should leave in the residual: a quiet tone plus low noise."""
    mono = tone(rate, seconds, 150, 0.1) + 0.5 * low_noise(rate, seconds)
    return mono if channels == 1 else np.stack([mono * (0.6 + 0.2 * c) for c in range(channels)], axis=1)


def _run(
    tmp_path: Path, source: Path, results: tuple[Path, Path], **spec_args: object
) -> tuple[ConformReport, Path, Path, SourceInfo]:
    info = probe_source(source)
    start = int(spec_args.pop("start_frame", 0))  # type: ignore[call-overload]
    frames = int(spec_args.pop("frames", info.frames - start))  # type: ignore[call-overload]
    out_t, out_r = tmp_path / ".sam-partial-target", tmp_path / ".sam-partial-residual"  # no extension
    report = conform(ConformSpec(info, start, frames, **spec_args), *results, out_t, out_r)  # type: ignore[arg-type]
    return report, out_t, out_r, info


def _ints(path: Path) -> np.ndarray:
    return np.asarray(sf.read(str(path), dtype="int32", always_2d=True)[0], dtype=np.int64)


def _floats(path: Path) -> np.ndarray:
    return np.asarray(sf.read(str(path), dtype="float64", always_2d=True)[0])


def _assert_pcm_nulls(source: Path, target: Path, residual: Path, start: int = 0) -> None:
    t, r = _ints(target), _ints(residual)
    s = _ints(source)[start : start + len(t)]
    assert t.shape == s.shape
    assert np.array_equal(t + r, s)  # bit-exact: target + residual == source


# -- alignment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [44_100, 48_000, 96_000])
@pytest.mark.parametrize(
    ("result_format", "shift"),
    [("WAV", 0), ("MP3", 1105)],  # 1105: LAME's delay at 48 kHz when a decoder does not strip it
)
def test_clicks_land_on_the_sample(tmp_path: Path, rate: int, result_format: str, shift: int) -> None:
    clicks, positions = click_train(rate, 4.0)
    bed = _bed(rate, 4.0)
    source = write_audio(tmp_path / "src.wav", clicks + bed, rate, "PCM_24")
    results = fake_service_result(clicks, bed, rate, tmp_path, fmt=result_format, shift=shift)
    report, out_t, out_r, info = _run(tmp_path, source, results)

    assert abs(report.offset_samples - shift * rate / 48_000) <= 1
    target = _floats(out_t)[:, 0]
    assert len(target) == info.frames
    assert np.max(np.abs(peak_positions(target, positions) - positions)) <= 1
    assert (report.out_format, report.out_subtype, report.format_reason) == ("WAV", "PCM_24", None)
    assert sf.info(str(out_t)).subtype == "PCM_24" and sf.info(str(out_t)).samplerate == rate
    _assert_pcm_nulls(source, out_t, out_r)
    assert report.null_test_dbfs == -math.inf and report.correlation > 0.9
    assert report.flags == () and report.projection.startswith("direct")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_mp3_result_without_gapless_info_keeps_its_real_encoder_delay(tmp_path: Path) -> None:
    """An encoder that writes no LAME/Xing tag: the decoder cannot strip the delay, we measure it."""
    clicks, positions = click_train(48_000, 3.0, seed=8)
    bed = _bed(48_000, 3.0)
    source = write_audio(tmp_path / "src.wav", clicks + bed, 48_000, "PCM_24")
    wav_results = fake_service_result(clicks, bed, 48_000, tmp_path)
    mp3_results = []
    for path in wav_results:
        mp3 = path.with_suffix(".mp3")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(path), "-c:a", "libmp3lame", "-b:a", "192k",
             "-write_xing", "0", str(mp3)],
            check=True,
            timeout=60,
        )  # fmt: skip
        mp3_results.append(mp3)
    report, out_t, out_r, _ = _run(tmp_path, source, (mp3_results[0], mp3_results[1]))
    assert abs(report.offset_samples - 1105) <= 1  # LAME's 576 + the decoder's 529
    assert np.max(np.abs(peak_positions(_floats(out_t)[:, 0], positions) - positions)) <= 1
    _assert_pcm_nulls(source, out_t, out_r)


@pytest.mark.parametrize(("shift", "trim_end", "pad_end"), [(300, 0, 0), (-300, 0, 0), (0, 960, 0), (40, 0, 2_000)])
def test_shifted_short_and_long_results_are_corrected(tmp_path: Path, shift: int, trim_end: int, pad_end: int) -> None:
    clicks, positions = click_train(48_000, 3.0, seed=4)
    bed = _bed(48_000, 3.0)
    source = write_audio(tmp_path / "src.wav", clicks + bed, 48_000, "PCM_16")
    results = fake_service_result(clicks, bed, 48_000, tmp_path, shift=shift, trim_end=trim_end, pad_end=pad_end)
    report, out_t, out_r, info = _run(tmp_path, source, results)
    assert report.offset_samples == shift
    target = _floats(out_t)[:, 0]
    assert len(target) == info.frames == len(_floats(out_r))
    assert np.array_equal(peak_positions(target, positions), positions)
    if trim_end:  # the 20 ms the service did not return are silent in the target, kept in the residual
        assert np.all(target[-trim_end:] == 0)
    _assert_pcm_nulls(source, out_t, out_r)


def test_stereo_source_with_a_late_mp3_result(tmp_path: Path) -> None:
    rate = 44_100
    clicks, positions = click_train(rate, 4.0, seed=6)
    target_part = np.stack([clicks, 0.5 * clicks], axis=1)
    bed = np.stack([noise(rate, 4.0, seed=1, amplitude=0.05), noise(rate, 4.0, seed=2, amplitude=0.05)], axis=1)
    bed += _bed(rate, 4.0, channels=2)
    source = write_audio(tmp_path / "src.wav", target_part + bed, rate, "PCM_24")
    results = fake_service_result(target_part, bed, rate, tmp_path, fmt="MP3", shift=1105)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert abs(report.offset_samples - 1015) <= 1
    assert report.projection.startswith("mid-exact")
    target = _floats(out_t)
    # The projection worked where the clicks really are, so they come through (1015 samples off, the mid
    # would hold the service's clicks a frame away from the source's).
    at_clicks = np.abs(target[positions])
    assert np.all(at_clicks[:, 0] > 0.25 * 0.8) and np.all(at_clicks[:, 1] > 0.25 * 0.4)
    assert np.array_equal(peak_positions(target[:, 0], positions), positions)
    _assert_pcm_nulls(source, out_t, out_r)


def test_a_drifting_result_is_corrected_and_says_so(tmp_path: Path) -> None:
    rate, seconds = 16_000, 40.0
    music = low_noise(rate, seconds, seed=11) + tone(rate, seconds, 90, 0.05)
    half = music / 2
    source = write_audio(tmp_path / "src.wav", music, rate, "PCM_24")
    drifting = fake_service_result(half, half, rate, tmp_path, speed=1 + 60e-6, name="drift")  # ~38 samples
    report, out_t, out_r, _ = _run(tmp_path, source, drifting)
    assert 12 <= report.drift_samples <= 35  # found: the end window sits ~25 s after the start window
    assert report.flags == ("drift-corrected",)  # not "drift": nothing is left to see
    assert "corrected by reading the result +" in report.method and "left at the end: +0" in report.method
    target = _floats(out_t)[:, 0]
    for part in (slice(0, 5 * rate), slice(-5 * rate, None)):  # the start and the end line up alike
        error = target[part] - half[part]
        assert np.sqrt(np.mean(error**2)) < 0.02 * np.sqrt(np.mean(half[part] ** 2)), part
    _assert_pcm_nulls(source, out_t, out_r)
    steady = fake_service_result(half, half, rate, tmp_path, name="steady")
    (tmp_path / ".sam-partial-target").unlink()
    (tmp_path / ".sam-partial-residual").unlink()
    report, *_ = _run(tmp_path, source, steady)
    assert report.drift_samples == 0 and report.flags == ()


@pytest.mark.parametrize("channels", [1, 2])
def test_a_drifting_result_gives_stems_with_every_click_in_place(tmp_path: Path, channels: int) -> None:
    """A result 150 ppm fast. The rate fit converges over a few measuring passes (+44, −10, −2, 0 samples
    left here): it once stopped at −2, which left a mono target 2 samples off and said "drift". In stereo,
    a target whose mid was the result itself also carried whatever the fit leaves; the mid of a result
    read at a corrected rate now comes from the source, and every click stays where the source has it."""
    rate, seconds = 44_100, 40.0
    clicks, positions = click_train(rate, seconds, seed=5)
    bed = _bed(rate, seconds, channels)
    music = 0.7 * ((clicks if channels == 1 else np.stack([clicks, 0.6 * clicks], axis=1)) + bed)
    source = write_audio(tmp_path / "src.wav", music, rate, "PCM_24")
    mid_bed = 0.7 * (bed if channels == 1 else bed.mean(axis=1))
    mid = music if channels == 1 else music.mean(axis=1)
    results = fake_service_result(mid - mid_bed, mid_bed, rate, tmp_path, speed=1 + 150e-6)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert report.drift_samples > 100 and report.flags == ("drift-corrected",), report
    assert report.projection.startswith("direct" if channels == 1 else "source-phase")
    target = _floats(out_t)
    inner = positions[(positions > 40) & (positions < len(music) - 40)]
    for channel in range(channels):
        found = peak_positions(target[:, channel], inner, search=30)
        assert np.max(np.abs(found - inner)) <= 1, f"channel {channel}: {found - inner}"
    _assert_pcm_nulls(source, out_t, out_r)


def test_stereo_stems_keep_every_click_in_place_where_the_corrected_result_does_not(tmp_path: Path) -> None:
    """The stand-in's "hi-hat" answer on a clock 150 ppm fast: the fit converges (a sample or less left at
    the end window), yet the result read at that rate has clicks 2 samples late near the end. A target
    whose mid was that result put them there too; with the mid from the source every click is in place."""
    rate, seconds = 44_100, 40.0
    clicks, positions = click_train(rate, seconds, seed=5)
    music = np.stack([clicks + tone(rate, seconds, 110, 0.3), 0.6 * clicks + tone(rate, seconds, 220, 0.2)], axis=1)
    source = write_audio(tmp_path / "src.wav", music, rate, "PCM_24")
    results = tmp_path / "target.wav", tmp_path / "residual.wav"
    separate(source, SeparationSpec("hi-hat", drift_ppm=150.0), *results)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert report.drift_samples > 200 and report.flags == ("drift-corrected",), report
    target = _floats(out_t)
    inner = positions[(positions > 40) & (positions < len(music) - 40)]
    for channel in range(2):
        found = peak_positions(target[:, channel], inner, search=30)
        assert np.max(np.abs(found - inner)) <= 1, f"channel {channel}: {found - inner}"
    _assert_pcm_nulls(source, out_t, out_r)


def test_a_late_result_after_a_long_silent_opening_is_aligned(tmp_path: Path) -> None:
    """A dialogue track whose first minute is silent: the offset comes from where the signal starts."""
    rate, silent = 16_000, 64
    clicks, positions = click_train(rate, 8.0, seed=5)
    music = np.concatenate((np.zeros(rate * silent), clicks + _bed(rate, 8.0)))
    positions = positions + rate * silent
    source = write_audio(tmp_path / "src.wav", music, rate, "PCM_24")
    target_part = np.concatenate((np.zeros(rate * silent), clicks))
    results = fake_service_result(target_part, music - target_part, rate, tmp_path, shift=1105)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert abs(report.offset_samples - 1105 * rate / 48_000) <= 1
    assert report.flags == () and report.correlation > 0.9  # not "silent-source"
    assert np.max(np.abs(peak_positions(_floats(out_t)[:, 0], positions) - positions)) <= 1
    _assert_pcm_nulls(source, out_t, out_r)


def test_a_drift_on_a_short_file_is_not_made_worse(tmp_path: Path) -> None:
    """20 s: the start and end windows overlap, too close to measure a clock; the correction once read the
    result at the wrong rate (here -112 ppm for +100) and still said "drift-corrected"."""
    rate, seconds, ppm = 16_000, 20.0, 100.0
    music = clicky_pink_noise(rate, seconds)
    half = music / 2
    source = write_audio(tmp_path / "src.wav", music, rate, "PCM_24")
    results = fake_service_result(half, half, rate, tmp_path, speed=1 + ppm * 1e-6)
    report, out_t, out_r, info = _run(tmp_path, source, results)
    assert "drift-corrected" not in report.flags and "drift" in report.flags  # said, not hidden
    target = _floats(out_t)[:, 0]
    uncorrected = round(ppm * 1e-6 * info.frames)  # 32 samples by the end
    lags = [lag_at(target, half, at, rate) for at in (0, info.frames // 2, info.frames - rate)]
    expected = round(ppm * 1e-6 * (info.frames - rate))  # the result's own drift between those points
    assert lags == sorted(lags) and abs((lags[-1] - lags[0]) - expected) <= 2  # as it was: not "corrected"
    assert max(abs(lag) for lag in lags) <= uncorrected  # nowhere further off than not aligning at all
    _assert_pcm_nulls(source, out_t, out_r)


def test_an_unrelated_result_is_flagged_but_written(tmp_path: Path) -> None:
    rate = 48_000
    music = _bed(rate, 3.0) + click_train(rate, 3.0)[0]
    source = write_audio(tmp_path / "src.wav", music, rate, "PCM_24")
    unrelated = noise(rate, 3.0, seed=99, amplitude=0.1)
    results = fake_service_result(unrelated, unrelated * 0.5, rate, tmp_path)
    report, out_t, out_r, info = _run(tmp_path, source, results)
    assert report.flags == ("weak-correlation", "target-unlikely") and report.correlation < 0.2
    assert report.offset_samples == 0  # a lag measured on noise means nothing: the result stays put
    assert len(_floats(out_t)) == info.frames
    _assert_pcm_nulls(source, out_t, out_r)


def test_silent_source_does_not_crash(tmp_path: Path) -> None:
    silence = np.zeros((48_000, 2))
    source = write_audio(tmp_path / "silence.wav", silence, 48_000, "PCM_24")
    results = fake_service_result(silence, silence, 48_000, tmp_path)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert report.flags == ("silent-source",) and report.offset_samples == 0 and report.correlation == 0.0
    assert not _ints(out_t).any() and not _ints(out_r).any() and len(_ints(out_t)) == 48_000
    assert report.null_test_dbfs == -math.inf


def test_a_200_ms_file(tmp_path: Path) -> None:
    rate = 44_100
    clicks, positions = click_train(rate, 0.2, seed=3)
    source = write_audio(tmp_path / "short.wav", clicks, rate, "PCM_16")
    results = fake_service_result(clicks, np.zeros_like(clicks), rate, tmp_path, shift=50, fmt="MP3")
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert abs(report.offset_samples - 46) <= 1  # 50 at 48 kHz
    target = _floats(out_t)[:, 0]
    assert len(target) == 8_820
    assert np.max(np.abs(peak_positions(target, positions) - positions)) <= 1
    _assert_pcm_nulls(source, out_t, out_r)


# -- formats --------------------------------------------------------------------------------------


def test_float_source_gives_float_stems(tmp_path: Path) -> None:
    rate = 48_000
    target_part = np.stack([tone(rate, 2.0, 440, 1.2), tone(rate, 2.0, 440, 0.2)], axis=1)  # above 0 dBFS
    bed = noise(rate, 2.0, channels=2, amplitude=0.2)
    source = write_audio(tmp_path / "src.wav", target_part + bed, rate, "FLOAT")
    report, out_t, out_r, _ = _run(tmp_path, source, fake_service_result(target_part, bed, rate, tmp_path))
    assert report.out_subtype == "FLOAT" and sf.info(str(out_t)).subtype == "FLOAT"
    assert "clipped" not in report.flags and np.max(np.abs(_floats(out_t))) > 1.0  # nothing clipped
    error = _floats(source) - (_floats(out_t) + _floats(out_r))
    assert 20 * np.log10(np.max(np.abs(error)) + 1e-30) < -90
    assert report.null_test_dbfs < -90


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e20, 3e38])
def test_a_float_source_with_a_non_finite_sample_is_refused(tmp_path: Path, bad: float) -> None:
    """One NaN once gave 2048 NaN samples in both stems, reported as a silent source with a fine null test;
    a finite 1e20 overflowed the projection's float32 power sums into stems that were all NaN."""
    music = noise(48_000, 2.0, channels=2, seed=14, amplitude=0.1)
    music[60_000, 0] = bad  # 1.250 s in
    source = write_audio(tmp_path / "float take.wav", music, 48_000, "FLOAT")
    sane = np.where(np.abs(music) <= 1.0, music, 0.0)
    results = fake_service_result(sane, np.zeros_like(music), 48_000, tmp_path)
    with pytest.raises(SourceError, match=r"“float take\.wav”.* 1\.250 s"):
        _run(tmp_path, source, results)
    assert not (tmp_path / ".sam-partial-target").exists() and not (tmp_path / ".sam-partial-residual").exists()
    # the same sample in a part that does not include it is fine
    report, out_t, _, _ = _run(tmp_path, source, results, start_frame=70_000)
    assert np.isfinite(_floats(out_t)).all() and report.null_test_dbfs < -150


def test_stems_that_come_out_not_finite_fail_the_job_and_are_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard: were a huge sample let through, its NaN stems once passed as a success (null test
    "not-finite", exit 0). Here the source check is switched off to reach it."""
    monkeypatch.setattr("bridge.audio.drift.refuse_non_finite", lambda *_args: None)
    music = noise(44_100, 2.0, channels=2, seed=14, amplitude=0.3)
    music[100:102, 0] = 1e20
    source = write_audio(tmp_path / "huge.wav", music, 44_100, "FLOAT")
    results = fake_service_result(np.where(np.abs(music) <= 1.0, music, 0.0), np.zeros_like(music), 44_100,
                                  tmp_path)
    with np.errstate(all="ignore"), pytest.raises(BridgeError, match=r"“huge\.wav” came out damaged") as caught:
        _run(tmp_path, source, results)
    assert "again" not in str(caught.value)
    assert not (tmp_path / ".sam-partial-target").exists() and not (tmp_path / ".sam-partial-residual").exists()


def test_a_non_finite_null_test_is_never_reported_as_fine() -> None:
    tally = _Tally()
    emit = _StemValues("FLOAT", True, tally)
    exact = np.array([[0.5, 0.25], [0.125, -0.75], [0.375, -0.0625]])  # exact in float32: a null of 0
    emit(exact, np.zeros((3, 2), np.float32), None)
    assert tally.null_peak == 0.0
    exact[1, 0] = math.nan
    emit(exact, np.zeros((3, 2), np.float32), None)
    emit(exact[:1], np.zeros((1, 2), np.float32), None)  # a later finite block does not hide it
    assert tally.null_peak == math.inf


def test_double_source_gives_exact_double_stems(tmp_path: Path) -> None:
    data = noise(48_000, 1.0, channels=2, amplitude=0.4)
    source = write_audio(tmp_path / "src.wav", data, 48_000, "DOUBLE")
    results = fake_service_result(data * 0.5, data * 0.5, 48_000, tmp_path)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    assert report.out_subtype == "DOUBLE"
    assert np.max(np.abs(_floats(source) - _floats(out_t) - _floats(out_r))) < 1e-15


def test_5_1_source_keeps_six_channels_and_its_speaker_layout(tmp_path: Path) -> None:
    rate = 48_000
    centre = tone(rate, 2.0, 660, 0.4)
    target_part = np.zeros((len(centre), 6))
    target_part[:, 2] = centre
    bed = noise(rate, 2.0, channels=6, amplitude=0.1)
    source = write_audio(tmp_path / "src.wav", target_part + bed, rate, "PCM_24", fmt="WAVEX")
    bwf.write_channel_mask(source, 0x60F)  # 5.1 with side surrounds
    report, out_t, out_r, _info = _run(tmp_path, source, fake_service_result(target_part, bed, rate, tmp_path))
    assert report.channels == 6 and sf.info(str(out_t)).channels == 6 and sf.info(str(out_t)).format == "WAVEX"
    assert bwf.read_channel_mask(out_t) == 0x60F and bwf.read_channel_mask(out_r) == 0x60F
    target = _floats(out_t)
    others = [level_dbfs(target[:, c]) for c in (0, 1, 3, 4, 5)]
    assert max(others) < level_dbfs(target[:, 2]) - 25  # the centre dialogue stayed in the centre
    _assert_pcm_nulls(source, out_t, out_r)


def test_a_hard_left_tone_stays_left_in_the_target(tmp_path: Path) -> None:
    rate = 48_000
    left_tone = tone(rate, 3.0, 1_234, 0.5)
    target_part = np.stack([left_tone, np.zeros_like(left_tone)], axis=1)
    bed = noise(rate, 3.0, channels=2, amplitude=0.15, seed=21)
    source = write_audio(tmp_path / "src.wav", target_part + bed, rate, "PCM_24")
    _report, out_t, out_r, _ = _run(tmp_path, source, fake_service_result(target_part, bed, rate, tmp_path))
    target, residual = _floats(out_t), _floats(out_r)
    assert level_dbfs(target[:, 1]) < level_dbfs(target[:, 0]) - 30
    assert level_dbfs(target[:, 0]) == pytest.approx(level_dbfs(left_tone), abs=1.0)
    assert level_dbfs(residual[:, 0]) == pytest.approx(level_dbfs(bed[:, 0]), abs=1.0)


@pytest.mark.parametrize(("fmt", "subtype"), [("MP3", None), ("OGG", "VORBIS")])
def test_lossy_source_gives_float_wav_with_a_reason(tmp_path: Path, fmt: str, subtype: str | None) -> None:
    rate = 44_100
    target_part, bed = tone(rate, 2.0, 440, 0.4), _bed(rate, 2.0)
    source = tmp_path / f"song.{fmt.lower()}"
    sf.write(str(source), np.stack([target_part + bed] * 2, axis=1), rate, format=fmt, subtype=subtype)
    report, out_t, out_r, info = _run(tmp_path, source, fake_service_result(target_part, bed, rate, tmp_path))
    assert (report.out_format, report.out_subtype) == ("WAV", "FLOAT")
    assert report.format_reason is not None and "lossy" in report.format_reason
    assert sf.info(str(out_t)).format == "WAV" and sf.info(str(out_t)).frames == info.frames
    with sf.SoundFile(str(source)) as f:
        decoded = read_block(f, info.frames, "float64")
    assert np.max(np.abs(decoded - _floats(out_t) - _floats(out_r))) < 1e-6  # nulls against our decode


@pytest.mark.parametrize(
    ("overrides", "stems", "words", "null_range"),
    [
        ({}, ("WAV", "FLOAT"), "32-bit float WAV, so nothing clips, and they null against the decoded source to "
         "float precision", (-200.0, -120.0)),
        ({"out_subtype": "PCM_16"}, ("WAV", "PCM_16"), "16-bit WAV and they null against the decoded source to "
         "16-bit precision", (-110.0, -90.0)),
        ({"out_format": "FLAC"}, ("FLAC", "PCM_24"), "24-bit FLAC (FLAC holds no float samples) and they null "
         "against the decoded source to 24-bit precision", (-160.0, -130.0)),
    ],
)
def test_a_lossy_sources_format_reason_tells_the_truth_about_the_stems(
    tmp_path: Path, overrides: dict[str, str], stems: tuple[str, str], words: str, null_range: tuple[float, float]
) -> None:
    """It said "32-bit float WAV so they null exactly" of stems that null at −150 dBFS, of 16-bit stems at
    −96 dBFS, and of 24-bit FLAC stems it said both "32-bit float" and "PCM_24"."""
    rate = 44_100
    target_part, bed = tone(rate, 2.0, 440, 0.4), _bed(rate, 2.0)
    source = tmp_path / "song.mp3"
    sf.write(str(source), np.stack([target_part + bed] * 2, axis=1), rate, format="MP3")
    report, out_t, out_r, info = _run(tmp_path, source, fake_service_result(target_part, bed, rate, tmp_path),
                                      **overrides)
    assert (report.out_format, report.out_subtype) == stems == (sf.info(str(out_t)).format, sf.info(str(out_t)).subtype)
    with sf.SoundFile(str(source)) as f:
        decoded = read_block(f, info.frames, "float64")
    null = 20 * np.log10(np.max(np.abs(decoded - _floats(out_t) - _floats(out_r))))
    assert null_range[0] < null < null_range[1] and report.null_test_dbfs == pytest.approx(null, abs=0.01)
    assert report.format_reason is not None and words in report.format_reason
    assert "null exactly" not in report.format_reason and "not exactly (see null_test_dbfs)" in report.format_reason
    assert ("float" in report.format_reason.replace("no float samples", "")) == (stems[1] == "FLOAT")


@pytest.mark.parametrize(("fmt", "subtype"), [("AIFF", "PCM_16"), ("FLAC", "PCM_24"), ("CAF", "ALAC_20")])
def test_aiff_flac_and_caf_keep_their_container(tmp_path: Path, fmt: str, subtype: str) -> None:
    rate = 48_000
    target_part, bed = tone(rate, 1.5, 300, 0.3), _bed(rate, 1.5)
    source = write_audio(tmp_path / f"src.{fmt.lower()}", target_part + bed, rate, subtype, fmt=fmt)
    report, out_t, out_r, _ = _run(tmp_path, source, fake_service_result(target_part, bed, rate, tmp_path))
    assert (report.out_format, report.out_subtype, report.format_reason) == (fmt, subtype, None)
    assert (sf.info(str(out_t)).format, sf.info(str(out_r)).subtype) == (fmt, subtype)
    _assert_pcm_nulls(source, out_t, out_r)


def test_pcm_override_clips_safely_and_says_so(tmp_path: Path) -> None:
    loud = np.stack([tone(48_000, 1.0, 100, 1.5)] * 2, axis=1)  # float source above full scale
    source = write_audio(tmp_path / "loud.wav", loud, 48_000, "FLOAT")
    results = fake_service_result(loud, np.zeros_like(loud), 48_000, tmp_path)
    report, out_t, _, _ = _run(tmp_path, source, results, out_subtype="PCM_24")
    assert "clipped" in report.flags
    target = _ints(out_t)
    assert target.max() == (2**23 - 1) << 8 and target.min() == -(2**23) << 8  # clipped, not wrapped


@pytest.mark.parametrize(("subtype", "channels"), [("PCM_24", 1), ("PCM_16", 2), ("PCM_24", 2)])
def test_a_loud_source_still_nulls_exactly(tmp_path: Path, subtype: str, channels: int) -> None:
    """A mastered mix near full scale whose kept part swings against the rest (a kick at +0.8 where the mix,
    limited, is at +0.95 and everything else at -0.5): source - target is beyond full scale there. The
    residual used to clip (target + residual missed the source by -5.5 dBFS, said only as "clipped"); now
    the target gives way just enough that the residual fits, and the null stays exact."""
    rate = 48_000
    mix = tone(rate, 1.0, 100, 0.97) + 0.02 * low_noise(rate, 1.0)
    kept = -0.6 * tone(rate, 1.0, 100, 1.0)  # against the mix: the rest is mix - kept, up to 1.57
    if channels == 2:
        mix, kept = np.stack([mix, 0.9 * mix], axis=1), np.stack([kept, 0.9 * kept], axis=1)
    source = write_audio(tmp_path / "master.wav", mix, rate, subtype)
    results = fake_service_result(kept if channels == 1 else kept.mean(axis=1), np.zeros(len(mix)), rate, tmp_path)
    report, out_t, out_r, _ = _run(tmp_path, source, results)
    _assert_pcm_nulls(source, out_t, out_r)
    assert report.null_test_dbfs == -math.inf
    assert "clipped" in report.flags  # the target was limited: said
    target = sf.read(str(out_t), always_2d=True)[0][:, 0]
    expected = kept if channels == 1 else kept[:, 0]
    quiet = np.abs(mix if channels == 1 else mix[:, 0]) < 0.3  # where nothing is near full scale: as served
    assert np.max(np.abs(target[quiet] - expected[quiet])) < 1e-3


def test_big_wav_stems_become_rf64(tmp_path: Path) -> None:
    data = noise(48_000, 1.0, channels=2)
    source = write_audio(tmp_path / "src.wav", data, 48_000, "PCM_24")
    bwf.append_chunks(source, bwf.with_time_reference(b"big", 100), None)
    results = fake_service_result(data, data * 0, 48_000, tmp_path)
    report, out_t, out_r, _ = _run(tmp_path, source, results, rf64_threshold=100_000)
    assert report.out_format == "RF64" and report.format_reason and "RF64" in report.format_reason
    for path in (out_t, out_r):
        assert path.read_bytes()[:4] == b"RF64" and sf.info(str(path)).frames == 48_000
        assert bwf.time_reference(bwf.read_chunks(path).bext or b"") == 100
    _assert_pcm_nulls(source, out_t, out_r)


# -- metadata -------------------------------------------------------------------------------------


def test_bext_time_reference_moves_to_the_segment_start(tmp_path: Path) -> None:
    rate = 48_000
    music = _bed(rate, 4.0) + click_train(rate, 4.0)[0]
    source = write_audio(tmp_path / "take.wav", music, rate, "PCM_24")
    midnight_plus_1h = 3600 * rate
    ixml = (
        b"<BWFXML><BEXT><BWF_TIME_REFERENCE_LOW>172800000</BWF_TIME_REFERENCE_LOW>"
        b"<BWF_TIME_REFERENCE_HIGH>0</BWF_TIME_REFERENCE_HIGH></BEXT></BWFXML>"
    )
    bwf.append_chunks(source, bwf.with_time_reference(b"Take 12", midnight_plus_1h), ixml)
    start = 52_345
    segment = music[start : start + rate * 2]
    results = fake_service_result(segment, np.zeros_like(segment), rate, tmp_path)
    report, out_t, out_r, _ = _run(tmp_path, source, results, start_frame=start, frames=rate * 2)
    for path in (out_t, out_r):
        info = wavinfo.WavInfoReader(str(path))  # a second reader, not ours
        assert info.bext is not None and info.bext.time_reference == midnight_plus_1h + start
        assert info.bext.description == "Take 12"
        assert info.ixml is not None
        assert f"<BWF_TIME_REFERENCE_LOW>{midnight_plus_1h + start}<".encode() in info.ixml.source
    assert report.offset_samples == 0 and len(_ints(out_t)) == rate * 2
    _assert_pcm_nulls(source, out_t, out_r, start=start)


_W64_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")  # Wave64: a RIFF FOURCC's GUID is the FOURCC + this


def _w64_chunk(fourcc: bytes, payload: bytes) -> bytes:
    size = 24 + len(payload)
    return fourcc + _W64_TAIL + struct.pack("<Q", size) + payload + bytes(-size % 8)


def _w64_take(path: Path, music: np.ndarray, rate: int, chunks: bytes) -> Path:
    """A 24-bit stereo Wave64 file with `chunks` before its audio, as a recorder writes it (built by hand)."""
    ints = np.round(np.clip(music, -1, 1 - 2**-23) * 2**23).astype("<i4")
    pcm = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    fmt = struct.pack("<HHIIHH", 1, 2, rate, rate * 6, 6, 24)
    body = b"wave" + _W64_TAIL + _w64_chunk(b"fmt ", fmt) + chunks + _w64_chunk(b"data", pcm)
    riff = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")
    path.write_bytes(riff + struct.pack("<Q", 24 + len(body)) + body)
    return path


def _bext_time_reference_in(path: Path) -> int | None:
    """The TimeReference of the Wave64 `bext` chunk, read straight from the bytes (not with bwf)."""
    raw = path.read_bytes()
    at = raw.find(b"bext" + _W64_TAIL)
    return None if at < 0 else int(struct.unpack("<Q", raw[at + 24 + 338 : at + 24 + 346])[0])


def test_a_wave64_take_keeps_its_timeline_position_in_wave64_stems(tmp_path: Path) -> None:
    """W64 stems of a W64 take with a bext chunk came out without it, and nothing said so."""
    rate = 48_000
    music = np.stack([_bed(rate, 3.0) + click_train(rate, 3.0)[0], _bed(rate, 3.0) * 0.5], axis=1)
    ten_hours = 10 * 3600 * rate + 12_345
    ixml = (b"<BWFXML><BEXT><BWF_TIME_REFERENCE_LOW>%d</BWF_TIME_REFERENCE_LOW><BWF_TIME_REFERENCE_HIGH>%d"
            b"</BWF_TIME_REFERENCE_HIGH></BEXT></BWFXML>" % (ten_hours & 0xFFFFFFFF, ten_hours >> 32))
    source = _w64_take(tmp_path / "take.w64", music, rate,
                       _w64_chunk(b"bext", bwf.with_time_reference(b"Take 7", ten_hours)) + _w64_chunk(b"iXML", ixml))
    start = 40_001
    segment = music[start : start + rate]
    results = fake_service_result(segment, np.zeros_like(segment), rate, tmp_path)
    report, out_t, out_r, info = _run(tmp_path, source, results, start_frame=start, frames=rate)
    assert info.bext is not None and report.out_format == "W64" and "position-not-kept" not in report.flags
    for path in (out_t, out_r):
        assert sf.info(str(path)).format == "W64" and sf.info(str(path)).frames == rate  # libsndfile reads it
        assert _bext_time_reference_in(path) == ten_hours + start
        assert bwf.ixml_time_reference(bwf.read_chunks(path).ixml or b"") == ten_hours + start
        assert bwf.inspect_container(path).declared_size == path.stat().st_size
    _assert_pcm_nulls(source, out_t, out_r, start=start)


@pytest.mark.parametrize(("fmt", "kept"), [("W64", True), ("FLAC", False), ("AIFF", False), ("CAF", False)])
def test_a_bwf_take_written_as_another_format_keeps_its_position_or_says_it_cannot(
    tmp_path: Path, fmt: str, kept: bool
) -> None:
    rate = 48_000
    music = _bed(rate, 2.0) + click_train(rate, 2.0)[0]
    source = write_audio(tmp_path / "take.wav", music, rate, "PCM_24")
    bwf.append_chunks(source, bwf.with_time_reference(b"Take 3", 3600 * rate), None)
    results = fake_service_result(music, np.zeros_like(music), rate, tmp_path)
    report, out_t, out_r, _ = _run(tmp_path, source, results, out_format=fmt)
    assert (report.out_format, sf.info(str(out_t)).format) == (fmt, fmt)
    assert ("position-not-kept" not in report.flags) == kept
    if kept:
        assert _bext_time_reference_in(out_t) == _bext_time_reference_in(out_r) == 3600 * rate
    _assert_pcm_nulls(source, out_t, out_r)


def test_a_take_without_a_time_reference_loses_nothing_as_flac(tmp_path: Path) -> None:
    music = _bed(48_000, 1.0)
    source = write_audio(tmp_path / "take.wav", music, 48_000, "PCM_24")
    report, *_ = _run(tmp_path, source, fake_service_result(music, np.zeros_like(music), 48_000, tmp_path),
                      out_format="FLAC")
    assert "position-not-kept" not in report.flags


# -- residual method, progress --------------------------------------------------------------------


def test_service_residual_method(tmp_path: Path) -> None:
    rate = 48_000
    target_part, bed = tone(rate, 1.0, 500, 0.3), _bed(rate, 1.0)
    source = write_audio(tmp_path / "src.wav", target_part + bed, rate, "PCM_24")
    results = fake_service_result(target_part, bed * 0.5, rate, tmp_path, shift=20)  # a "worse" residual
    report, _, out_r, _ = _run(tmp_path, source, results, residual_method="service")
    residual = _floats(out_r)[:, 0]
    assert np.max(np.abs(residual - bed * 0.5)) < 2e-5  # the service's residual, aligned (shift undone)
    assert -30 < report.null_test_dbfs < -3  # honest: it does not null


def test_progress_is_reported_up_to_one(tmp_path: Path) -> None:
    data = _bed(48_000, 5.0)
    source = write_audio(tmp_path / "src.wav", data, 48_000, "PCM_24")
    results = fake_service_result(data, data * 0, 48_000, tmp_path)
    seen: list[float] = []
    info = probe_source(source)
    conform(ConformSpec(info, 0, info.frames), *results, tmp_path / "t", tmp_path / "r", progress=seen.append)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == 1.0 and 0 <= seen[0] < 1


# -- failures -------------------------------------------------------------------------------------


def test_unwritable_output_raises_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    data = _bed(48_000, 1.0)
    source = write_audio(tmp_path / "src.wav", data, 48_000, "PCM_24")
    results = fake_service_result(data, data * 0, 48_000, tmp_path)
    info = probe_source(source)
    not_a_folder = tmp_path / "Stems"
    not_a_folder.write_text("a file where the folder should be")
    with pytest.raises(OutputError) as caught:
        conform(ConformSpec(info, 0, info.frames), *results, not_a_folder / "t", not_a_folder / "r")
    assert "could not be written" in str(caught.value) and caught.value.hint
    existing = tmp_path / "r.wav"
    existing.write_bytes(b"the user's own file")
    with pytest.raises(OutputError, match="never overwrites"):
        conform(ConformSpec(info, 0, info.frames), *results, tmp_path / "t.wav", existing)
    assert not (tmp_path / "t.wav").exists() and existing.read_bytes() == b"the user's own file"
    if os.geteuid() != 0:  # root ignores folder permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(OutputError):
            conform(ConformSpec(info, 0, info.frames), *results, locked / "t", locked / "r")
        assert list(locked.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root/CAP_SYS_ADMIN; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    umount = shutil.which("umount")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0 or umount is None:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run([umount, str(mount)], check=False)


def test_full_disk_raises_output_error_and_removes_both_stems(tmp_path: Path, tiny_disk: Path) -> None:
    data = np.stack([_bed(48_000, 4.0)] * 2, axis=1)  # 2 × 1.1 MB stems: the disk fills mid-write
    source = write_audio(tmp_path / "src.wav", data, 48_000, "PCM_24")
    results = fake_service_result(data, data * 0, 48_000, tmp_path)
    info = probe_source(source)
    with pytest.raises(OutputError, match="full") as caught:
        conform(ConformSpec(info, 0, info.frames), *results, tiny_disk / "t", tiny_disk / "r")
    assert "Free some space" in caught.value.hint
    assert list(tiny_disk.iterdir()) == []


def test_undecodable_result_fails_the_job_and_writes_nothing(tmp_path: Path) -> None:
    data = _bed(48_000, 1.0)
    source = write_audio(tmp_path / "src.wav", data, 48_000, "PCM_24")
    broken = tmp_path / "target.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    out = tmp_path / "out"
    out.mkdir()
    info = probe_source(source)
    with pytest.raises(JobFailed):
        conform(ConformSpec(info, 0, info.frames), broken, broken, out / "t", out / "r")
    assert list(out.iterdir()) == []


# -- memory ---------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import numpy as np, soundfile as sf
    from bridge.audio.source import probe_source
    from bridge.audio.conform import ConformSpec, conform

    folder, rate, minutes = Path(sys.argv[1]), 48_000, 10
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(folder / "src.wav"), "w", rate, 2, "PCM_24") as src, \\
         sf.SoundFile(str(folder / "t.wav"), "w", rate, 1, "FLOAT") as tgt, \\
         sf.SoundFile(str(folder / "r.wav"), "w", rate, 1, "FLOAT") as res:
        for _ in range(minutes * 6):  # 10 s blocks: the test itself stays small too
            part_t = np.repeat(rng.uniform(-0.2, 0.2, (rate * 10, 1)), 2, axis=1) * [0.9, 0.4]
            part_r = rng.uniform(-0.1, 0.1, (rate * 10, 2))
            src.write(part_t + part_r)
            tgt.write(part_t.mean(axis=1))
            res.write(part_r.mean(axis=1))
    info = probe_source(folder / "src.wav")
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    report = conform(ConformSpec(info, 0, info.frames), folder / "t.wav", folder / "r.wav",
                     folder / "out.t", folder / "out.r")
    # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) peak into a child's ru_maxrss across exec
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"growth_mb": (peak - before) / 2**20, "frames": sf.info(str(folder / "out.t")).frames,
                      "expected": info.frames, "null": report.null_test_dbfs}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc for RSS")
def test_ten_minutes_of_stereo_conform_in_bounded_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])  # json reads back -Infinity
    assert result["frames"] == result["expected"] == 48_000 * 600
    assert result["null"] == -math.inf
    print(f"RSS growth while conforming 10 min of stereo: {result['growth_mb']:.0f} MB")
    assert result["growth_mb"] < 250, result  # a guard, not a benchmark (benchmarks/bench_conform.py)
