"""`sam-bridge separate`: the one-shot command end to end, over real HTTP to the local fal service.

Success paths assert on the stems' audio (rate, channels, sample format, exact length, transients to
±1 sample, target + residual == source); error paths assert on the message a musician reads, the exit
code, and that no file was left behind. Ctrl-C, the key at DEBUG level and the terminal display run
the command as a real process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

import bridge.engine.service_choice
import bridge.fal.client
from bridge.cli import main
from bridge.common.processes import owner_tag
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from tests.audio_fixtures import click_train, peak_positions, tone
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for

ROOT = Path(__file__).resolve().parents[2]
LOW_HZ = 110.0  # the part the stand-in's "hi-hat" band leaves in the residual


# -- helpers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    clicks: NDArray[np.int64]  # sample positions of the transients
    low: NDArray[np.float64]  # the low tone in channel 0, which must end up in the residual


def make_source(path: Path, rate: int, channels: int, subtype: str, seconds: float = 2.0,
                fmt: str | None = None) -> Source:
    """Clicks (what "hi-hat" isolates) over a low tone (what it leaves), different per channel."""
    clicks, positions = click_train(rate, seconds, seed=5)
    low = tone(rate, seconds, LOW_HZ, 0.3)
    columns = [clicks + low, 0.6 * clicks + tone(rate, seconds, 2 * LOW_HZ, 0.2)][:channels]
    sf.write(str(path), np.stack(columns, axis=1), rate, subtype=subtype, format=fmt)
    return Source(path, positions, low)


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def printed_paths(out: str) -> dict[str, Path]:
    return {label: Path(path) for label, path in re.findall(r"^(target|residual|manifest): (.+)$", out, re.M)}


def entries(folder: Path) -> list[str]:
    """Everything in `folder`, dotfiles included ([] when it does not exist)."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def read64(path: Path) -> NDArray[np.float64]:
    data, _rate = sf.read(str(path), dtype="float64", always_2d=True)
    return np.asarray(data, dtype=np.float64)


def assert_stems_match(source: Source, target: Path, residual: Path, part: slice = slice(None)) -> None:
    """The stems sit on the source's timeline: same format, length, transients, and they sum to it."""
    src_info = sf.info(str(source.path))
    for stem in (target, residual):
        info = sf.info(str(stem))
        assert (info.samplerate, info.channels, info.subtype, info.format) == \
               (src_info.samplerate, src_info.channels, src_info.subtype, src_info.format), stem.name
    src = read64(source.path)[part]
    tgt, res = read64(target), read64(residual)
    assert len(tgt) == len(res) == len(src)
    # target + residual == source: exact for PCM (the complement), float rounding for float sources
    tolerance = 1e-6 if src_info.subtype in ("FLOAT", "DOUBLE") else 1e-12
    assert np.max(np.abs(src - (tgt + res))) <= tolerance
    # the separation did something: the low tone is in the residual, not in the target
    low = source.low[part]
    share = [float(np.dot(x[:, 0], low) / np.dot(low, low)) for x in (tgt, res)]
    assert abs(share[0]) < 0.05 and share[1] > 0.95, share
    # every transient of the target lines up with the source's to ±1 sample, in every channel
    start = part.start or 0
    clicks = source.clicks[(source.clicks >= start + 40) & (source.clicks < start + len(src) - 40)] - start
    assert len(clicks) >= 5
    for channel in range(src.shape[1]):
        found = peak_positions(tgt[:, channel], clicks, search=30)
        assert np.max(np.abs(found - clicks)) <= 1, f"channel {channel}: {found - clicks}"


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def data_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FAL_KEY"}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def env(user_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Isolated user folders, FAL_KEY=TEST_KEY, fast retries, and fal's real hosts replaced by a closed
    loopback port, so no test can ever reach the internet whatever path the command takes."""
    monkeypatch.setenv("FAL_KEY", TEST_KEY)
    monkeypatch.setattr(bridge.fal.client, "RetryPolicy", lambda: FAST_RETRY)
    nowhere = closed_port_url()
    monkeypatch.setattr(bridge.engine.service_choice, "DEFAULT_QUEUE_URL", nowhere)
    monkeypatch.setattr(bridge.engine.service_choice, "DEFAULT_REST_URL", nowhere)
    return user_dirs


@pytest.fixture
def music(tmp_path: Path) -> Path:
    """The user's music folder (tmp_path also holds user_dirs' home, config and state folders)."""
    folder = tmp_path / "music"
    folder.mkdir()
    return folder


# -- success ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype", "seconds", "extra"),
    [
        # 1.6 MB: goes through the CDN upload (token + upload), not a data URI
        pytest.param("Guitar 01.wav", 44100, 2, "PCM_24", 6.0, [], id="wav-44k1-24bit-stereo"),
        pytest.param("Vox.wav", 48000, 1, "FLOAT", 2.0, [], id="wav-48k-mono-float"),
        pytest.param("Drums.flac", 44100, 2, "PCM_16", 2.0, [], id="flac-44k1-16bit-stereo"),
        pytest.param("Keys.wav", 44100, 2, "PCM_24", 2.0, ["--output-format", "mp3"], id="mp3-result"),
    ],
)
def test_stems_match_the_source(env: dict[str, Path], service: LocalFalService, music: Path,
                                capsys: pytest.CaptureFixture[str], name: str, rate: int, channels: int,
                                subtype: str, seconds: float, extra: list[str]) -> None:
    source = make_source(music / name, rate, channels, subtype, seconds)
    before = source.path.read_bytes()
    out_dir = music / "out"
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
             "--output-dir", out_dir, *extra)
    out, err = capsys.readouterr()
    assert rc == 0, err
    paths = printed_paths(out)
    assert set(paths) == {"target", "residual", "manifest"}
    stem_ext = source.path.suffix
    assert paths["target"] == out_dir / f"{source.path.stem} - hi-hat.target{stem_ext}"
    assert paths["residual"] == out_dir / f"{source.path.stem} - hi-hat.residual{stem_ext}"
    assert entries(out_dir) == sorted(p.name for p in paths.values())  # no temp file left
    assert_stems_match(source, paths["target"], paths["residual"])
    assert source.path.read_bytes() == before
    manifest = json.loads(paths["manifest"].read_text())
    step = manifest["steps"][0]
    assert step["options"]["output_format"] == (extra[1] if extra else "wav")
    assert any(f"output_format={step['options']['output_format']}" in line for line in step["service_log_tail"])
    calls = service.stats()["calls"]
    assert service.stats()["submits"] == 1
    assert (calls.get("upload", 0) >= 1) == (seconds > 5)


@pytest.mark.parametrize(("rate", "frames"), [(192_000, 1), (384_000, 3)])
def test_a_file_shorter_than_one_48k_sample_gives_exact_stems_not_a_paid_retry(
        env: dict[str, Path], service: LocalFalService, music: Path, capsys: pytest.CaptureFixture[str],
        rate: int, frames: int) -> None:
    """Sent as is, it resampled to nothing at the service: "empty result, run it again (charged again)",
    every time."""
    path = music / "blip.wav"
    sf.write(str(path), np.array([[0.25, -0.5], [0.125, 0.75], [-0.375, 0.0625]])[:frames], rate, "PCM_24")
    rc = cli("separate", path, "--prompt", "hi-hat", "--service-url", service.url, "--output-dir", music / "out")
    out, err = capsys.readouterr()
    assert rc == 0, err
    paths = printed_paths(out)
    source, target, residual = read64(path), read64(paths["target"]), read64(paths["residual"])
    assert sf.info(str(paths["target"])).samplerate == rate and len(target) == len(residual) == frames
    assert np.array_equal(target + residual, source)  # PCM: the complement nulls exactly


def test_local_json_summary_and_default_stems_folder(env: dict[str, Path], music: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "Guitar 01.wav", 44100, 2, "PCM_24")
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--local", "--local-delay", "0", "--json")
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    stems = {label: Path(path) for label, path in summary["stems"].items()}
    assert summary["ok"] is True
    assert stems == {"target": music / "Stems" / "Guitar 01 - hi-hat.target.wav",
                     "residual": music / "Stems" / "Guitar 01 - hi-hat.residual.wav"}
    assert Path(summary["manifest"]).is_file()
    assert len(summary["request_ids"]) == 1 and summary["request_ids"][0]
    assert summary["estimated_cost"] == 0  # the stand-in bills nothing (fal's price is for fal's requests)
    assert_stems_match(source, stems["target"], stems["residual"])
    assert "stand-in" not in out  # the notice goes to stderr only, so stdout stays valid JSON


def test_json_paths_are_absolute_when_the_output_folder_is_given_relative(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_source(music / "Guitar 01.wav", 44100, 1, "PCM_16")
    monkeypatch.chdir(music)
    rc = cli("separate", "Guitar 01.wav", "--prompt", "hi-hat", "--local", "--local-delay", "0", "--json",
             "--output-dir", "out")
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    for path in (*summary["stems"].values(), summary["manifest"]):
        assert Path(path).is_absolute() and Path(path).parent == music / "out" and Path(path).is_file()
    assert_stems_match(source, Path(summary["stems"]["target"]), Path(summary["stems"]["residual"]))


def test_a_result_on_a_drifting_clock_still_gives_aligned_stems(
        env: dict[str, Path], service: LocalFalService, music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stand-in's result runs 150 ppm fast (~240 samples late by the end window): the stems are made
    from the result read at a corrected rate, so clicks at the end line up like those at the start.
    (A mono source, whose target is the result itself, is tested in test_conform.)"""
    source = make_source(music / "Long take.wav", 44100, 2, "PCM_24", 40.0)
    service.faults.drift_result(150.0)
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url, "--json")
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    step = json.loads(Path(summary["manifest"]).read_text())["steps"][0]
    assert step["alignment"]["drift_samples"] > 200  # what the result did...
    assert "drift-corrected" in step["flags"] and "drift" not in step["flags"]  # ...and nothing is left
    stems = {label: Path(path) for label, path in summary["stems"].items()}
    assert_stems_match(source, stems["target"], stems["residual"])  # every click to ±1 sample, null exact


