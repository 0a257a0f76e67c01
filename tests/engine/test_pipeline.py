"""The pipeline in-process against the local service: stem sets that sum back to the source, parts of a
source (start/length) with their timeline position, and resuming a step by its request id (also in the
work folder an interrupted attempt left behind)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.audio import bwf
from bridge.common.errors import SourceError
from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.pipeline import Pipeline
from bridge.engine.pipeline_hooks import StandaloneHooks
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient, RequestHandle
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from bridge.presets.recipe import recipe_for
from tests.conftest import TEST_KEY


class Hooks(StandaloneHooks):
    def __init__(self) -> None:
        self.states: list[JobState] = []
        self.fractions: list[float] = []
        self.handles: dict[int, RequestHandle] = {}
        self.log_lines: list[str] = []

    def progress(self, state: JobState, fraction: float, message: str, eta: float | None = None) -> None:
        if not self.states or self.states[-1] != state:
            self.states.append(state)
        self.fractions.append(fraction)

    def submitted(self, step: int, handle: RequestHandle) -> None:
        self.handles[step] = handle

    def service_log(self, line: str) -> None:
        self.log_lines.append(line)


class DaemonStopped(BaseException):
    """Stands in for the engine's ShuttingDown: leaves the run mid-way, its work folder kept."""


class StopBeforeSubmitting(Hooks):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop_at = step

    def submitting(self, step: int) -> None:
        if step == self.stop_at:
            raise DaemonStopped()


@pytest.fixture
def library() -> PresetLibrary:
    return PresetLibrary([("built-in", builtin_presets_dir())])


def mix(path: Path, seconds: float = 3.0, rate: int = 44100, channels: int = 2, subtype: str = "PCM_24",
        gain: float = 1.0) -> Path:
    rng = np.random.default_rng(7)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    mono = (0.25 * np.sin(2 * np.pi * 80 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t)
            + 0.15 * np.sin(2 * np.pi * 9000 * t) + 0.05 * rng.standard_normal(n))
    data = np.stack([gain * mono * g for g in np.linspace(1.0, 0.6, channels)], axis=1)
    sf.write(path, data, rate, subtype=subtype)
    return path


def test_stem_set_peels_and_sums_back_to_the_source(client: FalClient, service: LocalFalService,
                                                    library: PresetLibrary, tmp_path: Path) -> None:
    source = mix(tmp_path / "Song.wav")
    request = SeparationRequest(source=source, preset="4-stems")
    recipe = recipe_for(request, library)
    hooks = Hooks()
    result = Pipeline(client, poll_interval=0.02).run(request, recipe, hooks, tmp_path / "work")
    assert list(result.stems) == ["vocals", "drums", "bass", "other"]
    assert [p.name for p in result.stems.values()] == [
        "Song - vocals.wav", "Song - drums.wav", "Song - bass.wav", "Song - other.wav"]
    assert result.manifest.name == "Song - 4-stems.sam.json"
    from bridge.engine.manifest import MANIFEST_FIELDS
    assert list(json.loads(result.manifest.read_text())) == list(MANIFEST_FIELDS)  # the README's table, in order
    original, _ = sf.read(source, dtype="float64")
    total = np.zeros_like(original)
    for path in result.stems.values():
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, len(original), "PCM_24")
        stem, _ = sf.read(path, dtype="float64")
        total += stem
    assert np.max(np.abs(total - original)) <= 1.5 / 2**23  # sums back to the mix, to the last bit
    bass, _ = sf.read(result.stems["bass"], dtype="float64")
    assert np.sqrt(np.mean(bass**2)) > 0.05  # the low band went to "bass", not nowhere
    assert service.stats()["submits"] == 3  # one paid request per stem
    manifest = json.loads(result.manifest.read_text())
    assert [s["label"] for s in manifest["steps"]] == ["vocals", "drums", "bass"]
    assert all(s["request_id"] for s in manifest["steps"])
    assert all(s["null_test"] == "exact" and s["null_test_dbfs"] is None for s in manifest["steps"])
    assert hooks.fractions == sorted(hooks.fractions)  # the progress bar never goes back
    assert sum(line.startswith("Separating") for line in hooks.log_lines) == 3  # every service line, once


