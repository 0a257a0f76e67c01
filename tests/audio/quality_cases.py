"""Labelled cases for the quality flags (issue #23): sources made here, results made by the stand-in's own
rule (`bridge.local_service.separator.separate`, its unrelated-noise fault too) or, for a prompt whose sound
is absent, by what SAM Audio is reported to do (random audio: speech that is not in the source).

Each case is (name, label, source, target, residual), mono 48 kHz aligned; label "ok" must not flag,
"unlikely" must flag `target-unlikely`. `benchmarks/bench_quality_flags.py` prints every case's measures and the
hit / false-alarm rates; `tests/audio/test_quality.py` holds the flags to them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

from bridge.local_service.separator import VOICE, SeparationSpec, band_filter, separate

RATE = 48_000
Audio = NDArray[np.float64]

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please bring the microphone closer to the stage before the second take.",
    "We recorded this part twice, and the first version was better.",
    "Turn the bass down a little and bring up the vocals in the chorus.",
)
OTHER_SPEECH = "This sentence was never spoken in the source, it is what the model invents."


def speech(text: str, voice: str = "en", speed: int = 150) -> Audio:
    """espeak-ng's rendering of `text`, mono 48 kHz, peak 0.5."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True,
                       capture_output=True)
        data, rate = sf.read(str(out), dtype="float64")
    mono = data if data.ndim == 1 else data.mean(axis=1)
    mono = soxr.resample(mono, rate, RATE)
    return 0.5 * mono / max(np.max(np.abs(mono)), 1e-9)


def music(seconds: float, seed: int, bass: bool = True, chords: bool = True, hats: bool = True) -> Audio:
    """Music-like: a bass line, held chords with harmonics, and hi-hat-like noise bursts, in tempo."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    out = np.zeros(n)
    beat = round(RATE * 60 / rng.uniform(90, 130))
    roots = rng.choice([55.0, 61.7, 65.4, 73.4, 82.4], size=n // (4 * beat) + 2)
    for bar, root in enumerate(roots):
        part = slice(bar * 4 * beat, min((bar + 1) * 4 * beat, n))
        if part.start >= n:
            break
        tt = t[part]
        if bass:
            out[part] += 0.25 * np.sin(2 * np.pi * root * tt) * np.exp(-((tt - tt[0]) % (beat / RATE)) * 3)
        if chords:
            for ratio in (4.0, 5.0, 6.0):
                for harmonic in (1, 2, 3):
                    out[part] += 0.06 / harmonic * np.sin(2 * np.pi * root * ratio * harmonic * tt)
    if hats:
        for start in range(0, n, beat // 2):
            length = min(RATE // 40, n - start)
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (RATE / 400))
            out[start:start + length] += 0.15 * np.diff(burst, prepend=0.0)  # bright: mostly highs
    return out


def _stand_in(source: Audio, prompt: str, folder: Path, noise_seed: int | None = None) -> tuple[Audio, Audio]:
    src = folder / "in.wav"
    for name in ("in.wav", "t.wav", "r.wav"):
        (folder / name).unlink(missing_ok=True)
    sf.write(str(src), source, RATE, subtype="FLOAT")
    separate(src, SeparationSpec(prompt=prompt, noise_seed=noise_seed), folder / "t.wav", folder / "r.wav")
    target, _ = sf.read(str(folder / "t.wav"), dtype="float64")
    residual, _ = sf.read(str(folder / "r.wav"), dtype="float64")
    return target, residual


def _fit(x: Audio, n: int) -> Audio:
    return np.pad(x, (0, max(0, n - len(x))))[:n]


def _voice_band(x: Audio) -> Audio:
    taps = band_filter(VOICE)
    assert taps is not None
    return np.convolve(x, taps, mode="same")


def cases(quick: bool = False) -> Iterator[tuple[str, str, Audio, Audio, Audio]]:
    """The labelled cases (`quick`: a subset for the test suite)."""
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        seeds = range(2) if quick else range(6)
        for seed in seeds:
            mix = music(6.0, seed)
            for prompt in ("bass", "piano", "hi-hat"):  # genuine band targets of a music-like source
                yield f"music{seed} {prompt}", "ok", mix, *_stand_in(mix, prompt, folder)
            yield f"music{seed} noise fault", "unlikely", mix, *_stand_in(mix, "piano", folder, noise_seed=seed + 1)
        for seed in seeds[:2] if quick else seeds[:3]:
            # a held tone with sparse clicks over louder noise, the tone and clicks as target (bench_conform's
            # case): steady bands and a masked part must not read as unrelated
            rng = np.random.default_rng(seed)
            t = np.arange(6 * RATE) / RATE
            tone = 0.18 * np.sin(2 * np.pi * rng.uniform(200, 500) * t)
            tone[rng.random(len(t)) < 2e-4] += 0.4
            bed = rng.uniform(-0.15, 0.15, len(t))
            yield f"tone+clicks over noise {seed}", "ok", tone + bed, tone, bed
            noise = 0.1 * np.random.default_rng(seed + 50).standard_normal(len(t))
            yield f"tone+clicks over noise {seed} noise fault", "unlikely", tone + bed, noise, -noise
        sentences = SENTENCES[:2] if quick else SENTENCES
        for index, text in enumerate(sentences):
            voice = speech(text)
            for gain in ((0.5,) if quick else (0.25, 0.5, 1.0)):
                bed = gain * music(len(voice) / RATE, 10 + index)
                mix = voice + bed
                target, residual = _stand_in(mix, "speech", folder)
                yield f"speech{index}+music x{gain} speech", "ok", mix, target, residual
                # what a real model's good result is like: a level error and faint artifacts of its own
                rough = 1.4 * target + 0.01 * np.random.default_rng(index).standard_normal(len(target))
                yield f"speech{index}+music x{gain} speech +3 dB, artifacts", "ok", mix, rough, mix - rough
                yield (f"speech{index}+music x{gain} noise fault", "unlikely", mix,
                       *_stand_in(mix, "speech", folder, noise_seed=20 + index))
                # the prompted speech is absent: the model invents some (band-limited speech not in the source)
                absent = bed
                other = SENTENCES[(index + 1) % len(SENTENCES)] if index % 2 else OTHER_SPEECH
                invented = _voice_band(_fit(speech(other, speed=170), len(absent)))
                invented *= np.sqrt(np.mean(absent**2) / max(np.mean(invented**2), 1e-12)) * 0.7
                yield (f"music x{gain} (speech absent) invented speech", "unlikely", absent, invented,
                       absent - invented)
