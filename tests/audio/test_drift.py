"""Reading a drifting result at a corrected rate: the scale from two windows' lags, and its refinement."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from bridge.audio import bwf
from bridge.audio.align import LagEstimate, drift_rate_scale
from bridge.audio.drift import (
    REPLAY_BYTES,
    RateFit,
    Segment,
    SegmentReader,
    measure_start,
    read_exact,
    refine_scale,
    usable_offset,
)
from bridge.audio.pcm_wav import PcmWavReader
from bridge.audio.source import probe_source, read_block
from bridge.common.errors import SourceError
from tests.audio_fixtures import fake_service_result, low_noise, tone, write_audio

RATE = 16_000


def window(lag: int, start: int, correlation: float = 0.9, has_signal: bool = True) -> LagEstimate:
    return LagEstimate(lag, correlation, has_signal, window_start=start, window=15 * RATE)


def test_the_scale_makes_the_end_windows_lag_meet_the_starts() -> None:
    start, end = window(0, 0), window(25, 25 * RATE)  # 25 samples late, 25 s further on
    scale = drift_rate_scale(start, end)
    assert scale == pytest.approx(1 + 25 / (25 * RATE))
    assert drift_rate_scale(start, window(-25, 25 * RATE)) == pytest.approx(1 - 25 / (25 * RATE))  # early


@pytest.mark.parametrize(("start", "end"), [
    (window(0, 0), window(1, 25 * RATE)),  # a sample is within what alignment promises
    (window(0, 0), window(30, 25 * RATE, correlation=0.3)),  # a weak match says nothing sure
    (window(0, 0, has_signal=False), window(30, 25 * RATE)),  # nor does silence
    (window(0, 0), window(9_000, 25 * RATE)),  # 2 %: not a clock, something else is wrong
    (window(0, 0), window(30, 5 * RATE)),  # overlapping windows share their content: no rate to see
    (window(0, 0), window(30, 15 * RATE - 1)),  # one sample shared is still too close
])
def test_nothing_sure_is_not_corrected(start: LagEstimate, end: LagEstimate) -> None:
    assert drift_rate_scale(start, end) is None


def test_a_rough_scale_is_refined_to_the_results_clock(tmp_path: Path) -> None:
    """Transients in a window pull its lag away from the window's middle when the result drifts, so the
    first scale is only close; measuring again at it closes in on the clock's real rate."""
    seconds = 60.0
    music = low_noise(RATE, seconds, seed=4) + tone(RATE, seconds, 110, 0.05)
    source = write_audio(tmp_path / "src.wav", music, RATE, "PCM_24")
    ppm = 200.0
    target, residual = fake_service_result(music / 2, music / 2, RATE, tmp_path, speed=1 + ppm * 1e-6)
    segment = Segment(probe_source(source), 0, len(music), target, residual)
    rough = 1 + 1.4 * ppm * 1e-6  # 40 % off, as a first estimate can be
    refined = refine_scale(segment, rough).scale
    assert refined == pytest.approx(1 + ppm * 1e-6, abs=4e-6)  # within 4 ppm of the truth
    assert measure_start(segment, refined).lag == 0  # read at that rate, the start still lines up


def test_a_correction_is_kept_only_when_it_ends_closer() -> None:
    start, found = window(0, 0), window(30, 25 * RATE)
    assert RateFit(1.0001, start, window(1, 25 * RATE)).lines_up_better_than(found)
    assert not RateFit(0.9999, start, window(-41, 25 * RATE)).lines_up_better_than(found)  # the wrong way
    assert not RateFit(1.0001, start, window(-30, 25 * RATE)).lines_up_better_than(found)  # no better
    assert not RateFit(1.0001, start, window(1, 25 * RATE, correlation=0.3)).lines_up_better_than(found)
    assert not RateFit(1.0001, start, None).lines_up_better_than(found)  # unmeasured is not better