def test_a_stem_set_of_one_stem_is_named_like_a_stem_set(client: FalClient, service: LocalFalService,
                                                        library: PresetLibrary, tmp_path: Path) -> None:
    """`dialogue-cleanup` is `stems: [dialogue]`: its files are the stem and "other", as any stem set's."""
    source = mix(tmp_path / "Interview.wav")
    request = SeparationRequest(source=source, preset="dialogue-cleanup")
    result = Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), Hooks(),
                                                      tmp_path / "work")
    assert {label: path.name for label, path in result.stems.items()} == {
        "dialogue": "Interview - dialogue.wav", "other": "Interview - other.wav"}
    assert result.manifest.name == "Interview - dialogue-cleanup.sam.json"
    original, _ = sf.read(source, dtype="float64")
    total = sum(sf.read(path, dtype="float64")[0] for path in result.stems.values())
    assert np.max(np.abs(total - original)) <= 1.5 / 2**23
    assert service.stats()["submits"] == 1


def test_part_of_a_source_keeps_its_timeline_position(client: FalClient, library: PresetLibrary,
                                                      tmp_path: Path) -> None:
    rate = 48000
    source = mix(tmp_path / "Take.wav", seconds=4.0, rate=rate)
    bext = bwf.with_time_reference(b"sam-bridge test".ljust(602, b"\0"), 1_000_000)
    bwf.append_chunks(source, bext, None)
    request = SeparationRequest(source=source, prompt="bass", start=1.5, length=2.0)
    result = Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), Hooks(),
                                                      tmp_path / "work")
    original, _ = sf.read(source, dtype="float64")
    part = original[int(1.5 * rate): int(3.5 * rate)]
    target, _ = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert target.shape == part.shape == residual.shape
    assert np.max(np.abs(part - target - residual)) <= 1.5 / 2**23
    for path in result.stems.values():
        assert bwf.time_reference(bwf.read_chunks(path).bext or b"") == 1_000_000 + int(1.5 * rate)


def test_a_resumed_step_polls_its_request_instead_of_submitting(client: FalClient, service: LocalFalService,
                                                                library: PresetLibrary, tmp_path: Path) -> None:
    source = mix(tmp_path / "Vox.wav", seconds=1.0)
    request = SeparationRequest(source=source, prompt="vocals")
    recipe = recipe_for(request, library)
    first = Hooks()
    Pipeline(client, poll_interval=0.02).run(request, recipe, first, tmp_path / "w1")
    assert service.stats()["submits"] == 1
    again = Hooks()
    result = Pipeline(client, poll_interval=0.02).run(request, recipe, again, tmp_path / "w2", resume=first.handles)
    assert service.stats()["submits"] == 1  # nothing new was paid for
    assert again.handles == {}
    assert result.stems["target"].name == "Vox - vocals.target.wav"  # its own stems: neither overwritten nor
    assert not [p for p in (tmp_path / "Stems").iterdir() if "(2)" in p.name]  # written a second time


def test_stems_another_daemon_placed_while_this_run_fetched_them_are_not_written_again(
        client: FalClient, service: LocalFalService, library: PresetLibrary, tmp_path: Path) -> None:
    """A team job that changed hands while the database was down: the daemon that lost it and the one that
    took it over both fetch the same request's results. Whichever places second finds the first one's stems
    (by request id, just before placing) and writes nothing: no `… (2)` set."""
    source = mix(tmp_path / "take06.wav", seconds=1.0)
    request = SeparationRequest(source=source, prompt="piano")
    recipe = recipe_for(request, library)
    first = Hooks()
    Pipeline(client, poll_interval=0.02).run(request, recipe, first, tmp_path / "w1")
    placed_meanwhile = sorted((tmp_path / "Stems").iterdir())  # by the other daemon, after this one's
    # engine had looked for them (it found none then) and while this run fetched the results
    taker = Hooks()
    result = Pipeline(client, poll_interval=0.02).run(request, recipe, taker, tmp_path / "w2", resume=first.handles)
    assert sorted((tmp_path / "Stems").iterdir()) == placed_meanwhile
    assert result.manifest == tmp_path / "Stems" / "take06 - piano.sam.json"
    assert result.stems == {"target": tmp_path / "Stems" / "take06 - piano.target.wav",
                            "residual": tmp_path / "Stems" / "take06 - piano.residual.wav"}
    assert sf.info(str(result.stems["target"])).frames == 44100
    assert service.stats()["submits"] == 1


