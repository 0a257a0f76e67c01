"""Reading a drifting result at a corrected rate: the scale from two windows' lags, and its refinement."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.audio.align import LagEstimate, drift_rate_scale
from bridge.audio.drift import RateFit, Segment, measure_start, refine_scale
from bridge.audio.source import probe_source
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
