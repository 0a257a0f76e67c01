"""OSC end to end: python-osc clients on loopback talking to the real daemon process, which runs real jobs
against the local fal service. Stems are checked as audio (length, rate, channels, nulls, content)."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import __version__
from bridge.audio import bwf
from bridge.osc.addresses import MAX_REPLY_BYTES
from tests.conftest import TEST_KEY, wait_for
from tests.osc_helpers import OscClient, Received

pytestmark = pytest.mark.timeout(120)

PCM24_STEP = 1.0 / 2**23
# The local service's bands (bridge/local_service/separator.py): "singing voice" -> 300-3400 Hz,
# "bass guitar" -> below 200 Hz, "shaker" -> above 6 kHz, anything else -> 500-2000 Hz.
LOW_HZ, VOICE_HZ, HIGH_HZ = 100.0, 1000.0, 9000.0
STAGES = ["queued", "preparing", "uploading", "submitted", "running", "downloading", "conforming", "done"]


# --- sources and audio checks ------------------------------------------------------------------------

def three_tone_source(path: Path, seconds: float = 1.5, rate: int = 44100, channels: int = 2,
                      subtype: str = "PCM_24") -> Path:
    """100 Hz + 1 kHz + 9 kHz, one tone per band of the local service, over faint noise so that no part
    repeats another (an offset cannot null by accident); channels are scaled copies so that the
    service's mono result projects back onto every channel exactly."""
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.2 * np.sin(2 * np.pi * LOW_HZ * t) + 0.2 * np.sin(2 * np.pi * VOICE_HZ * t) \
        + 0.15 * np.sin(2 * np.pi * HIGH_HZ * t) + np.random.default_rng(5).uniform(-0.01, 0.01, len(t))
    gains = [1.0 - 0.4 * c / max(channels - 1, 1) for c in range(channels)]
    data = np.stack([mono * g for g in gains], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, subtype=subtype)
    return path


def read(path: Path | str) -> tuple[NDArray[np.float64], int]:
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    return data, int(rate)


def tone_share(data: NDArray[np.float64], rate: int, freq: float) -> float:
    """Fraction of the signal's energy within 30 Hz of `freq` (Hann-windowed, channels mixed)."""
    mono = data.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono)))) ** 2
    freqs = np.fft.rfftfreq(len(mono), 1 / rate)
    total = float(spectrum.sum())
    return float(spectrum[np.abs(freqs - freq) <= 30].sum()) / total if total > 0 else 0.0


def peak(data: NDArray[np.float64]) -> float:
    return float(np.max(np.abs(data))) if data.size else 0.0


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


# --- talking to the daemon ---------------------------------------------------------------------------

JOB_EVENTS = ("/sam/progress", "/sam/part", "/sam/stem", "/sam/done", "/sam/error")


