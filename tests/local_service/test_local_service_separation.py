"""The local service's deterministic "separation" rule (see bridge/local_service/separator.py), and the
`sam-bridge local-service` command, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from scipy.signal import fftconvolve, firwin

from bridge.local_service import LocalFalService
from bridge.local_service.separator import (
    HIGH,
    LOW,
    MID,
    REACH,
    TAPS,
    VOICE,
    Band,
    band_filter,
    band_for_prompt,
)
from tests.conftest import TEST_KEY

KEY_AUTH = {"Authorization": f"Key {TEST_KEY}"}


def encode(signal: np.ndarray, rate: int, subtype: str = "FLOAT", file_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def tones(rate: int, seconds: float, freqs: tuple[float, ...]) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs)  # type: ignore[return-value]


def run(service: LocalFalService, audio: bytes, endpoint: str = "separate", **fields: Any) -> dict[str, Any]:
    payload = {"audio_url": "data:audio/wav;base64," + base64.b64encode(audio).decode(), **fields}
    with httpx.Client(base_url=service.url, headers=KEY_AUTH, timeout=60) as client:
        accepted = client.post(f"/fal-ai/sam-audio/{endpoint}", json=payload)
        assert accepted.status_code == 200, accepted.text
        deadline = time.monotonic() + 60
        while (status := client.get(accepted.json()["status_url"], params={"logs": 1}).json())["status"] != \
                "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        result = client.get(accepted.json()["response_url"])
    return {"status": status, "result": result}


def stems(output: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    target, target_rate = sf.read(io.BytesIO(httpx.get(output["target"]["url"]).content))
    residual, residual_rate = sf.read(io.BytesIO(httpx.get(output["residual"]["url"]).content))
    assert target_rate == residual_rate == 48000
    assert target.ndim == residual.ndim == 1  # mono, whatever the input
    return target, residual


def level_at(signal: np.ndarray, freq: float) -> float:
    """Amplitude of a sine at `freq` (signal is a whole number of its periods at 48 kHz, windowed)."""
    window = np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(signal * window)) / (window.sum() / 2)
    return float(spectrum[round(freq * len(signal) / 48000)])


@pytest.mark.parametrize(("prompt", "band"), [
    ("Bass", LOW), ("kick drum", LOW), ("the 808", LOW), ("sub-bass", LOW), ("lead vocals", VOICE),
    ("Dialogue", VOICE), ("hi-hat", HIGH), ("Shaker", HIGH), ("piano playing", MID), ("bassoon", MID),
    ("vocal and bass", LOW), ("high voice", VOICE),  # rules are tried LOW, VOICE, HIGH: first match wins
])
def test_prompt_words_pick_the_band(prompt: str, band: object) -> None:
    assert band_for_prompt(prompt) == band


@pytest.mark.parametrize("band", [LOW, VOICE, HIGH, MID])
def test_band_filters_are_scipy_firwin_kaiser_taps(band: Band) -> None:
    window = ("kaiser", 8.6)
    if band.low_hz is None:
        expected = firwin(TAPS, band.high_hz, window=window, fs=48000)
    elif band.high_hz is None:
        expected = firwin(TAPS, band.low_hz, window=window, pass_zero=False, fs=48000)
    else:
        expected = firwin(TAPS, [band.low_hz, band.high_hz], window=window, pass_zero=False, fs=48000)
    taps = band_filter(band)
    assert taps is not None
    np.testing.assert_allclose(taps, expected, atol=1e-12)
    np.testing.assert_array_equal(taps, taps[::-1])  # symmetric: linear phase


def test_bass_target_holds_the_low_tone_and_sums_back_to_the_mono_48k_input(service: LocalFalService) -> None:
    rate, seconds = 44100, 2.0
    left = tones(rate, seconds, (100.0, 1000.0))
    right = tones(rate, seconds, (8000.0,))
    stereo = np.stack([left, right], axis=1)
    done = run(service, encode(stereo, rate), prompt="bass")
    output = done["result"].json()
    target, residual = stems(output)
    mono48 = soxr.resample(stereo.mean(axis=1), rate, 48000, "HQ")
    assert len(target) == len(residual) == len(mono48) == 96000
    assert output["duration"] == pytest.approx(2.0) and output["sample_rate"] == 48000
    np.testing.assert_allclose(target + residual, mono48, atol=1e-4)
    middle = slice(24000, 72000)  # away from the edges, a whole number of periods of every tone
    assert level_at(target[middle], 100) == pytest.approx(0.1, abs=0.002)  # 0.2 / 2 from the mono mix
    for freq in (1000, 8000):
        assert level_at(target[middle], freq) < 1e-4
        assert level_at(residual[middle], freq) == pytest.approx(0.1, abs=0.002)
    assert level_at(residual[middle], 100) < 1e-3
    messages = [line["message"] for line in done["status"]["logs"]]
    assert messages[0] == "Loading audio (2.0 s, 2 ch, 44100 Hz)"


@pytest.mark.parametrize(("prompt", "kept", "removed"), [
    ("lead vocals", 1000.0, (100.0, 8000.0)), ("hi-hats", 8000.0, (100.0, 1000.0)),
    ("piano", 1000.0, (100.0, 8000.0)),
])
def test_other_bands(service: LocalFalService, prompt: str, kept: float, removed: tuple[float, ...]) -> None:
    mix = tones(48000, 1.0, (100.0, 1000.0, 8000.0))
    target, _ = stems(run(service, encode(mix, 48000), prompt=prompt)["result"].json())
    middle = slice(12000, 36000)
    assert level_at(target[middle], kept) == pytest.approx(0.2, abs=0.004)
    for freq in removed:
        assert level_at(target[middle], freq) < 1e-3


def test_zero_phase_and_block_independence(service: LocalFalService) -> None:
    """A click stays on its sample, and blocks give the whole-signal filter's result."""
    rate = 48000
    rng = np.random.default_rng(11)
    signal = 0.1 * rng.standard_normal(int(12.3 * rate))  # spans block boundaries at 5 s and 10 s
    clicks = (rate * 5 - 5, rate * 10 + 3, 1234)
    for position in clicks:
        signal[position] += 4.0
    target, residual = stems(run(service, encode(signal, rate), prompt="vocals")["result"].json())
    whole = fftconvolve(signal, band_filter(VOICE))[REACH : REACH + len(signal)]  # delay removed
    np.testing.assert_allclose(target, whole, atol=2e-6)
    np.testing.assert_allclose(target + residual, signal, atol=1e-6)
    for position in clicks:
        near = slice(position - 200, position + 200)
        assert int(np.argmax(target[near])) == 200  # not one sample early or late


