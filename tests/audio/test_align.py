"""Offset and drift measurement, and the resampled/shifted service stream."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio.align import (
    AlignedService,
    DriftProbe,
    ResampledMono,
    estimate_lag,
    measure_start_offset,
    mono_mix,
)
from bridge.common.errors import JobFailed
from tests.audio_fixtures import click_train, low_noise, noise, peak_positions, through_service, tone


def _candidate(signal: np.ndarray, lag: int, max_lag: int, n: int) -> np.ndarray:
    """signal delayed by `lag`, laid out as estimate_lag expects (time -max_lag .. n + max_lag)."""
    padded = np.concatenate((np.zeros(max_lag + lag), signal, np.zeros(2 * max_lag)))
    return padded[: n + 2 * max_lag]


@pytest.mark.parametrize("lag", [0, 1, -1, 300, -300, 1105, -2000])
def test_lag_of_a_click_train_is_exact(lag: int) -> None:
    clicks, _ = click_train(48_000, 3.0)
    reference = clicks + tone(48_000, 3.0, 220, 0.3)  # a loud tone must not pull the lag a period away
    estimate = estimate_lag(reference, _candidate(reference, lag, 24_000, len(reference)), 24_000)
    assert estimate.lag == lag
    assert estimate.correlation > 0.95 and estimate.has_signal


def test_unrelated_audio_has_a_weak_correlation() -> None:
    reference = low_noise(48_000, 3.0, seed=1) + noise(48_000, 3.0, seed=1, amplitude=0.1)
    other = low_noise(48_000, 3.0, seed=9) + noise(48_000, 3.0, seed=9, amplitude=0.1)
    estimate = estimate_lag(reference, _candidate(other, 0, 24_000, len(reference)), 24_000)
    assert estimate.has_signal and estimate.correlation < 0.2


def test_silence_has_no_lag() -> None:
    silent = np.zeros(48_000)
    estimate = estimate_lag(silent, np.ones(48_000 + 200), 100)
    assert (estimate.lag, estimate.correlation, estimate.has_signal) == (0, 0.0, False)
    quiet_service = estimate_lag(tone(48_000, 1.0, 100), np.zeros(48_000 + 200), 100)
    assert quiet_service.has_signal and quiet_service.correlation == 0.0
    with pytest.raises(ValueError):
        estimate_lag(silent, np.zeros(10), 100)


def _reader(data: np.ndarray) -> Callable[[int], np.ndarray]:
    """Reads `data` from its start n samples at a time, zeros past its end."""
    cursor = [0]

    def read(n: int) -> np.ndarray:
        at = cursor[0]
        cursor[0] += n
        return np.pad(data[at : at + n], (0, max(0, at + n - len(data))))[:n]

    return read


@pytest.mark.parametrize("silent_seconds", [20, 70, 200])  # 70, 200: past the four 15 s windows once tried
def test_start_offset_skips_a_silent_intro(silent_seconds: int) -> None:
    rate = 8_000
    intro = np.zeros(rate * silent_seconds)
    clicks, _ = click_train(rate, 10.0)
    source = np.concatenate((intro, clicks))
    service = np.concatenate((np.zeros(37), source))  # 37 samples late
    estimate = measure_start_offset(_reader(source), _reader(service), rate, len(source))
    assert estimate.has_signal and estimate.lag == 37 and estimate.correlation > 0.95
    # the window starts where the signal does (to the second), not on a 15 s grid
    assert silent_seconds * rate - rate <= estimate.window_start <= silent_seconds * rate


def test_a_lone_click_after_silence_still_sets_the_offset() -> None:
    """One click after 70 s of silence: too little over a 15 s window, enough over its second."""
    rate = 8_000
    source = np.zeros(rate * 90)
    source[rate * 70 + 1234] = 0.12  # -57 dBFS RMS over its second, -69 over 15 s
    service = np.concatenate((np.zeros(21), source))
    estimate = measure_start_offset(_reader(source), _reader(service), rate, len(source))
    assert estimate.has_signal and estimate.lag == 21 and estimate.window == rate


@pytest.mark.parametrize("rate", [96_000, 192_000])
def test_a_hires_source_with_ultrasonics_correlates_on_what_the_service_holds(rate: int) -> None:
    """Hiss and clicks reach above 24 kHz; the service's mix cannot. Its correlation was once taken against
    the full band and fell to "weak" (0.4 at 192 kHz) although the match is exact."""
    hiss = noise(rate, 3.0, seed=7, amplitude=0.05)
    clicks, _ = click_train(rate, 3.0, seed=3)
    source = hiss + clicks
    service = np.concatenate((np.zeros(90), through_service(source, rate)))  # 90 samples late
    estimate = measure_start_offset(_reader(source), _reader(service), rate, len(source))
    assert estimate.lag == 90 and estimate.correlation > 0.95


def test_a_silent_segment_has_no_start_offset() -> None:
    rate = 8_000
    silence = np.zeros(rate * 100)
    estimate = measure_start_offset(_reader(silence), _reader(silence), rate, len(silence))
    assert (estimate.has_signal, estimate.lag, estimate.correlation) == (False, 0, 0.0)


def test_mono_mix() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, 0.5], [-1.0, 1.0]])
    assert np.allclose(mono_mix(stereo), [0.5, 0.5, 0.0])
    assert mono_mix(np.array([1.0, 2.0], np.float32)).dtype == np.float64


@pytest.mark.parametrize("rate", [44_100, 48_000, 96_000])
def test_resampled_result_keeps_clicks_in_place(tmp_path: Path, rate: int) -> None:
    clicks, positions = click_train(48_000, 4.0)
    path = tmp_path / "t.wav"
    sf.write(str(path), clicks.astype(np.float32), 48_000, subtype="FLOAT")
    stream = ResampledMono(path, rate)
    got = np.concatenate([stream.read(n) for n in (1, 999, 65_536, 100_000, 300_000)])
    stream.close()
    expected = np.round(positions * rate / 48_000).astype(np.int64)
    assert np.max(np.abs(peak_positions(got, expected) - expected)) <= 1
    assert np.all(got[round(4.0 * rate) + 100 :] == 0)  # zeros after the end


def test_aligned_service_skips_late_and_pads_early(tmp_path: Path) -> None:
    ramp = np.arange(1, 1001, dtype=np.float32) / 1000
    target, residual = tmp_path / "t.wav", tmp_path / "r.wav"
    sf.write(str(target), ramp, 48_000, subtype="FLOAT")
    sf.write(str(residual), -ramp, 48_000, subtype="FLOAT")
    late = AlignedService(target, residual, 48_000, offset=10)
    t, r = late.read(5)
    assert np.allclose(t, ramp[10:15]) and np.allclose(r, -ramp[10:15])
    late.close()
    early = AlignedService(target, residual, 48_000, offset=-3)
    t, _ = early.read(2)
    t2, _ = early.read(3)
    assert np.array_equal(t, [0, 0]) and np.allclose(t2, [0, ramp[0], ramp[1]])
    early.close()


def test_stereo_result_is_mixed_to_mono(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    sf.write(str(path), np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32), 48_000, subtype="FLOAT")
    stream = ResampledMono(path, 48_000)
    assert np.allclose(stream.read(3), [0.5, 0.5, 0.5])
    stream.close()


def test_unreadable_and_empty_results_fail_the_job(tmp_path: Path) -> None:
    garbage = tmp_path / "result.wav"
    garbage.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(JobFailed, match="cannot read"):
        ResampledMono(garbage, 48_000)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 48_000, subtype="FLOAT")
    with pytest.raises(JobFailed, match="empty"):
        AlignedService(empty, empty, 48_000)


def test_drift_probe_measures_the_end_window() -> None:
    rate = 8_000
    frames = rate * 40
    source = low_noise(rate, 40.0)
    probe = DriftProbe(frames, rate)
    assert probe.active and not probe.wants(0, rate)
    drifted = np.concatenate((np.zeros(6), source))  # the end is 6 samples later than the start
    for at in range(0, frames, 5_000):
        if probe.wants(at, 5_000):
            probe.feed_source(at, source[at : at + 5_000])
            probe.feed_service(at, drifted[at : at + 5_000].astype(np.float32))
    probe.feed_service(frames, drifted[frames:].astype(np.float32))
    estimate = probe.estimate()
    assert estimate is not None and estimate.lag == 6
    assert DriftProbe(rate * 10, rate).estimate() is None  # too short: the start window covers it