class Device(OscClient):
    """A DAW device that keeps what it has not looked at yet: several jobs' events interleave on one
    socket, and a test reads one job's at a time."""

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server)
        self.backlog: list[Received] = []

    def next_where(self, wanted: Callable[[Received], bool], what: str, timeout: float = 30.0) -> Received:
        """The first datagram (kept earlier or arriving now) for which `wanted` is true."""
        for index, kept in enumerate(self.backlog):
            if wanted(kept):
                return self.backlog.pop(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = self.receive()
            except TimeoutError:
                continue
            if wanted(got):
                return got
            self.backlog.append(got)
        raise AssertionError(f"no {what} within {timeout:g} s; got {[(r.address, r.args) for r in self.backlog]}")

    def next_of(self, address: str, timeout: float = 30.0) -> Received:
        return self.next_where(lambda r: r.address == address, address, timeout)

    def ask(self, address: str, *args: Any, reply: str) -> list[Any]:
        self.send(address, *args)
        return self.next_of(reply).args

    def about(self, key: str) -> list[Received]:
        """Kept datagrams whose first argument is `key` (a job id or tag)."""
        return [r for r in self.backlog if r.args and r.args[0] == key]


@dataclass
class JobMessages:
    """A job's events as one client received them, in arrival order."""

    job_id: str
    addresses: list[str] = field(default_factory=list)
    progress: list[list[Any]] = field(default_factory=list)
    stems: list[tuple[str, str]] = field(default_factory=list)
    part: list[Any] | None = None  # /sam/part: start and length in seconds of the source the stems cover
    done: list[Any] | None = None
    error: list[Any] | None = None

    @property
    def states(self) -> list[str]:
        return [str(p[1]) for p in self.progress]


def follow_job(device: Device, job_id: str, timeout: float = 60.0) -> JobMessages:
    """The job's events up to its /sam/done or /sam/error (fails after `timeout` seconds)."""
    seen = JobMessages(job_id)
    deadline = time.monotonic() + timeout
    while seen.done is None and seen.error is None:
        got = device.next_where(lambda r: r.address in JOB_EVENTS and bool(r.args) and r.args[0] == job_id,
                                f"event of job {job_id} (after {seen.states})", deadline - time.monotonic())
        seen.addresses.append(got.address)
        if got.address == "/sam/progress":
            seen.progress.append(got.args)
        elif got.address == "/sam/part":
            seen.part = got.args[1:]
        elif got.address == "/sam/stem":
            seen.stems.append((str(got.args[1]), str(got.args[2])))
        elif got.address == "/sam/done":
            seen.done = got.args
        else:
            seen.error = got.args
    return seen


def _answer_to(tag: str) -> Callable[[Received], bool]:
    return lambda r: r.address in ("/sam/accepted", "/sam/error") and bool(r.args) and r.args[0] == tag


def separate(device: Device, source: Path | str, what: str, tag: str, *rest: Any, token: str = "") -> str:
    """Send /sam/separate; it must be accepted, echoing the tag. Returns the job id."""
    device.send("/sam/separate", *([token] if token else []), str(source), what, tag, *rest)
    got = device.next_where(_answer_to(tag), f"answer to /sam/separate {tag}")
    assert got.address == "/sam/accepted", got.args
    job_id = str(got.args[1])
    assert device.about(job_id) == []  # /sam/accepted comes before any event of its job
    return job_id


def refused(device: Device, source: Path | str, what: str, tag: str, *rest: Any) -> str:
    """Send /sam/separate expecting a refusal that echoes the tag; returns its message."""
    device.send("/sam/separate", str(source), what, tag, *rest)
    got = device.next_where(_answer_to(tag), f"answer to /sam/separate {tag}")
    assert got.address == "/sam/error", got.args
    return str(got.args[1])


def wait_until_state(device: Device, job_id: str, state: str, timeout: float = 30.0) -> None:
    got = device.next_where(lambda r: r.address == "/sam/progress" and r.args[0] == job_id
                            and r.args[1] in (state, "done", "failed", "cancelled"), f"{job_id} {state}", timeout)
    assert got.args[1] == state, got.args


def status_of(device: Device, *job_id: str) -> tuple[list[list[Any]], int]:
    device.send("/sam/status", *job_id)
    jobs = []
    while (got := device.next_where(lambda r: r.address.startswith("/sam/status/"), "status")).address \
            == "/sam/status/job":
        jobs.append(got.args)
    return jobs, int(got.args[0])


def assert_finished_in_order(seen: JobMessages, stem_count: int, steps: int = 1) -> None:
    """Progress only moves forward and ends at done 1.0, then /sam/part, every /sam/stem, then /sam/done. A
    stem set (`steps` service requests) goes back to "uploading" once per further request."""
    assert seen.error is None, seen.error
    tail = seen.addresses[-(stem_count + 2):]
    assert tail == ["/sam/part"] + ["/sam/stem"] * stem_count + ["/sam/done"], seen.addresses
    assert set(seen.addresses[:-(stem_count + 2)]) == {"/sam/progress"}
    # States move forward (a quick job may skip "running": it was done at the first status poll).
    ranks = [STAGES.index(state) for state in seen.states]
    back_to = [seen.states[i + 1] for i in range(len(ranks) - 1) if ranks[i + 1] < ranks[i]]
    assert back_to == ["uploading"] * (steps - 1), seen.states
    assert seen.states.count("submitted") == steps
    assert seen.states[0] == "queued" and seen.states[-1] == "done"
    assert {"uploading", "submitted", "conforming"} <= set(seen.states)
    fractions = [float(p[2]) for p in seen.progress]
    assert fractions[-1] == 1.0
    assert all(b >= a for a, b in pairwise(fractions)), fractions


@contextmanager
def device_for(info: dict[str, Any]) -> Iterator[Device]:
    device = Device((str(info["osc"]["host"]), int(info["osc"]["port"])))
    try:
        yield device
    finally:
        device.close()


@pytest.fixture
def daemon(daemon_factory: Any, service: Any) -> Iterator[Any]:
    """A started daemon against the local service; it must stop cleanly and log no traceback."""
    started = daemon_factory(service.url)
    started.info = started.start()
    yield started
    assert started.stop() == 0
    assert "Traceback" not in started.output(), started.output()


@pytest.fixture
def client(daemon: Any) -> Iterator[Device]:
    with device_for(daemon.info) as device:
        yield device


# --- the tests -----------------------------------------------------------------------------------------

def test_ping_answers_with_the_daemons_version(client: Device, daemon: Any) -> None:
    assert client.ask("/sam/ping", reply="/sam/pong") == [__version__, "ok"] == [daemon.info["version"], "ok"]


def test_presets_lists_the_library_then_ends_with_the_count(client: Device, user_dirs: dict[str, Path]) -> None:
    client.send("/sam/presets")
    names: list[str] = []
    while (got := client.receive()).address == "/sam/presets/list":
        assert got.size <= MAX_REPLY_BYTES
        names += got.args
    assert got.address == "/sam/presets/end"
    assert got.args == [len(names)]
    assert {"vocals", "4-stems", "bass", "piano"} <= set(names)
    published = json.loads((user_dirs["state"] / "presets.json").read_text())["presets"]
    assert sorted(names) == sorted(p["name"] for p in published)  # the same library the DAW scripts read


def test_separate_with_a_preset_gives_stems_that_null_against_the_source(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    source = three_tone_source(user_dirs["home"] / "Song" / "Guitar 01.wav")
    before = source.read_bytes()
    job_id = separate(client, source, "Vocals", "take-1")  # a preset name, in any case
    seen = follow_job(client, job_id)
    assert_finished_in_order(seen, 2)
    assert seen.done is not None and [label for label, _ in seen.stems] == ["target", "residual"]
    stems = dict(seen.stems)
    target, residual, manifest = Path(stems["target"]), Path(stems["residual"]), Path(seen.done[3])
    assert seen.done == [job_id, str(target), str(residual), str(manifest)]
    assert target.name == "Guitar 01 - vocals.target.wav" and target.parent == source.parent / "Stems"
    assert visible_files(target.parent) == sorted(p.name for p in (target, residual, manifest))

    src, rate = read(source)
    tgt, t_rate = read(target)
    res, r_rate = read(residual)
    assert (t_rate, r_rate) == (rate, rate) and tgt.shape == src.shape == res.shape
    assert sf.info(str(target)).subtype == sf.info(str(residual)).subtype == "PCM_24"
    assert peak(src - (tgt + res)) <= 2 * PCM24_STEP  # the stems null against the source
    assert tone_share(tgt, rate, VOICE_HZ) > 0.95  # the preset's prompt ("singing voice") reached the service
    assert tone_share(res, rate, VOICE_HZ) < 0.01
    recorded = json.loads(manifest.read_text())
    assert recorded["preset"] == "vocals" and recorded["steps"][0]["prompt"] == "singing voice"
    assert recorded["request"]["tag"] == "take-1"
    assert source.read_bytes() == before
    assert service.stats()["submits"] == 1


def test_separate_with_an_adhoc_prompt_writes_into_the_project(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    source = three_tone_source(user_dirs["home"] / "takes" / "perc.wav", rate=48000, channels=1,
                               subtype="PCM_16")
    project = user_dirs["home"] / "Projects" / "Song A"
    job_id = separate(client, source, "shaker", "", str(project))
    seen = follow_job(client, job_id)
    assert_finished_in_order(seen, 2)
    assert seen.done is not None
    stems = dict(seen.stems)
    target, residual = Path(stems["target"]), Path(stems["residual"])
    assert target.parent == project / "Stems" and target.name == "perc - shaker.target.wav"
    src, rate = read(source)
    tgt, t_rate = read(target)
    res, _ = read(residual)
    assert t_rate == rate == 48000 and tgt.shape == src.shape == res.shape == (len(src), 1)
    assert sf.info(str(target)).subtype == "PCM_16"
    assert peak(src - (tgt + res)) <= 2.0 / 2**15
    assert tone_share(tgt, rate, HIGH_HZ) > 0.95
    recorded = json.loads(Path(seen.done[3]).read_text())
    assert recorded["preset"] == "prompt" and recorded["steps"][0]["prompt"] == "shaker"
    assert visible_files(source.parent) == ["perc.wav"]  # nothing written beside the source
    assert service.stats()["submits"] == 1


def test_stem_set_gives_four_stems_that_sum_to_the_source(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    source = three_tone_source(user_dirs["home"] / "mix.wav")
    job_id = separate(client, source, "4-stems", "set")
    seen = follow_job(client, job_id, timeout=90)
    assert_finished_in_order(seen, 4, steps=3)
    assert [label for label, _ in seen.stems] == ["vocals", "drums", "bass", "other"]
    stems = {label: read(path) for label, path in seen.stems}
    src, rate = read(source)
    for label, (data, stem_rate) in stems.items():
        assert stem_rate == rate and data.shape == src.shape, label
    total = sum(data for data, _ in stems.values())
    assert peak(src - total) <= 1e-4
    assert tone_share(stems["vocals"][0], rate, VOICE_HZ) > 0.95  # each stem peeled its own band
    assert tone_share(stems["bass"][0], rate, LOW_HZ) > 0.95
    assert tone_share(stems["other"][0], rate, HIGH_HZ) > 0.95
    drums_energy = float(np.sum(stems["drums"][0] ** 2)) / float(np.sum(src**2))
    assert drums_energy < 1e-3  # "drum kit" (500-2000 Hz): the vocals step had already taken that band
    paths = dict(seen.stems)
    assert seen.done is not None and seen.done[:3] == [job_id, paths["vocals"], paths["other"]]
    assert Path(paths["bass"]).name == "mix - bass.wav" and Path(seen.done[3]).name == "mix - 4-stems.sam.json"
    assert service.stats()["submits"] == 3


def test_start_and_length_give_stems_of_exactly_that_part(client: Device, user_dirs: dict[str, Path]) -> None:
    source = three_tone_source(user_dirs["home"] / "long take.wav", seconds=2.0)
    bwf.append_chunks(source, bwf.with_time_reference(b"", 1_000_000), None)  # placed on a DAW timeline
    start, length = 0.5, 0.75
    job_id = separate(client, source, "bass", "part", "", start, length)
    seen = follow_job(client, job_id)
    assert_finished_in_order(seen, 2)
    src, rate = read(source)
    first, frames = round(start * rate), round(length * rate)
    stems = dict(seen.stems)
    tgt, _ = read(stems["target"])
    res, _ = read(stems["residual"])
    assert tgt.shape == res.shape == (frames, 2)
    assert peak(src[first:first + frames] - (tgt + res)) <= 2 * PCM24_STEP  # exactly that part, to the sample
    assert peak(src[first + 1:first + 1 + frames] - (tgt + res)) > 1e-3  # (one sample off would show)
    assert tone_share(tgt, rate, LOW_HZ) > 0.9
    for path in stems.values():
        bext = bwf.read_chunks(Path(path)).bext
        assert bext is not None and bwf.time_reference(bext) == 1_000_000 + first  # lands where the part is


def test_cancel_of_a_running_job_ends_it_and_cancels_at_the_service(
        daemon_factory: Any, user_dirs: dict[str, Path]) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=20.0) as slow:
        daemon = daemon_factory(slow.url, extra=["--concurrency", "1"])
        with device_for(daemon.start()) as device:
            source = three_tone_source(user_dirs["home"] / "slow.wav", seconds=0.5)
            job_id = separate(device, source, "piano", "c1")
            wait_until_state(device, job_id, "running")
            wait_for(lambda: slow.stats()["running"] == 1, timeout=10, what="the service to run the job")
            waiting = separate(device, source, "bass", "c2")  # queued behind it: one job at a time
            assert device.ask("/sam/cancel", waiting, reply="/sam/cancel/ok") == [waiting]
            queued_view = follow_job(device, waiting, timeout=10)
            assert queued_view.states == ["queued", "cancelled"]
            assert queued_view.error == [waiting, "Cancelled"]
            assert slow.stats()["submits"] == 1  # the queued one never reached the service

            assert device.ask("/sam/cancel", job_id, reply="/sam/cancel/ok") == [job_id]
            seen = follow_job(device, job_id, timeout=30)
            assert seen.error == [job_id, "Cancelled"] and seen.states[-1] == "cancelled"
            assert seen.stems == [] and seen.done is None
            wait_for(lambda: slow.stats()["cancels"] >= 1, timeout=20, what="the service to see the cancel")
            jobs, count = status_of(device, job_id)
            assert count == 1 and jobs[0][:2] == [job_id, "cancelled"]
            error = device.ask("/sam/cancel", job_id, reply="/sam/error")  # a second cancel: the job is over
            assert error[0] == job_id and "no queued or running job" in error[1]
            assert visible_files(source.parent / "Stems") == []
            assert slow.stats()["completed"] == 0
        assert daemon.stop() == 0


def test_a_cancelled_jobs_last_event_keeps_its_progress(daemon_factory: Any, user_dirs: dict[str, Path]) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=20.0) as slow:
        daemon = daemon_factory(slow.url)
        with device_for(daemon.start()) as device:
            job_id = separate(device, three_tone_source(user_dirs["home"] / "x.wav", seconds=0.5), "piano", "p")
            wait_until_state(device, job_id, "running")
            device.send("/sam/cancel", job_id)
            seen = follow_job(device, job_id, timeout=30)
            (_, state, reported, _, _), = status_of(device, job_id)[0]
        assert daemon.stop() == 0
    fractions = [float(p[2]) for p in seen.progress]
    assert state == "cancelled" and fractions[-2] >= 0.2  # it was running, past "submitted"
    assert fractions[-1] == pytest.approx(reported)  # the event agrees with /sam/status …
    assert fractions[-1] >= fractions[-2]  # … and the bar does not jump back


def test_a_job_that_ends_before_its_device_subscribes_again_after_a_restart_still_reaches_it(
        daemon_factory: Any, user_dirs: dict[str, Path]) -> None:
    """A restart forgets who sent a job and who subscribed, but resumes the job. Its end, heard by
    nobody, goes to the next client that subscribes (the Max device does every 5 s while a job is open)."""
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=4.0) as slow:
        first = daemon_factory(slow.url)
        source = three_tone_source(user_dirs["home"] / "Song" / "Keys.wav")
        with device_for(first.start()) as device:
            job_id = separate(device, source, "piano", "keys-1")
            wait_until_state(device, job_id, "running")
        first.kill()  # kill -9 while the service works on it
        restarted = daemon_factory(slow.url)
        with device_for(restarted.start()) as device:
            wait_for(lambda: status_of(device, job_id)[0][0][1] in ("done", "failed"), timeout=60,
                     what="the resumed job to end")
            assert device.backlog == []  # not subscribed: nothing of the job came here
            assert device.ask("/sam/subscribe", device.port, reply="/sam/subscribe/ok") == [device.port]
            seen = follow_job(device, job_id, timeout=10)
            assert device.ask("/sam/subscribe", device.port, reply="/sam/subscribe/ok") == [device.port]
            time.sleep(0.3)
            assert device.nothing_waiting()  # subscribing again (the keep-alive) does not repeat it
        assert restarted.stop() == 0
        assert slow.stats()["submits"] == 1  # polled after the restart, not paid again
    assert seen.error is None and seen.done is not None, seen
    stems = dict(seen.stems)
    assert [seen.done[1], seen.done[2]] == [stems["target"], stems["residual"]]
    src, rate = read(source)
    target, target_rate = read(stems["target"])
    residual, _ = read(stems["residual"])
    assert target_rate == rate and target.shape == residual.shape == src.shape
    assert peak(src - (target + residual)) <= 2 * PCM24_STEP  # the stems null against the source
    assert tone_share(target, rate, VOICE_HZ) > 0.9  # "piano" is the mid band: the 1 kHz tone


def test_status_reports_one_job_or_all_jobs(client: Device, user_dirs: dict[str, Path]) -> None:
    assert status_of(client) == ([], 0)
    first = separate(client, three_tone_source(user_dirs["home"] / "a.wav", seconds=0.5), "piano", "ta")
    follow_job(client, first)
    second = separate(client, three_tone_source(user_dirs["home"] / "b.wav", seconds=0.5), "bass", "tb")
    follow_job(client, second)
    jobs, count = status_of(client, first)
    assert count == 1 and jobs == [[first, "done", 1.0, "Done", "ta"]]
    jobs, count = status_of(client)
    assert count == 2 and [j[0] for j in jobs] == [second, first]  # most recently changed first
    assert [j[4] for j in jobs] == ["tb", "ta"]
    error = client.ask("/sam/status", "j-no-such-job", reply="/sam/error")
    assert error[0] == "j-no-such-job" and "There is no job" in error[1]


def test_subscriber_receives_the_events_of_another_clients_job(
        daemon: Any, client: Device, user_dirs: dict[str, Path]) -> None:
    with device_for(daemon.info) as watcher:
        assert watcher.ask("/sam/subscribe", watcher.port, reply="/sam/subscribe/ok") == [watcher.port]
        source = three_tone_source(user_dirs["home"] / "shared.wav", seconds=0.5)
        job_id = separate(client, source, "piano", "mine")
        owner_view = follow_job(client, job_id)
        watcher_view = follow_job(watcher, job_id)
        assert watcher_view.done == owner_view.done and watcher_view.stems == owner_view.stems
        assert watcher_view.progress == owner_view.progress
        assert watcher.backlog == []  # no /sam/accepted: that answer is the submitter's alone

        assert watcher.ask("/sam/unsubscribe", watcher.port, reply="/sam/unsubscribe/ok") == [watcher.port]
        unseen = separate(client, source, "bass", "unseen")
        follow_job(client, unseen)
        assert watcher.ask("/sam/subscribe", watcher.port, reply="/sam/subscribe/ok") == [watcher.port]
        seen_again = separate(client, source, "vocals", "seen")
        follow_job(client, seen_again)
        # One socket sends every event, in order: had the unsubscribed job's events reached the
        # watcher, they would have arrived before these.
        first_event = watcher.next_where(lambda r: r.address in JOB_EVENTS, "an event")
        assert first_event.args[0] == seen_again, (first_event.address, first_event.args)


def test_paths_outside_the_allowed_folders_are_refused(
        client: Device, service: Any, user_dirs: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = three_tone_source(tmp_path / "elsewhere" / "secret.wav", seconds=0.5)
    message = refused(client, elsewhere, "piano", "out")
    assert "outside the folders sam-bridge may read" in message and os.path.realpath(user_dirs["home"]) in message
    link = user_dirs["home"] / "innocent.wav"
    link.symlink_to(elsewhere)  # a link inside home does not lead out of it
    assert "outside the folders sam-bridge may read" in refused(client, link, "piano", "link")
    sneaky = f"{user_dirs['home']}/../elsewhere/secret.wav"
    assert "outside the folders sam-bridge may read" in refused(client, sneaky, "piano", "dots")
    inside = three_tone_source(user_dirs["home"] / "ok.wav", seconds=0.5)
    message = refused(client, inside, "piano", "proj", str(tmp_path / "elsewhere"))
    assert "outside the folders sam-bridge may write" in message
    assert "is not a full path" in refused(client, "ok.wav", "piano", "rel")
    assert status_of(client) == ([], 0) and service.stats()["submits"] == 0  # nothing was queued

    # The hot folders are allowed roots too (the daemon adds them to home).
    in_hot = three_tone_source(user_dirs["hot"] / "from-osc" / "clip.wav", seconds=0.5)
    job_id = separate(client, in_hot, "piano", "hot", str(user_dirs["home"] / "Proj"))
    seen = follow_job(client, job_id)
    assert seen.done is not None and Path(seen.done[1]).parent == user_dirs["home"] / "Proj" / "Stems"


def test_a_source_that_is_not_audio_gets_an_error(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    text = user_dirs["home"] / "notes.wav"
    text.write_text("this is not audio at all")
    job_id = separate(client, text, "piano", "bad")
    seen = follow_job(client, job_id)
    assert seen.done is None and seen.stems == [] and seen.states[-1] == "failed"
    assert seen.error is not None and seen.error[0] == job_id
    assert "is not an audio file we can read" in seen.error[1] and "Export it as WAV" in seen.error[1]
    assert text.read_text() == "this is not audio at all"
    assert "There is no audio file at" in refused(client, user_dirs["home"] / "gone.wav", "piano", "gone")
    assert service.stats()["submits"] == 0


def junk_datagrams(rng: random.Random, count: int) -> Iterator[bytes]:
    """Everything a broken patch, a port scanner or a fuzzer might send."""
    def message(address: str, *args: Any) -> bytes:
        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        return builder.build().dgram

    def nested_bundle() -> bytes:
        inner = OscBundleBuilder(IMMEDIATELY)
        inner.add_content(OscMessageBuilder("/sam/ping").build())
        outer = OscBundleBuilder(IMMEDIATELY)
        outer.add_content(inner.build())
        return outer.build().dgram

    makers: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randrange(1, 1500)),
        lambda: b"/sam/separate\x00\x00\x00,ss\x00" + rng.randbytes(rng.randrange(0, 40)),  # cut short
        lambda: message("/sam/separate", rng.random(), rng.randrange(100)),  # wrong types
        lambda: message("/sam/separate", "x" * 8000, "piano"),
        lambda: message("/sam/separate", "/etc/passwd", "piano"),
        lambda: message("/sam/cancel", rng.randbytes(16)),
        lambda: message("/sam/" + "".join(rng.choices("abz/", k=10))),
        lambda: message("/sam/subscribe", 70000),
        lambda: b"/sam/ping\x00\x00\x00,\xff\xfe\x00" + rng.randbytes(8),  # unknown type tags
        lambda: b"\xff\xfe/sam\x00" + rng.randbytes(20),
        lambda: b"#bundle\x00" + rng.randbytes(rng.randrange(0, 64)),
        nested_bundle,
    ]
    for n in range(count):
        yield makers[n % len(makers)]()


def test_daemon_stays_up_after_junk_datagrams(daemon: Any, client: Device, user_dirs: dict[str, Path]) -> None:
    with device_for(daemon.info) as flooder:
        for data in junk_datagrams(random.Random(11), 600):
            flooder.send_raw(data)
        assert flooder.receive().address == "/sam/error"  # junk is answered, not swallowed silently
    assert client.ask("/sam/ping", reply="/sam/pong") == [__version__, "ok"]
    assert daemon.proc.poll() is None
    source = three_tone_source(user_dirs["home"] / "after.wav", seconds=0.5)
    seen = follow_job(client, separate(client, source, "piano", "after"))  # and it still does the work
    assert seen.done is not None and Path(seen.done[3]).is_file()
    assert status_of(client)[1] == 1  # none of the junk became a job


def test_config_token_rate_limit_and_extra_roots_apply_over_osc(
        daemon_factory: Any, service: Any, user_dirs: dict[str, Path], tmp_path: Path) -> None:
    library = tmp_path / "Sample Library"
    config = (f"osc:\n  token: open-sesame\n  rate_limit: 2\n  rate_window: 600\n"
              f"allowed_source_roots: [{json.dumps(str(library))}]\n")
    daemon = daemon_factory(service.url, config=config)
    with device_for(daemon.start()) as device:
        assert "needs the shared token" in device.ask("/sam/ping", reply="/sam/error")[1]
        assert "token (first argument) is wrong" in device.ask("/sam/ping", "wrong", reply="/sam/error")[1]
        assert device.ask("/sam/ping", "open-sesame", reply="/sam/pong") == [__version__, "ok"]

        source = three_tone_source(library / "loop.wav", seconds=0.5)  # outside home, in an extra root
        project = str(user_dirs["home"] / "Proj")
        jobs = [separate(device, source, what, f"r{n}", project, token="open-sesame")
                for n, what in enumerate(("piano", "bass"))]
        device.send("/sam/separate", "open-sesame", str(source), "vocals", "r2", project)
        refusal = device.next_where(_answer_to("r2"), "the third request's answer")
        assert refusal.address == "/sam/error" and "Too many separations" in refusal.args[1]
        for job_id in jobs:
            assert follow_job(device, job_id).done is not None
        assert service.stats()["submits"] == 2  # the refused one was not queued
    assert daemon.stop() == 0
    assert "open-sesame" not in daemon.output()  # the token is never logged


def test_a_projects_own_preset_is_used_for_that_project_only(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    """`<project>/sam-bridge/presets/` travels with the session: the daemon resolves it per request."""
    project = user_dirs["home"] / "Projects" / "Song B"
    (project / "sam-bridge" / "presets").mkdir(parents=True)
    (project / "sam-bridge" / "presets" / "ours.yaml").write_text("name: kick-in\nprompt: kick drum\n")
    source = three_tone_source(user_dirs["home"] / "takes" / "drums.wav")
    job_id = separate(client, source, "Kick-In", "p1", str(project))  # the project's preset, any case
    seen = follow_job(client, job_id)
    assert seen.done is not None, seen.error
    stems = dict(seen.stems)
    target = Path(stems["target"])
    assert target.name == "drums - kick-in.target.wav" and target.parent == project / "Stems"
    tgt, rate = read(target)
    assert tone_share(tgt, rate, LOW_HZ) > 0.95  # "kick drum" → the stand-in's low band
    recorded = json.loads(Path(seen.done[3]).read_text())
    assert recorded["preset"] == "kick-in" and recorded["steps"][0]["prompt"] == "kick drum"

    other = separate(client, source, "kick-in", "p2")  # no project: not a preset here, so a prompt
    seen = follow_job(client, other)
    assert seen.done is not None
    assert json.loads(Path(seen.done[3]).read_text())["steps"][0]["prompt"] == "kick-in"


def test_a_broken_presets_name_gets_its_files_problems_not_a_paid_job_for_that_prompt(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    project = user_dirs["home"] / "Projects" / "Song C"
    (project / "sam-bridge" / "presets").mkdir(parents=True)
    (project / "sam-bridge" / "presets" / "ours.yaml").write_text(
        "name: kick-in\nprompt: kick drum\noptions:\n  reranking_candidates: 20\n")
    source = three_tone_source(user_dirs["home"] / "takes" / "drums.wav")
    message = refused(client, source, "kick-in", "p1", str(project))
    assert "ours.yaml:4" in message and "reranking_candidates" in message, message
    assert "kick-in" in preset_list(client, str(project))  # in the menu, so choosing it shows the problem
    assert service.stats()["submits"] == 0


def preset_list(device: Device, *project: str) -> list[str]:
    device.send("/sam/presets", *project)
    names: list[str] = []
    while (got := device.next_where(lambda r: r.address.startswith("/sam/presets/"), "presets")).address \
            != "/sam/presets/end":
        if got.address == "/sam/presets/list":
            names += got.args
    assert got.args == [len(names)]
    return names


def test_a_live_sets_own_presets_are_listed_and_used_for_its_processed_folder(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    """The Max device names `<Live project>/Samples/Processed` (where its stems go); the set's presets
    sit beside its .als, in `<Live project>/sam-bridge/presets/`."""
    live = user_dirs["home"] / "Music" / "Gig Project"
    (live / "Ableton Project Info").mkdir(parents=True)
    (live / "Gig.als").write_bytes(b"")
    (live / "sam-bridge" / "presets").mkdir(parents=True)
    (live / "sam-bridge" / "presets" / "set.yaml").write_text("name: Gig Whistle\nprompt: shaker\n")
    processed = live / "Samples" / "Processed"

    shared = preset_list(client)
    assert shared and "Gig Whistle" not in shared
    assert preset_list(client, "") == shared  # "" names no project
    listed = preset_list(client, str(processed))
    assert sorted(listed) == sorted([*shared, "Gig Whistle"])
    plain = user_dirs["home"] / "Music" / "Other" / "Samples" / "Processed"  # not inside a Live project
    (plain.parent.parent / "sam-bridge" / "presets").mkdir(parents=True)
    (plain.parent.parent / "sam-bridge" / "presets" / "x.yaml").write_text("name: not-here\nprompt: x\n")
    assert preset_list(client, str(plain)) == shared

    source = three_tone_source(live / "Samples" / "Recorded" / "take.wav")
    job_id = separate(client, source, "gig whistle", "g1", str(processed))
    seen = follow_job(client, job_id)
    assert seen.done is not None, seen.error
    target = Path(dict(seen.stems)["target"])
    assert target.parent == processed / "Stems"
    tgt, rate = read(target)
    assert tone_share(tgt, rate, HIGH_HZ) > 0.95  # "shaker" -> the stand-in's high band

    assert preset_list(client, "/etc") == shared  # outside the allowed folders: /sam/separate says so later


def test_an_output_folder_that_is_a_file_is_said_in_words_not_as_an_internal_error(
        client: Device, service: Any, user_dirs: dict[str, Path]) -> None:
    """A project whose `Stems` is a file, and a project folder that is itself a file: the job fails with the
    words a request file or the CLI gets, before anything is sent (it was "Internal error: FileExistsError"
    and "Internal error: NotADirectoryError")."""
    source = three_tone_source(user_dirs["home"] / "m" / "ok.wav", seconds=0.5)
    project = user_dirs["home"] / "Proj"
    project.mkdir()
    (project / "Stems").write_text("a file where the stems folder goes")
    project_file = user_dirs["home"] / "projfile"
    project_file.write_text("a file named like the project folder")
    for tag, folder in (("stems-file", project), ("project-file", project_file)):
        seen = follow_job(client, separate(client, source, "drums", tag, str(folder)))
        assert seen.error is not None and seen.stems == [], tag
        message = str(seen.error[1])
        assert "is a file (or lies inside one), not a folder" in message and "Give a folder" in message, message
        assert "Internal error" not in message and "report this" not in message, message
    assert (project / "Stems").read_text() == "a file where the stems folder goes"
    assert project_file.read_text() == "a file named like the project folder"
    assert service.stats()["submits"] == 0  # refused before anything was sent