def sum_of_stems(stems: dict[str, Path]) -> np.ndarray:
    return sum((sf.read(path, dtype="float64")[0] for path in stems.values()), start=np.zeros(1))


def test_a_stem_set_resumes_in_the_work_folder_its_interrupted_attempt_left(
        client: FalClient, service: LocalFalService, library: PresetLibrary, tmp_path: Path) -> None:
    source = mix(tmp_path / "Song.wav", seconds=1.0)
    request = SeparationRequest(source=source, preset="4-stems")
    recipe = recipe_for(request, library)
    work = tmp_path / "work" / "job1"
    first = StopBeforeSubmitting(step=1)
    with pytest.raises(DaemonStopped):
        Pipeline(client, poll_interval=0.02).run(request, recipe, first, work, temp_tag="job1")
    assert list(first.handles) == [0] and service.stats()["submits"] == 1
    assert (work / "step0.residual.wav").exists()  # what made the resumed run fail before
    (work / "step1.service-target.wav").write_bytes(b"half a download")
    (work / "notes.txt").write_text("not ours")  # clearing the folder must spare anything not ours

    again = Hooks()
    result = Pipeline(client, poll_interval=0.02).run(request, recipe, again, work, resume=first.handles,
                                                      temp_tag="job1")
    assert service.stats()["submits"] == 3  # step 0 was polled again, never paid twice
    assert sorted(again.handles) == [1, 2]
    assert result.steps[0].request_id == first.handles[0].request_id
    assert [p.name for p in result.stems.values()] == [
        "Song - vocals.wav", "Song - drums.wav", "Song - bass.wav", "Song - other.wav"]
    original, _ = sf.read(source, dtype="float64")
    assert np.max(np.abs(sum_of_stems(result.stems) - original)) <= 1.5 / 2**23  # null test
    assert (work / "notes.txt").read_text() == "not ours"
    assert not (work / "step1.service-target.wav").exists()  # the stale download went, results came anew


def test_a_float_stem_set_sums_back_to_within_the_rounding_of_its_last_write(
        client: FalClient, library: PresetLibrary, tmp_path: Path) -> None:
    """Each intermediate stays 64-bit: the only rounding left is that of the stems' own FLOAT writes, and
    as each later stem's complement absorbs the earlier ones' rounding, only the final residual's remains."""
    source = mix(tmp_path / "Float.wav", seconds=1.0, subtype="FLOAT", gain=1.4)  # above full scale, too
    request = SeparationRequest(source=source, preset="4-stems")
    work = tmp_path / "work"
    result = Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), Hooks(), work)
    original, _ = sf.read(source, dtype="float64")
    assert all(sf.info(str(path)).subtype == "FLOAT" for path in result.stems.values())
    other, _ = sf.read(result.stems["other"], dtype="float64")
    error = np.max(np.abs(sum_of_stems(result.stems) - original))
    # at most half a float32 step of the final residual (2.6e-8 here; 1.5e-8 measured). When the upload copy
    # replaced the 64-bit intermediates with float32 ones, each step's rounding stayed in: 6.9e-8.
    assert error <= 2.0**-24 * np.max(np.abs(other)) + 1e-15
    assert error <= 1.2e-7 * np.max(np.abs(original))
    # the intermediates are still 64-bit, each exactly what the steps before it left
    left = original
    for index, label in enumerate(["vocals", "drums"]):
        intermediate = work / f"step{index}.residual.wav"
        assert sf.info(str(intermediate)).subtype == "DOUBLE"
        left = left - sf.read(result.stems[label], dtype="float64")[0]
        assert np.array_equal(sf.read(intermediate, dtype="float64")[0], left)