def test_span_separate_silences_the_target_outside_the_spans(service: LocalFalService) -> None:
    mix = tones(48000, 3.0, (100.0, 1000.0))
    spans = [{"start": 0.5, "end": 2.5}, {"start": 1.0, "end": 1.5, "include": False}]
    target, residual = stems(run(service, encode(mix, 48000), "span-separate", spans=spans,
                                 prompt="bass")["result"].json())
    assert not target[:24000].any() and not target[120000:].any()  # before 0.5 s, after 2.5 s
    assert not target[48000:72000].any()  # the excluded 1.0-1.5 s
    assert level_at(target[72000:120000], 100) == pytest.approx(0.2, abs=0.004)
    np.testing.assert_allclose(target + residual, mix, atol=1e-5)
    whole, _ = stems(run(service, encode(mix, 48000), "span-separate",
                         spans=[{"start": 0, "end": 3}])["result"].json())
    np.testing.assert_allclose(whole, mix, atol=1e-6)  # no prompt: the whole signal inside the spans


def test_mp3_output_decodes_at_48k(service: LocalFalService) -> None:
    mix = tones(48000, 1.5, (100.0, 1000.0))
    output = run(service, encode(mix, 48000), prompt="bass", output_format="mp3")["result"].json()
    assert output["target"]["content_type"] == "audio/mpeg" and output["target"]["file_name"] == "target.mp3"
    target, residual = stems(output)
    assert abs(len(target) - 72000) < 4800  # libsndfile trims the encoder delay; other decoders may not
    assert level_at(target[12000:60000], 100) == pytest.approx(0.2, abs=0.02)
    assert level_at(residual[12000:60000], 1000) == pytest.approx(0.2, abs=0.02)


def test_mp3_and_flac_inputs_are_decoded(service: LocalFalService) -> None:
    mix = tones(48000, 1.0, (100.0,))
    for audio in (encode(mix, 48000, "PCM_16", "FLAC"), encode(mix, 48000, "MPEG_LAYER_III", "MP3")):
        done = run(service, audio, prompt="bass")
        assert done["result"].status_code == 200
        target, _ = stems(done["result"].json())
        assert level_at(target[12000:36000], 100) == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize(("audio_url", "message"), [
    ("data:audio/wav;base64," + base64.b64encode(b"this is not audio").decode(), "Could not decode audio"),
    ("https://example.com/song.wav", "only reads data URIs and files uploaded to it"),
    ("http://127.0.0.1:9/files/f/abc/x.wav", "only reads data URIs"),
])
def test_unreadable_audio_fails_the_job_clearly(service: LocalFalService, audio_url: str,
                                                message: str) -> None:
    with httpx.Client(base_url=service.url, headers=KEY_AUTH) as client:
        accepted = client.post("/fal-ai/sam-audio/separate", json={"audio_url": audio_url, "prompt": "bass"})
        assert accepted.status_code == 200  # accepted like fal; it fails when it runs
        deadline = time.monotonic() + 10
        while (status := client.get(accepted.json()["status_url"]).json())["status"] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert message in status["error"] and status["error_type"] == "bad_request"
        result = client.get(accepted.json()["response_url"])
        assert result.status_code == 422 and message in result.json()["detail"][0]["msg"]
    assert service.stats()["failed"] == 1


# -- the sub-command ---------------------------------------------------------------------------------


def test_local_service_command_serves_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "local-service", "--port", "0", "--key", "k1",
                             "--concurrency", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("local fal service on http://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[1]
        assert proc.stdout.readline().strip() == f"point sam-bridge at it with --service-url {url}"
        for key, status in (("k1", 200), ("no", 403)):
            answer = httpx.post(f"{url}/storage/auth/token", json={}, headers={"Authorization": f"Key {key}"})
            assert answer.status_code == status
        for _ in range(200):  # a burst (a service manager and a shell both signalling) must not deadlock it
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "k1" not in proc.stderr.read() if proc.stderr else True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_local_service_command_reports_a_busy_port(service: LocalFalService) -> None:
    done = subprocess.run([sys.executable, "-m", "bridge", "local-service", "--port", str(service.port)],
                          capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert "could not listen" in done.stderr and "--port" in done.stderr