def _read_through(reader: SegmentReader, frames: int, block: int = 65_536) -> tuple[NDArray[np.float64], ...]:
    parts = [(reader.source(min(block, frames - at)), *reader.service(min(block, frames - at)))
             for at in range(0, frames, block)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


@pytest.mark.parametrize(("subtype", "shift", "silence"), [("PCM_24", 700, 0.0), ("FLOAT", -90, 0.0),
                                                             ("PCM_16", 45, 3.0)])
def test_the_stems_are_made_from_the_decoded_opening_with_the_same_samples(
    tmp_path: Path, subtype: str, shift: int, silence: float
) -> None:
    """The opening the alignment decoded is replayed for the stems (not decoded and resampled a second
    time): source and aligned result come out sample for sample as from files opened anew, also when the
    opening was too long to keep (then it is decoded again)."""
    rate = 44_100
    music = np.column_stack((low_noise(rate, 24.0, seed=5), low_noise(rate, 24.0, seed=6)))
    music[: round(silence * rate)] = 0.0
    source = probe_source(write_audio(tmp_path / "src.wav", music, rate, subtype))
    part = music[rate:]  # the segment starts a second in: the service received only it
    target, residual = fake_service_result(part / 3, 2 * part / 3, rate, tmp_path, shift=shift)
    segment = Segment(source, rate, source.frames - rate, target, residual)
    with SegmentReader(segment) as fresh:
        measured = fresh.measure_start()
    offset = usable_offset(measured)
    assert abs(offset - round(shift * rate / 48_000)) <= 1
    with SegmentReader(segment) as untouched:  # nothing decoded before: what decoding twice gave
        untouched.restart(offset)
        expected = _read_through(untouched, segment.frames)
    result_frames = sf.info(str(target)).frames
    for replay_bytes in (REPLAY_BYTES, 0):
        with SegmentReader(segment, replay_bytes=replay_bytes) as reader:
            assert reader.measure_start() == measured
            reader.restart(offset)
            got = _read_through(reader, segment.frames, block=50_000)
            once = (reader.decoded_source, reader.decoded_result) == (segment.frames, result_frames)
            assert once == (replay_bytes > 0)  # each sample decoded once, unless too much was read to keep
        for a, b in zip(got, expected, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize(("subtype", "fmt"), [
    ("PCM_16", "WAV"), ("PCM_24", "WAV"), ("PCM_32", "WAV"), ("PCM_U8", "WAV"), ("PCM_24", "FLAC"),
    ("PCM_16", "AIFF"), ("PCM_S8", "AIFF"), ("PCM_24", "W64"), ("PCM_24", "RF64"), ("PCM_32", "CAF"),
    ("ALAC_24", "CAF"), ("ALAC_16", "CAF"), ("ALAC_32", "CAF")])
def test_integer_samples_read_as_float64_are_their_int32_values_times_a_power_of_two(
    tmp_path: Path, subtype: str, fmt: str
) -> None:
    """The stems' exact source values are libsndfile's float64 reading, once made from the int32 reading
    × 2**-31 in a second pass: the same numbers, in every integer format."""
    data = np.random.default_rng(2).uniform(-1.0, 1.0, (5_000, 2))
    data[:4] = [[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [2**-23, -(2**-15)]]
    path = write_audio(tmp_path / f"s.{fmt.lower()}", data, 44_100, subtype, fmt)
    with sf.SoundFile(str(path)) as a, sf.SoundFile(str(path)) as b:
        as_int = read_block(a, 5_000, "int32")
        exact = read_exact(b, 5_000, probe_source(path))
    assert exact.dtype == np.float64 and np.array_equal(exact, as_int * 2.0**-31)


@pytest.mark.parametrize(("subtype", "fmt", "direct"), [
    ("PCM_24", "WAV", True), ("PCM_16", "W64", True), ("PCM_32", "RF64", True), ("PCM_16", "WAVEX", True),
    ("PCM_24", "FLAC", False), ("FLOAT", "WAV", False)])
def test_the_segments_source_samples_are_libsndfiles_however_they_are_read(
    tmp_path: Path, subtype: str, fmt: str, direct: bool
) -> None:
    """Integer PCM in the WAV family is read with numpy (`PcmWavReader`), the rest through libsndfile: the
    same float64 values either way, from the segment's first frame on."""
    rate, channels = 44_100, 3
    data = np.random.default_rng(4).uniform(-1.0, 1.0, (3 * rate, channels))
    path = write_audio(tmp_path / f"s.{'w64' if fmt == 'W64' else fmt.lower()}", data, rate, subtype, fmt)
    if fmt in ("WAV", "RF64"):  # a chunk before the audio: its samples start further on
        bwf.append_chunks(path, bwf.with_time_reference(bytes(602), 0), b"<BWFXML/>")
    source = probe_source(path)
    assert (PcmWavReader.open(path, source.format, source.subtype, channels) is not None) == direct
    target, residual = fake_service_result(data / 3, 2 * data / 3, rate, tmp_path)
    segment = Segment(source, 1_234, 2 * rate, target, residual)
    with SegmentReader(segment) as reader:
        got = np.concatenate([reader.source(n) for n in (1, 65_536, 50_000)])
    with sf.SoundFile(str(path)) as f:
        f.seek(1_234)
        expected = read_exact(f, 2 * rate, source)
    assert got.dtype == np.float64 and np.array_equal(got, expected)


def test_a_source_cut_short_while_read_directly_says_so(tmp_path: Path) -> None:
    rate = 44_100
    data = np.random.default_rng(5).uniform(-0.5, 0.5, (4 * rate, 2))
    path = write_audio(tmp_path / "s.wav", data, rate, "PCM_24")
    source = probe_source(path)
    target, residual = fake_service_result(data / 3, 2 * data / 3, rate, tmp_path)
    with SegmentReader(Segment(source, 0, source.frames, target, residual)) as reader:
        reader.source(rate)
        os.truncate(path, 44 + 2 * rate * 6)  # the file now ends 2 s in
        with pytest.raises(SourceError, match="ended earlier than expected"):
            reader.source(2 * rate)