def test_a_source_rewritten_after_it_was_hashed_is_never_sent(client: FalClient, service: LocalFalService,
                                                              library: PresetLibrary, tmp_path: Path) -> None:
    """The daemon hashes the source (dedupe key, journal) before the run: if a DAW rewrites the file in
    between, the run stops before uploading, so the hash never describes other audio than was sent."""
    from bridge.common.errors import SourceError
    from bridge.engine.pipeline import file_fingerprint

    source = mix(tmp_path / "Take.wav", seconds=1.0)
    hashed_at = file_fingerprint(source)
    mix(source, seconds=1.2)  # re-rendered right after the hash
    request = SeparationRequest(source=source, prompt="piano", output_dir=tmp_path / "out")
    with pytest.raises(SourceError, match="changed while the job ran"):
        Pipeline(client).run(request, recipe_for(request, library), Hooks(), tmp_path / "work",
                             source_hash="0" * 64, source_fingerprint=hashed_at)
    assert service.stats()["calls"] == {} and service.stats()["submits"] == 0  # nothing reached the service
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (.ci/run installs it)")
def test_speech_over_a_hum_comes_back_aligned_at_22k(client: FalClient, library: PresetLibrary, tmp_path: Path) -> None:
    """Real speech (espeak-ng) over a 60 Hz hum, at 22.05 kHz: the 'dialogue' target is the speech, in place."""
    spoken = tmp_path / "spoken.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), "Isolate the voice from the mix, please."], check=True,
                   capture_output=True)
    speech, rate = sf.read(spoken, dtype="float64")
    assert rate == 22050
    t = np.arange(len(speech)) / rate
    hum = 0.3 * np.sin(2 * np.pi * 60 * t)
    source = tmp_path / "Interview.wav"
    sf.write(source, 0.5 * speech + hum, rate, subtype="PCM_16")
    request = SeparationRequest(source=source, preset="dialogue")
    result = Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), Hooks(),
                                                      tmp_path / "work")
    target, _ = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert len(target) == len(speech)
    lag = int(np.argmax(np.correlate(target[:rate], speech[:rate], "full"))) - (rate - 1)
    assert abs(lag) <= 1  # the words land where they were spoken
    speech_share = np.corrcoef(target, speech)[0, 1]
    hum_share = abs(np.corrcoef(target, hum)[0, 1])
    # the stand-in keeps 300-3400 Hz, so the voice fundamental (~120 Hz) stays behind: 0.7, not 1.0
    assert speech_share > 0.6 and hum_share < 0.1  # the voice went to the target, the hum did not
    assert abs(np.corrcoef(residual, hum)[0, 1]) > 0.9
    manifest = json.loads(result.manifest.read_text())
    assert manifest["steps"][0]["alignment"]["offset_samples"] == 0