def test_a_long_japanese_name_and_prompt_give_stems_not_a_crash(
        env: dict[str, Path], service: LocalFalService, music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """56 Japanese characters (168 bytes) and a 35-character prompt made a 300-byte stem name: after the
    service had been paid the command ended in a traceback, "File name too long" (errno 36)."""
    name = "東京ドーム公演2026年12月7日アンコール最終リハーサル録音ステレオミックス・ボーカル入り第三版.wav"
    source = make_source(music / name, 44100, 2, "PCM_24")
    prompt = "アコースティックギターのアルペジオと歌声のハーモニーとストリングスの響き"
    rc = cli("separate", source.path, "--prompt", prompt, "--service-url", service.url)
    out, err = capsys.readouterr()
    assert rc == 0, err
    paths = printed_paths(out)
    assert all(len(path.name.encode()) <= 255 for path in paths.values())
    assert_stems_match(source, paths["target"], paths["residual"])
    assert service.stats()["submits"] == 1


def test_second_run_never_overwrites_the_first(env: dict[str, Path], service: LocalFalService,
                                               music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "Loop.wav", 48000, 1, "PCM_16", 1.0)
    args = ("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url)
    assert cli(*args) == 0
    first = printed_paths(capsys.readouterr().out)
    first_bytes = {label: path.read_bytes() for label, path in first.items()}
    assert cli(*args) == 0
    second = printed_paths(capsys.readouterr().out)
    assert second["target"].name == "Loop - hi-hat (2).target.wav"
    assert {label: path.read_bytes() for label, path in first.items()} == first_bytes


@pytest.mark.parametrize(("length", "part", "flags"), [
    ("1.25", slice(22050, 22050 + 55125), []),
    ("5", slice(22050, 110250), ["cut-at-end"]),  # past the end: cut there (2 s), and said so
])
def test_part_of_a_file_is_aligned_with_that_part(env: dict[str, Path], service: LocalFalService, music: Path,
                                                  capsys: pytest.CaptureFixture[str], length: str, part: slice,
                                                  flags: list[str]) -> None:
    source = make_source(music / "Take.wav", 44100, 2, "PCM_24", 2.5)
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
             "--start", "0.5", "--length", length)
    out, err = capsys.readouterr()
    assert rc == 0, err
    paths = printed_paths(out)
    assert_stems_match(source, paths["target"], paths["residual"], part)
    assert json.loads(paths["manifest"].read_text())["flags"] == flags
    assert ("warning: cut-at-end" in err) == bool(flags)


def test_broken_preset_files_of_yours_are_one_note_not_a_log_line_each(
        env: dict[str, Path], service: LocalFalService, music: Path, capsys: pytest.CaptureFixture[str],
        user_dirs: dict[str, Path]) -> None:
    presets = user_dirs["config"] / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    (presets / "a.yaml").write_text("name: [oops\n")
    (presets / "b.yaml").write_text("name: x\nprompt: y\noptions:\n  acceleration: warp\n")
    source = make_source(music / "Take.wav", 44100, 1, "PCM_16", 0.5)
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url)
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert err.count("some preset files have problems") == 1 and "preset problem" not in err
    rc = cli("separate", source.path, "--preset", "x", "--service-url", service.url)  # the broken one itself
    _, err = capsys.readouterr()
    assert rc == 2 and "b.yaml:4: options.acceleration" in err


