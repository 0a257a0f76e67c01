"""Quality flags (issue #23, item 3) on labelled cases: the stand-in's unrelated-noise fault and a prompt's
sound that is absent (the model invents speech) flag `target-unlikely`; genuine band targets, speech in
music, and a good result with a level error and artifacts do not; silence flags nothing; an empty target
and an empty residual are named. Also through conform, as the stems are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio.conform import ConformSpec, conform
from bridge.audio.quality import QualityMeter
from bridge.audio.source import probe_source
from tests.audio.quality_cases import RATE, cases, music


def measure(source: np.ndarray, target: np.ndarray, residual: np.ndarray) -> tuple[str, ...]:
    meter = QualityMeter(RATE)
    for start in range(0, len(source), 5000):  # fed in odd-sized blocks, as conform does
        meter.feed(source[start:start + 5000], target[start:start + 5000], residual[start:start + 5000])
    return meter.report().flags


def test_labelled_cases_flag_exactly_the_unlikely_ones() -> None:
    results = [(name, label, measure(source, target, residual))
               for name, label, source, target, residual in cases(quick=True)]
    assert {label for _, label, _ in results} == {"ok", "unlikely"}
    wrong = [(name, flags) for name, label, flags in results
             if ("target-unlikely" in flags) != (label == "unlikely") or (label == "ok" and flags)]
    assert wrong == []


def test_silence_and_empty_results_are_named() -> None:
    mix = music(3.0, seed=4)
    silence = np.zeros_like(mix)
    assert measure(silence, silence, silence) == ()  # a silent source: nothing to say about its target
    assert measure(mix, silence, mix) == ("target-silent",)
    assert measure(mix, mix, silence) == ("target-is-everything",)
    assert measure(mix, 0.5 * mix, 0.5 * mix) == ()


@pytest.mark.parametrize(("noise", "flagged"), [(False, False), (True, True)])
def test_conform_flags_an_unrelated_result(tmp_path: Path, noise: bool, flagged: bool) -> None:
    rate = 44100
    mix = music(4.0, seed=2)
    stereo = np.stack([mix, 0.7 * mix], axis=1)[: round(4.0 * rate)]
    source = tmp_path / "Song.wav"
    sf.write(str(source), stereo, rate, subtype="PCM_24")
    from tests.audio.quality_cases import _stand_in

    work = tmp_path / "service"
    work.mkdir()
    import soxr
    mono48 = soxr.resample(stereo.mean(axis=1), rate, RATE)
    target, residual = _stand_in(mono48, "piano", work, noise_seed=7 if noise else None)
    sf.write(str(tmp_path / "t.wav"), target, RATE, subtype="FLOAT")
    sf.write(str(tmp_path / "r.wav"), residual, RATE, subtype="FLOAT")
    info = probe_source(source)
    report = conform(ConformSpec(source=info, start_frame=0, frames=info.frames), tmp_path / "t.wav",
                     tmp_path / "r.wav", tmp_path / "T.wav", tmp_path / "R.wav")
    assert ("target-unlikely" in report.flags) is flagged, report
    assert report.quality is not None
    assert sf.info(str(tmp_path / "T.wav")).frames == info.frames  # written all the same