def test_target_and_residual_download_at_the_same_time(client: FalClient, service: LocalFalService,
                                                       library: PresetLibrary, tmp_path: Path) -> None:
    """With the first download held by the service, the other one is already fetched: over the internet
    two connections fetch the pair in about the time of one."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import wait_for

    source = mix(tmp_path / "Pad.wav", seconds=2.0)
    request = SeparationRequest(source=source, prompt="piano")
    service.faults.stall("download", 4.0)  # the first download to arrive waits 4 s
    hooks = Hooks()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(Pipeline(client, poll_interval=0.02).run, request, recipe_for(request, library), hooks,
                          tmp_path / "work")
        # one download in flight (held), the other already asked for: they overlap
        wait_for(lambda: int(service.stats()["calls"].get("download", 0)) >= 2 or run.done(), timeout=3.0,
                 what="the second download while the first is held")
        assert not run.done() and service.stats()["calls"]["download"] == 2
        result = run.result(timeout=30)
    original, _ = sf.read(source, dtype="float64")
    target, _ = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert np.max(np.abs(original - target - residual)) <= 1.5 / 2**23
    assert JobState.downloading in hooks.states
    assert hooks.fractions == sorted(hooks.fractions)  # one bar for both files, never going back


@pytest.mark.parametrize("shrink", [True, False])
def test_a_wav_goes_to_a_remote_service_as_flac(client: FalClient, service: LocalFalService, library: PresetLibrary,
                                               tmp_path: Path, shrink: bool) -> None:
    """To fal (not on this machine) a PCM WAV is sent as FLAC: the same samples, fewer bytes. The stand-in
    is on loopback, where it is sent as is unless told otherwise (the default is tested below)."""
    rng = np.random.default_rng(3)
    rate, seconds = 44100, 3.0
    t = np.arange(int(rate * seconds)) / rate
    music = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    music = music + 0.001 * rng.standard_normal(len(t))  # a quiet noise floor, as in real recordings
    source = tmp_path / "Keys.wav"
    sf.write(source, np.stack([music, 0.8 * music], axis=1), rate, subtype="PCM_24")
    request = SeparationRequest(source=source, prompt="piano")
    pipeline = Pipeline(client, poll_interval=0.02, shrink_uploads=shrink)
    result = pipeline.run(request, recipe_for(request, library), Hooks(), tmp_path / "work")
    upload = json.loads(result.manifest.read_text())["steps"][0]["upload"]
    if shrink:
        assert upload["content_type"] == "audio/flac" and upload["source_file_as_is"] is False
        assert upload["bytes"] < 0.8 * source.stat().st_size
    else:
        assert upload == {"content_type": "audio/wav", "bytes": source.stat().st_size, "source_file_as_is": True}
    original, _ = sf.read(source, dtype="float64")
    target, _ = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert np.max(np.abs(original - target - residual)) <= 1.5 / 2**23
    assert service.stats()["submits"] == 1
    assert sorted(p.name for p in (tmp_path / "work").rglob("*") if p.is_file()) == []  # the copy is gone


@pytest.mark.parametrize("rate", [44_100, 88_200, 96_000])
def test_stems_line_up_when_the_service_hears_our_mono_48k_mix(client: FalClient, service: LocalFalService,
                                                               library: PresetLibrary, tmp_path: Path,
                                                               rate: int) -> None:
    """The upload is the source's mono mix at 48 kHz (no bigger than a plain mono 48 kHz 24-bit FLAC of it);
    the stems still land on the source's samples, null against it, and keep its stereo image."""
    import soxr

    from tests.audio_fixtures import click_train, lag_at, level_dbfs

    clicks, _ = click_train(rate, 4.0, amplitude=0.3)
    t = np.arange(len(clicks)) / rate
    left = clicks + 0.3 * np.sin(2 * np.pi * 1000 * t)  # in the stand-in's 500-2000 Hz band ("piano")
    right = 0.3 * np.sin(2 * np.pi * 100 * t)  # outside it: belongs to the residual
    source = tmp_path / "Keys.wav"
    sf.write(source, np.stack([left, right], axis=1), rate, subtype="PCM_24")
    request = SeparationRequest(source=source, prompt="piano")
    pipeline = Pipeline(client, poll_interval=0.02, shrink_uploads=True)
    result = pipeline.run(request, recipe_for(request, library), Hooks(), tmp_path / "work")
    manifest = json.loads(result.manifest.read_text())
    floor_file = tmp_path / "floor.flac"
    original, _ = sf.read(source, dtype="float64")
    sf.write(floor_file, soxr.resample(original.mean(axis=1), rate, 48_000, quality="HQ"), 48_000, subtype="PCM_24")
    upload = manifest["steps"][0]["upload"]
    assert upload["content_type"] == "audio/flac" and upload["bytes"] <= 1.05 * floor_file.stat().st_size
    assert manifest["steps"][0]["alignment"]["offset_samples"] == 0
    assert manifest["steps"][0]["alignment"]["drift_samples"] == 0
    target, target_rate = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert target_rate == rate and target.shape == original.shape
    assert np.max(np.abs(original - target - residual)) <= 1.5 / 2**23  # the null test
    tone = 0.3 * np.sin(2 * np.pi * 1000 * t)
    assert lag_at(target[:, 0], tone, rate, rate) == 0  # on the source's own samples
    assert level_dbfs(target[:, 1]) < level_dbfs(target[:, 0]) - 30  # the right channel's 100 Hz stayed out


def test_uploads_shrink_only_when_the_service_is_elsewhere(client: FalClient) -> None:
    assert Pipeline(client).shrinks_uploads() is False  # the stand-in: loopback
    remote = FalClient(ApiKey(TEST_KEY), queue_url="https://queue.example.invalid", rest_url="https://rest.example.invalid")
    with remote:  # never called: only its address is looked at
        assert Pipeline(remote).shrinks_uploads() is True