# -- bad input: refused before anything is sent ------------------------------------------------------


def _zero_frames(path: Path) -> None:
    sf.write(str(path), np.zeros((0, 2)), 44100, subtype="PCM_16")


def _truncated(path: Path) -> None:
    whole = path.with_name("whole.wav")
    sf.write(str(whole), np.zeros((44100, 2)), 44100, subtype="PCM_24")
    path.write_bytes(whole.read_bytes()[:100_000])
    whole.unlink()


def _voc(path: Path) -> None:
    sf.write(str(path), np.zeros((800, 1)), 8000, subtype="PCM_16", format="VOC")


def _nan_float(path: Path) -> None:
    audio = np.full((90_000, 2), 0.1)
    audio[70_000, 1] = np.nan  # one damaged sample, past the first read block
    sf.write(str(path), audio, 44100, subtype="FLOAT")


def _huge_float(path: Path) -> None:
    audio = np.full((90_000, 2), 0.1)
    audio[100:102, 0] = 1e20  # finite, but its power overflowed float32 into stems that were all NaN, exit 0
    sf.write(str(path), audio, 44100, subtype="FLOAT")


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("missing.wav", None, "was not found"),
        ("nan.wav", _nan_float, "holds an invalid sample (not a number or infinite) at 1.587 s"),
        ("huge.wav", _huge_float, "holds an invalid sample (a value of 1e+20, far beyond any real audio"),
        ("a folder", lambda p: p.mkdir(), "is a folder, not an audio file"),
        # a FIFO: opening it to read waits for a writer, and the command hung for good
        ("pipe.wav", lambda p: os.mkfifo(p), "is not an ordinary file"),
        ("notes.wav", lambda p: p.write_text("these are my lyrics, not audio"), "not an audio file we can read"),
        ("empty.wav", _zero_frames, "contains no audio"),
        ("cut.wav", _truncated, "looks incomplete"),
        ("old.voc", _voc, "which sam-bridge does not handle"),
    ],
)
@pytest.mark.timeout(30)
def test_bad_source_is_refused_clearly(env: dict[str, Path], service: LocalFalService, music: Path,
                                       capsys: pytest.CaptureFixture[str], name: str,
                                       make: Callable[[Path], object] | None, expected: str) -> None:
    path = music / name
    if make is not None:
        make(path)
    before = entries(music)
    rc = cli("separate", path, "--prompt", "hi-hat", "--service-url", service.url)
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err and f"“{name}”" in err
    assert "Traceback" not in err
    assert entries(music) == before  # no Stems folder, nothing written
    assert service.stats()["calls"] == {}  # nothing was sent


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused(env: dict[str, Path], service: LocalFalService, music: Path,
                                 capsys: pytest.CaptureFixture[str], prompt: str) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    assert cli("separate", source.path, "--prompt", prompt, "--service-url", service.url) == 2
    err = capsys.readouterr().err
    assert "The prompt is empty" in err and '--prompt "piano playing"' in err
    assert entries(music) == ["a.wav"] and service.stats()["calls"] == {}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--subtype", "PCM_99"], "invalid choice: 'PCM_99'"),
        (["--output-format", "ogg"], "invalid choice: 'ogg'"),
        (["--local-delay", "-1"], "must be 0 or more"),
    ],
)
def test_unknown_option_is_refused(env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str],
                                   args: list[str], expected: str) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    with pytest.raises(SystemExit) as exit_info:
        cli("separate", source.path, "--prompt", "hi-hat", "--local", *args)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert entries(music) == ["a.wav"]