def test_an_upload_encoded_while_it_is_sent_in_parts_still_gives_exact_stems(
        client: FalClient, service: LocalFalService, library: PresetLibrary, tmp_path: Path) -> None:
    """The part's mono 48 kHz FLAC goes out in multipart parts as it is encoded (small parts here); the
    service hears exactly the whole-file encode, the stems land on the source's samples and null."""
    from bridge.audio.source import make_upload_file, probe_source

    rng = np.random.default_rng(11)
    rate = 44_100
    source = tmp_path / "Take.wav"
    sf.write(source, 0.1 * rng.standard_normal((rate * 6, 2)), rate, subtype="PCM_24")
    client.storage.data_uri_limit, client.storage.part_size = 0, 128 * 1024
    request = SeparationRequest(source=source, prompt="piano", start=0.5, length=5.0)
    result = Pipeline(client, poll_interval=0.02, shrink_uploads=True).run(
        request, recipe_for(request, library), Hooks(), tmp_path / "work")
    manifest = json.loads(result.manifest.read_text())
    upload = manifest["steps"][0]["upload"]
    whole, _ = make_upload_file(probe_source(source), rate // 2, rate * 5, tmp_path / "whole", shrink=True)
    assert upload == {"content_type": "audio/flac", "bytes": whole.stat().st_size, "source_file_as_is": False,
                      "streamed": True}
    assert service.stats()["calls"]["multipart"] >= 1 + 3 + 1  # begun, >= 3 parts, completed
    assert manifest["steps"][0]["alignment"]["offset_samples"] == 0
    original, _ = sf.read(source, dtype="float64", start=rate // 2, frames=rate * 5)
    target, _ = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert target.shape == original.shape
    assert np.max(np.abs(original - target - residual)) <= 1.5 / 2**23  # the null test
    assert sorted(p.name for p in (tmp_path / "work").rglob("*") if p.is_file()) == []


@pytest.mark.parametrize("parts", [True, False])
def test_when_fals_cdn_fails_the_whole_file_encode_goes_to_fals_storage(
        client: FalClient, service: LocalFalService, library: PresetLibrary, tmp_path: Path, parts: bool) -> None:
    """fal's storage takes one PUT of a known length: the part is then encoded whole (as a partial file, renamed
    when complete), sent, and removed; the stems are as exact as ever."""
    from bridge.audio.source import make_upload_file, probe_source

    rng = np.random.default_rng(12)
    source = tmp_path / "Take.wav"
    sf.write(source, 0.1 * rng.standard_normal((44_100 * 3, 2)), 44_100, subtype="PCM_24")
    client.storage.data_uri_limit = 0
    if parts:  # the multipart path (the file is made while sent), else one POST of the file made in memory
        client.storage.part_size = 96 * 1024
    service.faults.fail("multipart" if parts else "upload", 500, times=1000)
    request = SeparationRequest(source=source, prompt="piano")
    result = Pipeline(client, poll_interval=0.02, shrink_uploads=True).run(
        request, recipe_for(request, library), Hooks(), tmp_path / "work")
    upload = json.loads(result.manifest.read_text())["steps"][0]["upload"]
    whole, _ = make_upload_file(probe_source(source), 0, 44_100 * 3, tmp_path / "whole", shrink=True)
    assert upload == {"content_type": "audio/flac", "bytes": whole.stat().st_size, "source_file_as_is": False,
                      "streamed": False}
    assert service.stats()["calls"]["storage"] == 2  # initiate + the one PUT
    original, _ = sf.read(source, dtype="float64")
    target, _ = sf.read(result.stems["target"], dtype="float64")
    residual, _ = sf.read(result.stems["residual"], dtype="float64")
    assert np.max(np.abs(original - target - residual)) <= 1.5 / 2**23
    assert sorted(p.name for p in (tmp_path / "work").rglob("*") if p.is_file()) == []  # the whole file is gone


def test_a_source_still_being_written_while_it_uploads_is_not_sent(service: LocalFalService,
                                                                   library: PresetLibrary, tmp_path: Path) -> None:
    """A request file or OSC message can name a file the DAW is still rendering (no settle window there).
    The file was uploaded, submitted and paid for, and only then the job failed because it had changed.
    It is now checked again after the upload, before the submit: nothing is paid for."""
    import threading

    source = mix(tmp_path / "Render.wav")
    service.faults.stall("upload", 1.0)  # the upload's answer comes a second late
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, data_uri_limit=0) as client:
        request = SeparationRequest(source=source, prompt="bass guitar")

        def render_goes_on() -> None:  # the DAW writes more of the file while it is uploaded
            while service.stats()["calls"].get("upload", 0) == 0:
                threading.Event().wait(0.01)
            with open(source, "ab") as out:
                out.write(b"\0" * 4096)

        writer = threading.Thread(target=render_goes_on)
        writer.start()
        with pytest.raises(SourceError, match="changed while it was uploaded"):
            Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), Hooks(), tmp_path / "w")
        writer.join()
    assert service.stats()["submits"] == 0