def test_option_out_of_range_is_refused(env: dict[str, Path], music: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    assert cli("separate", source.path, "--prompt", "hi-hat", "--local", "--candidates", "50") == 2
    err = capsys.readouterr().err
    assert "reranking_candidates" in err and "8" in err
    assert entries(music) == ["a.wav"]


@pytest.mark.parametrize(("flag", "value"), [("--length", "nan"), ("--start", "inf")])
def test_a_number_that_is_not_finite_is_refused_in_plain_words(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    assert cli("separate", source.path, "--prompt", "hi-hat", "--local", flag, value) == 2
    err = capsys.readouterr().err
    assert f"{flag[2:]}: should be a finite number, got {value}" in err and "Input should" not in err
    assert entries(music) == ["a.wav"]


def test_missing_key_says_how_to_set_it_and_mentions_local(env: dict[str, Path], music: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FAL_KEY")
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    assert cli("separate", source.path, "--prompt", "hi-hat") == 1
    err = capsys.readouterr().err
    assert "FAL_KEY is not set" in err
    assert "export FAL_KEY=" in err and "setx FAL_KEY" in err and "--local" in err
    assert entries(music) == ["a.wav"]


def test_output_folder_not_writable(env: dict[str, Path], service: LocalFalService, music: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    blocker = music / "not a folder"
    blocker.write_text("a regular file")
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
             "--output-dir", blocker / "Stems")
    err = capsys.readouterr().err
    assert rc == 2  # bad input, not a service problem (it was 1)
    assert "is a file (or lies inside one), not a folder" in err and "Give a folder" in err
    assert blocker.read_text() == "a regular file"
    assert service.stats()["submits"] == 0  # checked before any paid work


# -- the service says no ------------------------------------------------------------------------------


def run_failing(service: LocalFalService, music: Path, capsys: pytest.CaptureFixture[str],
                *extra: str) -> tuple[int, str, str, Path]:
    source = make_source(music / "Bass DI.wav", 44100, 2, "PCM_24", 1.0)
    out_dir = music / "out"
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
             "--output-dir", out_dir, *extra)
    out, err = capsys.readouterr()
    assert entries(out_dir) == []  # no partial stem, no temp file, no manifest
    return rc, out, err, out_dir


def test_wrong_key(env: dict[str, Path], music: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "wrong-key-fedcba9876543210"
    monkeypatch.setenv("FAL_KEY", wrong)
    with LocalFalService(key="right") as service:
        rc, out, err, _ = run_failing(service, music, capsys)
        assert service.stats()["submits"] == 0
    assert rc == 1
    assert "refused the API key" in err and "FAL_KEY" in err and "--local" in err
    assert wrong not in out + err


def test_401_from_the_service(env: dict[str, Path], service: LocalFalService, music: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    service.faults.fail("submit", 401, detail="No user found for Key ID and Secret")
    rc, _out, err, _ = run_failing(service, music, capsys)
    assert rc == 1
    assert "refused the API key (HTTP 401: No user found for Key ID and Secret)" in err
    assert "https://fal.ai/dashboard/keys" in err
    assert service.stats()["submits"] == 0


LOCKED = "User is locked. Reason: Exhausted balance. Top up your balance."  # fal's words, less its address


def test_a_locked_account_is_not_called_a_bad_key(env: dict[str, Path], service: LocalFalService, music: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """fal answers 403 "User is locked" to every billable call of an account out of credit: the key is
    fine, so the message must send the user to billing, not to their key."""
    service.faults.fail("submit", 403, detail=LOCKED)
    rc, _out, err, _ = run_failing(service, music, capsys)
    assert rc == 1
    assert "Your fal account is locked" in err and LOCKED in err
    assert "https://fal.ai/dashboard/billing" in err and "a new key does not help" in err
    assert "refused the API key" not in err and "dashboard/keys" not in err
    assert service.stats()["submits"] == 0


def test_422_names_the_field_and_message(env: dict[str, Path], service: LocalFalService, music: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    service.faults.fail("submit", 422, field="prompt", detail="Prompt is too vague")
    rc, _out, err, _ = run_failing(service, music, capsys)
    assert rc == 1
    assert "The service refused the request: prompt: Prompt is too vague" in err
    assert "Fix the named field" in err


def test_json_error_summary(env: dict[str, Path], service: LocalFalService, music: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    service.faults.fail("submit", 422, field="reranking_candidates", detail="Too many candidates")
    rc, out, err, _ = run_failing(service, music, capsys, "--json")
    assert rc == 1
    summary = json.loads(out)
    assert summary["ok"] is False and summary["error"] == "validation"
    assert "reranking_candidates: Too many candidates" in summary["message"]
    assert "reranking_candidates: Too many candidates" in err  # stderr still says it in words


def test_service_down_says_nothing_was_charged(env: dict[str, Path], music: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    url = closed_port_url()
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", url, "--output-dir", music / "o")
    err = capsys.readouterr().err
    assert rc == 1
    assert f"after {FAST_RETRY.attempts} tries" in err
    assert "Nothing was submitted, so nothing was charged" in err
    assert f"Is the service at {url} running?" in err
    assert entries(music / "o") == []


def test_service_unavailable_at_submit_says_nothing_was_charged(
        env: dict[str, Path], service: LocalFalService, music: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    service.faults.fail("submit", 503, times=FAST_RETRY.attempts)
    rc, _out, err, _ = run_failing(service, music, capsys)
    assert rc == 1
    assert "HTTP 503 at the submit after 4 tries: 503 Service Temporarily Unavailable." in err  # the proxy's
    assert "The job was not submitted, so nothing was charged" in err
    assert service.stats()["calls"]["submit"] == FAST_RETRY.attempts
    assert service.stats()["submits"] == 0


def test_failed_job_shows_the_service_message_and_last_log_lines(
        env: dict[str, Path], service: LocalFalService, music: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    service.faults.fail_job("CUDA error: out of memory")
    rc, _out, err, _ = run_failing(service, music, capsys)
    assert rc == 1
    assert "The separation failed at the service: CUDA error: out of memory" in err
    tail = err.split("Last service log lines:", 1)[1]
    assert "Loading audio (1.0 s, 2 ch, 44100 Hz)" in tail and "Separating 'hi-hat' chunk 1/1" in tail
    assert "Retry the job" in err and "charged again" in err  # the job failed there: no result to collect
    assert "--resume-request" not in err


def test_a_run_that_breaks_off_after_submitting_says_how_to_collect_the_paid_result(
        env: dict[str, Path], service: LocalFalService, music: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The service went away after it accepted the job: running the command again would pay again, so the
    message names the request, and `--resume-request` collects its result once the service answers."""
    service.faults.fail("stream", 503, times=1)
    service.faults.fail("status", 503, times=FAST_RETRY.attempts)
    rc, _out, err, out_dir = run_failing(service, music, capsys)
    assert rc == 1 and service.stats()["submits"] == 1
    request_id = re.search(r"--resume-request (\S+) once", err)
    assert request_id is not None, err
    assert "run the command again" not in err and "Is the service" not in err

    source = music / "Bass DI.wav"
    rc = cli("separate", source, "--prompt", "hi-hat", "--service-url", service.url, "--output-dir", out_dir,
             "--resume-request", request_id.group(1))
    out, _err = capsys.readouterr()
    assert rc == 0 and service.stats()["submits"] == 1  # collected, not paid again
    stems = printed_paths(out)
    target, residual = sf.read(stems["target"])[0], sf.read(stems["residual"])[0]
    assert np.max(np.abs(target + residual - sf.read(source)[0])) < 1e-6


def test_a_lost_submit_answer_keeps_its_own_hint_never_a_resume_that_would_send_it_again(
        env: dict[str, Path], service: LocalFalService, music: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Step 2 of a stem set reached the service but its answer was lost: resuming step 1 would send step 2
    again, maybe paying twice; the message says to check the dashboard instead."""
    source = make_source(music / "Band.wav", 44100, 2, "PCM_24", 1.0)
    service.faults.stall("submit", 0.0, times=1)  # step 1's submit goes through
    service.faults.lose_submit_answer(times=1)  # step 2's lands, its answer is lost
    rc = cli("separate", source.path, "--preset", "4-stems", "--service-url", service.url,
             "--output-dir", music / "out")
    err = capsys.readouterr().err
    assert rc == 1 and service.stats()["submits"] == 2
    assert "may or may not have been accepted" in err and "dashboard" in err
    assert "--resume-request" not in err


def test_stems_that_cannot_be_written_after_the_separation_say_it_is_done_and_how_to_collect_it(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "Bass DI.wav", 44100, 2, "PCM_24", 1.0)
    out = music / "out"
    with LocalFalService(key=TEST_KEY, job_time=3.0) as slow:  # the drive goes while it works
        def unplug_the_drive() -> None:
            wait_for(lambda: slow.stats()["running"] == 1, what="the service to work on it")
            out.rmdir()
            out.write_text("not a folder any more")

        unplug = threading.Thread(target=unplug_the_drive)
        unplug.start()
        rc = cli("separate", source.path, "--prompt", "bass", "--service-url", slow.url, "--output-dir", out)
        unplug.join()
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    request_id = re.search(r"The separation is done \(request (\S+)\): once that is fixed, run the same command "
                           r"for “Bass DI.wav” with --resume-request \1 to collect it instead of running it again",
                           err)
    assert request_id is not None, err
    assert "charged" not in err and "may still finish" not in err  # a stand-in, and it had finished


def test_the_built_in_stand_ins_requests_are_never_offered_for_collecting_later(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """They end with the run that started the stand-in: the folder's own hint stands alone."""
    source = make_source(music / "Bass DI.wav", 44100, 2, "PCM_24", 1.0)
    out = music / "out"

    def unplug_the_drive() -> None:
        wait_for(lambda: out.is_dir(), what="the output folder")  # made before the upload; 3 s of work follow
        out.rmdir()
        out.write_text("not a folder any more")

    unplug = threading.Thread(target=unplug_the_drive)
    unplug.start()
    rc = cli("separate", source.path, "--prompt", "bass", "--local", "--local-delay", "3", "--output-dir", out)
    unplug.join()
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "The stems could not be written" in err, err
    assert "--resume-request" not in err and "charged" not in err


def test_resume_request_is_for_one_file_and_its_steps(env: dict[str, Path], music: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, b = (make_source(music / f"{name}.wav", 44100, 1, "PCM_16", 0.2).path for name in "ab")
    assert cli("separate", a, b, "--prompt", "bass", "--local", "--resume-request", "r1") == 2
    assert cli("separate", a, "--prompt", "bass", "--service-url", "http://127.0.0.1:9", "--resume-request", "r1",
               "--resume-request", "r2") == 2
    assert "one per step of its preset (1 here)" in capsys.readouterr().err
    assert cli("separate", a, "--prompt", "bass", "--local", "--resume-request", "r1") == 2
    assert "the built-in stand-in's requests end with the run that made them" in capsys.readouterr().err


def test_a_request_the_service_no_longer_has_says_to_send_it_anew(
        env: dict[str, Path], service: LocalFalService, music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.2).path
    rc = cli("separate", source, "--prompt", "bass", "--service-url", service.url, "--output-dir", music / "out",
             "--resume-request", "0c3b-long-gone")
    err = capsys.readouterr().err
    assert rc == 1 and "no longer has this request" in err
    assert "Run the same command without --resume-request to send it anew." in err
    assert service.stats()["submits"] == 0


def test_not_a_tty_shows_no_progress_display(env: dict[str, Path], service: LocalFalService, music: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    assert cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url) == 0
    out, err = capsys.readouterr()
    assert "━" not in out + err and "service:" not in err and "\x1b[" not in out + err
    assert err.strip() == f"sam-bridge: using the service at {service.url} (a local stand-in, not SAM Audio)"
    assert set(printed_paths(out)) == {"target", "residual", "manifest"}


# -- as a real process: Ctrl-C, the key at DEBUG level, the terminal display ---------------------------


def start_cli(args: list[str | Path], env: dict[str, str], **popen: object) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bridge", *(str(a) for a in args)]
    return subprocess.Popen(command, env=env, cwd=ROOT, **popen)  # type: ignore[call-overload,no-any-return]


HOLD = 60.0  # seconds a stalled call waits: longer than any case; stopping the service releases it


@dataclass(frozen=True)
class Moment:
    """A moment in a job, seen from outside the command: the local service's fault injection (or a job
    ahead of it in the queue) holds the command there, and `reached` sees that it is there."""

    seconds: float  # length of the 44.1 kHz stereo 24-bit source (over 1 MiB: uploaded, not inlined)
    expected: str  # what stderr says
    submits: int  # the command's submits, as counted by the service
    cancels: int
    completed: int | None  # jobs the service finished (None: the job may still be running there)
    reached: Callable[[LocalFalService, Path], bool]  # (service, output folder)
    hold: Callable[[LocalFalService], object] = lambda _service: None
    job_time: float = 0.0  # the local service's seconds of work per job
    concurrency: int = 2  # the local service's workers
    blockers: int = 0  # long jobs submitted first, so the command's job waits in the queue


def calls(service: LocalFalService, kind: str) -> int:
    return int(service.stats()["calls"].get(kind, 0))


def following(service: LocalFalService) -> bool:
    """The command is following its job (so it has recorded the request id it would cancel)."""
    return calls(service, "stream") + calls(service, "status") >= 1


def size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # placed or removed since the folder was listed
        return 0


def writing_stems(service: LocalFalService, out_dir: Path) -> bool:
    """Both results are downloaded and audio is going into the hidden temp stems (past their headers:
    the conform's reader and writer threads are running), and no stem has its final name yet. (The
    output folder's write probe is a hidden temp too, but empty and long gone by then.)"""
    names = entries(out_dir)
    temps = [n for n in names if n.startswith(".sam-partial-") and n.endswith(".tmp")]
    return (calls(service, "download") >= 2 and len(temps) >= 2 and all(n.startswith(".") for n in names)
            and any(size_or_zero(out_dir / n) > 1 << 16 for n in temps))


MOMENTS = {
    "uploading": Moment(
        4.0, "before the job reached the service: nothing was charged", 0, 0, 0,
        reached=lambda service, _out: calls(service, "upload") >= 1,
        hold=lambda service: service.faults.stall("upload", HOLD)),
    "sending": Moment(
        1.0, "while the job was being sent: it may have reached the service", 1, 0, None,
        reached=lambda service, _out: service.stats()["submits"] >= 1,  # accepted, its answer held back
        hold=lambda service: service.faults.stall("submit", HOLD)),
    "queued": Moment(
        1.0, "the request at the service was cancelled", 1, 1, 0,
        reached=lambda service, _out: service.stats()["queued"] >= 1 and following(service),
        concurrency=1, job_time=HOLD, blockers=1),
    "running": Moment(
        1.0, "the request at the service was cancelled", 1, 1, 0,
        reached=lambda service, _out: service.stats()["running"] >= 1 and following(service),
        job_time=HOLD),
    "downloading": Moment(
        1.0, "the service had already finished the separation", 1, 0, 1,
        reached=lambda service, _out: calls(service, "download") >= 1,
        hold=lambda service: service.faults.stall("download", HOLD)),
    # Nothing at the service can hold the conform step: a 60 s source keeps its hidden temp stems on
    # disk for some 0.4 s (measured) and the test looks every millisecond. A Ctrl-C that came too late
    # would leave the stems under their final names (or exit 0), and the test would fail.
    "conforming": Moment(
        60.0, "the service had already finished the separation", 1, 0, 1, reached=writing_stems),
}


def submit_blockers(service: LocalFalService, count: int, folder: Path) -> None:
    if not count:
        return
    blocker = folder / "blocker.wav"
    sf.write(str(blocker), np.zeros(8000), 8000, subtype="PCM_16")
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY) as client:
        url = client.storage.upload(blocker, "audio/wav")
        for _ in range(count):
            client.submit("separate", {"audio_url": url, "prompt": "bass"})
    blocker.unlink()


def signal_when(proc: subprocess.Popen[bytes], at_moment: Callable[[], bool], what: str,
                signum: int = signal.SIGINT) -> None:
    """Send `signum` (SIGINT: what Ctrl-C sends) as soon as `at_moment()` holds. (Not SIGSTOP, check,
    SIGINT, SIGCONT: a signal pending while all threads are stopped may go to any thread on SIGCONT, and
    the main thread then stays blocked in its socket read.)"""
    wait_for(lambda: at_moment() or proc.poll() is not None, timeout=30, interval=0.001, what=what)
    assert proc.poll() is None, f"the command ended before the moment ({what}): {proc.communicate()}"
    proc.send_signal(signum)


@contextlib.contextmanager
def cli_process(args: list[str | Path], env: dict[str, str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`sam-bridge` as a real process with its output piped; killed if a test leaves it running."""
    proc = start_cli(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_says_what_happened_and_leaves_nothing(user_dirs: dict[str, Path], tmp_path: Path,
                                                       music: Path, moment: str) -> None:
    """A real SIGINT to `sam-bridge separate` at each moment of a job: exit code 130, a message saying
    what was charged, the request cancelled when it was at the service, and no file left anywhere."""
    case = MOMENTS[moment]
    source = make_source(music / "Long take.wav", 44100, 2, "PCM_24", case.seconds)
    before = source.path.read_bytes()
    out_dir, temp_dir = music / "out", tmp_path / "tmp"
    temp_dir.mkdir()  # the command's TMPDIR: its work folder must be gone afterwards too
    with LocalFalService(key=TEST_KEY, job_time=case.job_time, concurrency=case.concurrency) as service:
        submit_blockers(service, case.blockers, tmp_path)
        case.hold(service)
        with cli_process(["separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
                          "--output-dir", out_dir], data_env(FAL_KEY=TEST_KEY, TMPDIR=str(temp_dir))) as proc:
            signal_when(proc, lambda: case.reached(service, out_dir), moment)
            out, err = proc.communicate(timeout=30)
        stats = service.stats()
    text = err.decode()
    assert proc.returncode == 130, f"exit code {proc.returncode}: {text}"
    assert "Cancelled by Ctrl-C" in text and case.expected in text and "no stem was written" in text.lower(), text
    assert "Traceback" not in text and out == b""
    # a finished separation is said with the command that collects it without paying again (it said only
    # "no stem was written", and a user who ran the command again paid again)
    collect = re.search(r"with --resume-request (\S+)\.", text)
    assert (collect is not None) == ("already finished" in case.expected), text
    assert collect is None or "Long take.wav" in text
    assert case.completed is None or stats["completed"] == case.completed
    assert entries(out_dir) == []  # no stem, no hidden temp stem, no manifest
    assert entries(temp_dir) == []
    assert entries(music) == ["Long take.wav", "out"] and source.path.read_bytes() == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_kill_or_a_closed_terminal_cancels_the_running_request_like_ctrl_c(
        user_dirs: dict[str, Path], tmp_path: Path, music: Path, signum: signal.Signals) -> None:
    """Left running, the request would be billed with nobody to collect its result."""
    source = make_source(music / "Long take.wav", 44100, 2, "PCM_24", 1.0)
    out_dir, temp_dir = music / "out", tmp_path / "tmp"
    temp_dir.mkdir()
    with LocalFalService(key=TEST_KEY, job_time=HOLD) as service:
        with cli_process(["separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
                          "--output-dir", out_dir], data_env(FAL_KEY=TEST_KEY, TMPDIR=str(temp_dir))) as proc:
            signal_when(proc, lambda: service.stats()["running"] >= 1 and following(service), "the job to run",
                        signum)
            out, err = proc.communicate(timeout=30)
        stats = service.stats()
    text = err.decode()
    assert proc.returncode == 128 + signum, f"exit code {proc.returncode}: {text}"
    assert f"Cancelled by {signum.name}; the request at the service was cancelled" in text, text
    assert "Traceback" not in text and out == b""
    assert (stats["submits"], stats["cancels"]) == (1, 1)
    assert entries(out_dir) == [] and entries(temp_dir) == []


def test_what_a_killed_run_left_behind_is_swept_by_the_next_one(
        user_dirs: dict[str, Path], tmp_path: Path, music: Path) -> None:
    """SIGKILL cannot be caught: the hidden temp stems and the work folder stay. They carry the dead
    run's host and pid, so the next run (here or the daemon) removes them; a live run's are left alone."""
    source = make_source(music / "Long take.wav", 44100, 2, "PCM_24", 60.0)
    out_dir, temp_dir = music / "out", tmp_path / "tmp"
    temp_dir.mkdir()
    env = data_env(FAL_KEY=TEST_KEY, TMPDIR=str(temp_dir))
    args: list[str | Path] = ["separate", source.path, "--prompt", "hi-hat", "--output-dir", out_dir]
    with LocalFalService(key=TEST_KEY) as service:
        with cli_process([*args, "--service-url", service.url], env) as proc:
            signal_when(proc, lambda: writing_stems(service, out_dir), "the stems being written", signal.SIGKILL)
            proc.communicate(timeout=30)
        left = entries(out_dir)
        assert left and all(name.startswith(".sam-partial-cli@") for name in left), left
        assert [name for name in entries(temp_dir) if name.startswith("sam-bridge-")], entries(temp_dir)
        alive = out_dir / f".sam-partial-cli{owner_tag()}-0123456789ab.tmp"
        alive.write_bytes(b"a run still writing")  # a live process's: never swept
        done = subprocess.run([sys.executable, "-m", "bridge", *map(str, args), "--service-url", service.url],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [name for name in entries(out_dir) if name.startswith(".")] == [alive.name]
    assert entries(temp_dir) == []


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does before it runs the command


def test_under_nohup_a_closed_terminal_does_not_stop_the_run(
        user_dirs: dict[str, Path], tmp_path: Path, music: Path) -> None:
    source = make_source(music / "Take.wav", 44100, 2, "PCM_24", 1.0)
    with LocalFalService(key=TEST_KEY, job_time=1.0) as service:
        with cli_process(["separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
                          "--output-dir", music / "out"], data_env(FAL_KEY=TEST_KEY),
                         preexec_fn=_ignore_sighup) as proc:
            signal_when(proc, lambda: service.stats()["running"] >= 1, "the job to run", signal.SIGHUP)
            out, err = proc.communicate(timeout=60)
        stats = service.stats()
    assert proc.returncode == 0, err.decode()
    assert stats["cancels"] == 0 and len(printed_paths(out.decode())) == 3


def test_a_closed_terminal_with_the_progress_bar_on_it_exits_129_and_cancels(
        user_dirs: dict[str, Path], tmp_path: Path, music: Path) -> None:
    """The bar draws on the terminal, which is gone when SIGHUP comes: stopping the bar must not turn
    the cancel into a crash."""
    source = make_source(music / "Take.wav", 44100, 2, "PCM_24", 1.0)
    main_fd, terminal_fd = pty.openpty()
    with LocalFalService(key=TEST_KEY, job_time=HOLD) as service:
        proc = start_cli(["separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
                          "--output-dir", music / "out"], data_env(FAL_KEY=TEST_KEY, TERM="xterm"),
                         stdin=terminal_fd, stdout=terminal_fd, stderr=terminal_fd, start_new_session=True)
        os.close(terminal_fd)
        try:
            drained = bytearray()
            def running() -> bool:
                with contextlib.suppress(OSError):
                    while select.select([main_fd], [], [], 0)[0]:
                        drained.extend(os.read(main_fd, 65536))  # keep the terminal from filling up
                return (service.stats()["running"] >= 1 and following(service)) or proc.poll() is not None
            wait_for(running, timeout=30, interval=0.01, what="the job to run")
            assert proc.poll() is None, drained.decode(errors="replace")
            os.close(main_fd)  # the terminal window closes: writes to it fail from now on
            main_fd = -1
            proc.send_signal(signal.SIGHUP)
            proc.wait(timeout=30)
        finally:
            if main_fd >= 0:
                os.close(main_fd)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stats = service.stats()
    assert proc.returncode == 129
    assert (stats["submits"], stats["cancels"]) == (1, 1)
    assert entries(music / "out") == []


def test_key_never_appears_at_debug_level(user_dirs: dict[str, Path], service: LocalFalService,
                                          music: Path) -> None:
    source = make_source(music / "a.wav", 44100, 2, "PCM_24", 2.0)  # 0.5 MB: sent as a data URI
    big = make_source(music / "big.wav", 48000, 2, "PCM_24", 4.0)  # 1.1 MB: CDN token + upload
    runs: list[tuple[Path, str, Callable[[], object], int]] = [
        (source.path, TEST_KEY, lambda: None, 0),
        (big.path, TEST_KEY, lambda: None, 0),
        (source.path, TEST_KEY, lambda: service.faults.fail("submit", 422, field="prompt"), 1),
        (source.path, TEST_KEY, lambda: service.faults.fail_job("boom"), 1),
        (source.path, "wrong-secret-5a5a5a5a5a5a", lambda: None, 1),
    ]
    for number, (path, key, arrange, expected_rc) in enumerate(runs):
        arrange()
        out_dir = music / f"out{number}"
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "-vv", "separate", str(path), "--prompt", "hi-hat",
             "--service-url", service.url, "--output-dir", str(out_dir)],
            env=data_env(FAL_KEY=key), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        output = done.stdout + done.stderr
        assert done.returncode == expected_rc, output[-2000:]
        assert " DEBUG " in output and "HTTP Request" in output  # it really logged at DEBUG
        assert key not in output
        for file in out_dir.glob("*"):
            assert key not in file.read_text(errors="replace")


def test_terminal_display_shows_queue_position_service_logs_and_time(
        user_dirs: dict[str, Path], music: Path) -> None:
    """(With -v, which shows the service's log lines.) Two long jobs occupy the one-worker service, so our
    job waits at position 1; once the display
    has shown that, the long jobs are cancelled and ours runs."""
    blocker = music / "blocker.wav"
    sf.write(str(blocker), np.zeros(8000 * 20), 8000, subtype="PCM_16")  # 20 s: 20 s of work each
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    with LocalFalService(key=TEST_KEY, processing_delay=1.0, concurrency=1) as service, FalClient(
            ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY) as client:
        url = client.storage.upload(blocker, "audio/wav")
        blockers = [client.submit("separate", {"audio_url": url, "prompt": "bass"}) for _ in range(2)]
        master, slave = pty.openpty()
        proc = start_cli(["-v", "separate", source.path, "--prompt", "hi-hat", "--service-url", service.url],
                         data_env(FAL_KEY=TEST_KEY, COLUMNS="160", TERM="xterm"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        screen = b""
        try:
            for data in read_until_exit(master, proc):
                screen += data
                if blockers and b"position 1" in screen:
                    for handle in blockers:
                        client.cancel(handle)
                    blockers = []
            out = proc.stdout.read().decode() if proc.stdout else ""
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert proc.returncode == 0, text[-3000:]
    assert not blockers, "the display never showed queue position 1"
    assert "In the service's queue (position 1)" in text
    for line in ("Loading audio (0.5 s, 1 ch, 44100 Hz)", "Separating 'hi-hat' chunk 1/1", "Done"):
        assert f"service: {line}" in text
    assert re.search(r"━.*\d+%.*\d:\d\d:\d\d", text)  # bar, percentage, elapsed time
    assert re.search(r"done\s+━+\s+100%", text)
    assert set(printed_paths(out)) == {"target", "residual", "manifest"}  # stdout stays plain text


def read_until_exit(master: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> Iterator[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side of the terminal
                return
            if not data:
                return
            yield data
        elif proc.poll() is not None:
            return
    raise AssertionError("the command did not finish")


# -- several files ---------------------------------------------------------------------------------


def test_several_files_are_separated_in_turn_and_a_bad_one_is_skipped_with_its_reason(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = make_source(music / "Take 1.wav", 44100, 2, "PCM_24", seconds=1.0)
    second = make_source(music / "Take 2.flac", 48000, 1, "PCM_16", seconds=1.0, fmt="FLAC")
    broken = music / "notes.wav"
    broken.write_text("not audio at all")
    before = {p: p.read_bytes() for p in (first.path, second.path, broken)}
    rc = cli("separate", first.path, broken, second.path, "--prompt", "hi-hat", "--local",
             "--output-dir", music / "out")
    out, err = capsys.readouterr()
    assert rc == 2  # the bad file's exit code; the others were still done
    assert "notes.wav" in err and "1 of 3" not in err and "2 of 3 files separated" in err
    assert out.count("target: ") == 2 and "Take 1.wav:" in out and "Take 2.flac:" in out
    for source in (first, second):
        data, rate = sf.read(str(source.path), always_2d=True)
        target, target_rate = sf.read(
            str(music / "out" / f"{source.path.stem} - hi-hat.target.{source.path.suffix[1:]}"), always_2d=True)
        residual = sf.read(str(music / "out" / f"{source.path.stem} - hi-hat.residual.{source.path.suffix[1:]}"),
                           always_2d=True)[0]
        assert target.shape == residual.shape == data.shape and target_rate == rate
        assert np.max(np.abs(target + residual - data)) <= 2.0 ** -15  # each file's stems null against it
    assert {p: p.read_bytes() for p in before} == before


def test_a_file_whose_stems_folder_is_on_a_read_only_disk_is_skipped_and_the_others_are_done(
        env: dict[str, Path], music: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only (or full) disk under one file's Stems stopped the whole run: the files after it got
    nothing, though their own folders were writable."""
    import errno

    for folder in ("card", "disk"):
        (music / folder).mkdir()
    stuck = make_source(music / "card" / "a.wav", 44100, 1, "PCM_16", seconds=0.5)
    fine = make_source(music / "disk" / "b.wav", 44100, 1, "PCM_16", seconds=0.5)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == stuck.path.parent / "Stems":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = cli("separate", stuck.path, fine.path, "--prompt", "hi-hat", "--local", "--json")
    summaries = json.loads(capsys.readouterr().out)
    assert rc != 0 and [s["ok"] for s in summaries] == [False, True]
    assert summaries[0]["error"] == "disk_full" and "read-only" in summaries[0]["message"]
    assert Path(summaries[1]["stems"]["target"]).exists()


def test_several_files_with_json_give_one_summary_per_file(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_source(music / "a.wav", 44100, 1, "PCM_24", seconds=0.5)
    rc = cli("separate", good.path, music / "missing.wav", "--prompt", "hi-hat", "--local", "--json")
    summaries = json.loads(capsys.readouterr().out)
    assert rc == 2 and [s["source"] for s in summaries] == [str(good.path), str(music / "missing.wav")]
    assert summaries[0]["ok"] and Path(summaries[0]["stems"]["target"]).exists()
    assert not summaries[1]["ok"] and summaries[1]["error"] == "bad_source"
    assert "missing.wav" in summaries[1]["message"]


def test_a_problem_of_every_file_stops_the_run_once(
        env: dict[str, Path], music: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FAL_KEY")
    sources = [make_source(music / f"{n}.wav", 44100, 1, "PCM_16", seconds=0.3).path for n in range(3)]
    rc = cli("separate", *sources, "--prompt", "hi-hat")
    err = capsys.readouterr().err
    assert rc != 0 and "FAL_KEY" in err and "--local" in err
    assert err.count("sam-bridge:") == 1  # said once, not once per file
    assert "files separated" not in err and not list(music.glob("**/*target*"))


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg")
@pytest.mark.parametrize(("name", "codec"), [("no header.mp3", ["-c:a", "libmp3lame", "-b:a", "128k",
                                                                 "-write_xing", "0"]),
                                             ("broadcast.mp2", ["-c:a", "mp2"])])
def test_an_mpeg_file_without_a_length_header_gets_stems_of_its_decoded_length(
        env: dict[str, Path], music: Path, capsys: pytest.CaptureFixture[str], name: str, codec: list[str]) -> None:
    """libsndfile guesses such a file's length from its size (134,062 said, 133,632 decoded): the job was
    paid for and then failed at conform ("ended earlier than expected"), and every retry paid again."""
    wav = make_source(music / "take.wav", 44100, 2, "PCM_16")
    source = music / name
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav.path), *codec, str(source)], check=True)
    decoded = len(sf.read(str(source), dtype="float32")[0])
    assert sf.info(str(source)).frames != decoded  # the guess this is about
    rc = cli("separate", source, "--prompt", "hi-hat", "--local", "--local-delay", "0", "--json")
    out, err = capsys.readouterr()
    assert rc == 0, err
    stems = json.loads(out)["stems"]
    target, residual = (sf.read(stems[label], dtype="float64")[0] for label in ("target", "residual"))
    audio = sf.read(str(source), dtype="float64")[0]
    assert len(target) == len(residual) == decoded
    assert np.max(np.abs(audio - (target + residual))) < 1e-6  # float stems of a lossy source: they null


def fill_disk_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk holding `folder` fills as the stems are put in place there (ENOSPC from the link that
    places them): the service has answered by then."""
    real_link = os.link

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).is_relative_to(folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr("bridge.common.stems.os.link", link)


def test_a_disk_that_fills_under_the_local_stand_in_says_to_run_the_command_again(
        env: dict[str, Path], music: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI has no job to retry: it said "then retry the job: it costs nothing, the results are fetched
    again". With the built-in stand-in the way to the result is the same command again, at no charge."""
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    fill_disk_under(music / "out", monkeypatch)
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--local", "--local-delay", "0",
             "--output-dir", music / "out")
    err = capsys.readouterr().err
    assert rc != 0 and "is full" in err, err
    assert "Then run the same command again: the built-in stand-in charges nothing." in err, err
    assert "retry the job" not in err and "fetched again" not in err and "--resume-request" not in err, err
    assert [name for name in entries(music / "out") if not name.startswith(".")] == []


def test_a_disk_that_fills_after_the_service_answered_says_how_to_collect_it_without_paying(
        env: dict[str, Path], service: LocalFalService, music: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(music / "a.wav", 44100, 1, "PCM_16", 0.5)
    fill_disk_under(music / "out", monkeypatch)
    rc = cli("separate", source.path, "--prompt", "hi-hat", "--service-url", service.url,
             "--output-dir", music / "out")
    err = capsys.readouterr().err
    assert rc != 0 and "is full" in err, err
    request_id = re.search(r"--resume-request (\S+)", err)
    assert request_id is not None, err
    assert f"run the same command for “a.wav” with --resume-request {request_id[1]} to collect it" in err
    assert "retry the job" not in err and "it costs nothing" not in err, err
    assert service.stats()["submits"] == 1
