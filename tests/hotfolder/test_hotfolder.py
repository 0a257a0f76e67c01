"""Hot-folder watcher against real watchdog observers on temp folders, with real files.

`RecordingSink` stands in for the job engine behind `bridge.common.jobs.JobSink`: it records every request
(with what the file held at submit time), returns job ids with the engine's idempotency semantics,
and lets a test finish jobs with `JobEvent`s.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from watchdog.observers.polling import PollingObserver

from bridge.common.jobs import JobEvent, JobState, JobView, RequestRejected
from bridge.common.request import Origin, SeparationRequest
from bridge.hotfolder import jobs
from bridge.hotfolder.names import error_file_for
from bridge.hotfolder.watcher import HotFolder, HotFolderWatcher

SETTLE = 0.3
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")  # watchdog's own race note
PRESETS = ["vocals", "4-stems", "piano"]


# ---- the engine stand-in ---------------------------------------------------------------------------


@dataclass
class Submission:
    request: SeparationRequest
    job_id: str
    at: float  # time.monotonic()
    size: int  # what the file held when it was submitted
    sha256: str


@dataclass
class RecordingSink:
    name: str = "sink"
    on_submit: Callable[[RecordingSink, SeparationRequest, str], None] | None = None
    submissions: list[Submission] = field(default_factory=list)
    views: dict[str, JobView] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    listeners: list[Callable[[JobEvent], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def submit(self, request: SeparationRequest) -> str:
        if request.preset not in (None, *PRESETS):
            raise RequestRejected(f'Unknown preset "{request.preset}".')
        data = request.source.read_bytes()
        with self.lock:
            key = request.idempotency_key or ""
            for job_id in self.keys.get(key, []):
                if self.views[job_id].state not in (JobState.failed, JobState.cancelled):
                    return job_id  # the engine: an active or done job with this key is that job
            job_id = f"{self.name}-{next(self.counter)}"
            self.keys.setdefault(key, []).append(job_id)
            now = time.time()
            self.views[job_id] = JobView(job_id, request.tag, str(request.source), request.preset or "",
                                         JobState.queued, 0.0, "queued", now, now, request.origin.value)
            self.submissions.append(Submission(request, job_id, time.monotonic(), len(data),
                                               hashlib.sha256(data).hexdigest()))
        if self.on_submit:
            self.on_submit(self, request, job_id)
        return job_id

    def finish(self, job_id: str, state: JobState, error: str | None = None,
               stems: dict[str, str] | None = None) -> None:
        with self.lock:
            view = self.views[job_id]
            self.views[job_id] = JobView(view.job_id, view.tag, view.source, view.what, state, 1.0,
                                         state.value, view.created_at, time.time(), view.origin, stems or {},
                                         None, error)
            listeners = list(self.listeners)
        event = JobEvent(job_id, view.tag, state, 1.0, state.value, stems or {}, None, error,
                         origin=view.origin)  # the engine names the way in on final events
        for listener in listeners:
            listener(event)

    def cancel(self, job_id: str) -> bool:
        return False

    def get(self, job_id: str) -> JobView | None:
        with self.lock:
            return self.views.get(job_id)

    def jobs(self, active_only: bool = False) -> list[JobView]:
        with self.lock:
            return [v for v in self.views.values() if not (active_only and v.state.finished)]

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        with self.lock:
            self.listeners.append(listener)

        def unsubscribe() -> None:
            with self.lock:
                self.listeners.remove(listener)

        return unsubscribe

    def preset_names(self) -> list[str]:
        return list(PRESETS)

    def sources(self) -> list[str]:
        with self.lock:
            return [s.request.source.name for s in self.submissions]

    def by_name(self, name: str) -> Submission:
        with self.lock:
            matches = [s for s in self.submissions if s.request.source.name == name]
        assert len(matches) == 1, f"{name}: {len(matches)} submissions"
        return matches[0]


# ---- helpers ---------------------------------------------------------------------------------------


def wav_bytes(seconds: float = 0.25, rate: int = 48000, channels: int = 2, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    frames = int(seconds * rate)
    data = (rng.uniform(-0.5, 0.5, size=(frames, channels)) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def drop(path: Path, data: bytes | None = None) -> Path:
    """Write a file whole and rename it into place, as a careful writer does."""
    temp = path.with_name(path.name + ".part")
    temp.write_bytes(data if data is not None else wav_bytes(seed=hash(path.name) % 1000))
    os.replace(temp, path)
    return path


def encoded(fmt: str, seconds: float, seed: int, **kwargs: str) -> bytes:
    buffer = io.BytesIO()
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, (int(48000 * seconds), 2))
    sf.write(buffer, audio, 48000, format=fmt, **kwargs)
    return buffer.getvalue()


def copy_with_pauses(path: Path, data: bytes, parts: int, pause: float) -> None:
    """A copy over a slow network: a piece, then a pause, until the file is whole."""
    with open(path, "wb") as handle:
        for part in range(parts):
            handle.write(data[part * len(data) // parts : (part + 1) * len(data) // parts])
            handle.flush()
            time.sleep(pause)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def fast_sidecar_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar edited after its file's job waits 5 × the folder's settle time here, not 10 s at least."""
    monkeypatch.setattr(jobs, "SIDECAR_EDIT_SETTLE", 0.0)


@pytest.fixture
def hot(tmp_path: Path) -> Path:
    folder = tmp_path / "hot"
    folder.mkdir()
    return folder


@pytest.fixture
def run_watcher() -> Iterator[Callable[..., HotFolderWatcher]]:
    started: list[HotFolderWatcher] = []

    def start(sink: RecordingSink, folders: list[HotFolder], instance_id: str = "studio-a",
              **kwargs: object) -> HotFolderWatcher:
        kwargs.setdefault("rescan_interval", 60.0)  # events, not rescans, must do the work
        watcher = HotFolderWatcher(sink, folders, instance_id=instance_id, **kwargs)  # type: ignore[arg-type]
        watcher.start()
        started.append(watcher)
        return watcher

    start.started = started  # type: ignore[attr-defined]
    yield start
    for watcher in started:
        watcher.stop()


def started_watchers(run_watcher: Callable[..., HotFolderWatcher]) -> list[HotFolderWatcher]:
    return run_watcher.started  # type: ignore[attr-defined, no-any-return]


def folder(path: Path, **kwargs: object) -> HotFolder:
    kwargs.setdefault("preset", "vocals")
    kwargs.setdefault("settle_seconds", SETTLE)
    return HotFolder(path=path, **kwargs)  # type: ignore[arg-type]


# ---- writers -------------------------------------------------------------------------------------


class SlowWavWriter(threading.Thread):
    """Writes a WAV the way DAWs render: audio in chunks, the header's sizes made right only at the end.

    header "zeros": sizes are 0 until the end (soundfile then reads 0 frames);
    header "lagging": sizes are updated every few chunks, so they describe less than is on disk
    (soundfile then reads a shorter, perfectly valid file)."""

    def __init__(self, path: Path, data: bytes, duration: float, chunks: int,
                 pauses: dict[int, float] | None = None, header: str = "zeros") -> None:
        super().__init__(name=f"writer-{path.name}")
        self.path, self.data, self.duration, self.chunks = path, data, duration, chunks
        self.pauses, self.header = pauses or {}, header
        self.finished_at = 0.0

    def _header(self, body_bytes: int) -> bytes:
        data_at = self.data.index(b"data") + 8
        header = bytearray(self.data[:data_at])
        header[4:8] = struct.pack("<I", data_at - 8 + body_bytes)
        header[data_at - 4 : data_at] = struct.pack("<I", body_bytes)
        return bytes(header)

    def run(self) -> None:
        data_at = self.data.index(b"data") + 8
        body = self.data[data_at:]
        step = -(-len(body) // self.chunks)
        with open(self.path, "wb") as handle:
            handle.write(self._header(0) if self.header == "lagging" else self._zero_header())
            for index in range(self.chunks):
                handle.write(body[index * step : (index + 1) * step])
                if self.header == "lagging" and index % 8 == 3:
                    handle.seek(0)
                    handle.write(self._header(min(len(body), (index + 1) * step)))
                    handle.seek(0, os.SEEK_END)
                handle.flush()
                time.sleep(self.pauses.get(index, self.duration / self.chunks))
            handle.seek(0)
            handle.write(self.data[:data_at])  # the real sizes, now that they are known
            handle.flush()
        self.finished_at = time.monotonic()

    def _zero_header(self) -> bytes:
        data_at = self.data.index(b"data") + 8
        header = bytearray(self.data[:data_at])
        header[4:8] = struct.pack("<I", 0)
        header[data_at - 4 : data_at] = struct.pack("<I", 0)
        return bytes(header)


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["zeros", "lagging"])
def test_slow_render_with_header_patched_last_is_taken_once_after_the_last_write(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], header: str
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)])
    data = wav_bytes(seconds=10 * 1024 * 1024 / (48000 * 4), seed=1)  # 10 MB
    # 3 s of writing, with one stall twice the settle window: only the header check holds it back then.
    writer = SlowWavWriter(hot / "Lead Vocal.wav", data, duration=2.4, chunks=40, pauses={21: 2 * SETTLE},
                           header=header)
    writer.start()
    writer.join()
    wait_until(lambda: len(sink.submissions) >= 1, "the render to be submitted")
    time.sleep(3 * SETTLE)  # a second submission would show up in this time
    assert not error_file_for(hot / "Lead Vocal.wav").exists()  # nothing was judged before the end
    [job] = sink.submissions
    assert job.at > writer.finished_at
    assert job.size == len(data) and job.sha256 == hashlib.sha256(data).hexdigest()
    request = job.request
    assert request.source == (hot / "Lead Vocal.wav").resolve()
    assert request.preset == "vocals" and request.origin is Origin.hot_folder
    assert request.output_dir == (hot / "Stems").resolve()
    stat = os.stat(hot / "Lead Vocal.wav")
    assert request.idempotency_key == f"hot:{request.source}:{stat.st_size}:{stat.st_mtime_ns}"


def test_temp_then_rename_is_one_job_for_the_final_name(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)])
    data = wav_bytes(seconds=2.0, seed=2)
    for temp_name in ("Bounce.wav.tmp", ".Bounce.wav.part", "~Bounce.wav"):
        temp = hot / temp_name
        with open(temp, "wb") as handle:
            for index in range(0, len(data), 65536):
                handle.write(data[index : index + 65536])
                handle.flush()
                time.sleep(0.01)
        time.sleep(2 * SETTLE)  # settled temp names must still be left alone
    os.replace(hot / "~Bounce.wav", hot / "Bounce.wav")  # the final name only ever gets a moved event
    wait_until(lambda: len(sink.submissions) >= 1, "the renamed file")
    time.sleep(3 * SETTLE)
    assert sink.sources() == ["Bounce.wav"]
    assert sink.submissions[0].sha256 == hashlib.sha256(data).hexdigest()


def test_hundred_files_at_once_are_each_submitted_once(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], rescan_interval=0.5)
    names = [f"take {n:03}.wav" for n in range(100)]
    for index, name in enumerate(names):
        (hot / name).write_bytes(wav_bytes(seconds=0.05, seed=index))
    wait_until(lambda: len(sink.submissions) >= 100, "100 submissions")
    time.sleep(1.2)  # two rescans later: still once each
    assert sorted(sink.sources()) == names
    assert len({s.request.idempotency_key for s in sink.submissions}) == 100


def test_files_present_before_start_are_processed(hot: Path,
                                                  run_watcher: Callable[..., HotFolderWatcher]) -> None:
    for name in ("a.wav", "b.aif"):
        data = wav_bytes(seed=3) if name.endswith(".wav") else _aiff_bytes()
        (hot / name).write_bytes(data)
    (hot / "notes.txt").write_text("not audio")
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)])
    wait_until(lambda: len(sink.submissions) >= 2, "both files")
    assert sorted(sink.sources()) == ["a.wav", "b.aif"]


def _aiff_bytes() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((4800, 2), dtype=np.float32), 44100, format="AIFF", subtype="PCM_24")
    return buffer.getvalue()


def test_corrupt_file_gets_an_error_file_and_the_watcher_keeps_going(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)])
    drop(hot / "garbage.wav", os.urandom(50_000))
    wait_until(lambda: error_file_for(hot / "garbage.wav").exists(), "the error file")
    drop(hot / "good.wav")
    wait_until(lambda: len(sink.submissions) >= 1, "the good file")
    text = error_file_for(hot / "garbage.wav").read_text()
    assert "not audio" in text and "delete this file" in text and '"garbage.wav"' in text
    assert sink.sources() == ["good.wav"]
    assert (hot / "garbage.wav").stat().st_size == 50_000  # the source is untouched


def test_a_wav_that_stays_unfinished_is_reported_not_taken(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], incomplete_report_after=1.0)
    data = wav_bytes(seconds=1.0, seed=4)
    drop(hot / "crashed render.wav", data[: len(data) // 2])  # the DAW died mid-export
    wait_until(lambda: error_file_for(hot / "crashed render.wav").exists(), "the unfinished report")
    assert sink.submissions == []
    assert "unfinished" in error_file_for(hot / "crashed render.wav").read_text()


def test_a_render_that_keeps_going_is_never_reported_unfinished(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """Stalls add up to more than the report delay, but each one alone stays below it."""
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], incomplete_report_after=0.5)
    data = wav_bytes(seconds=3, seed=6)
    writer = SlowWavWriter(hot / "long.wav", data, duration=1.0, chunks=20, pauses={5: 0.7, 15: 0.7})
    writer.start()
    writer.join()
    wait_until(lambda: len(sink.submissions) == 1, "the render")
    assert not error_file_for(hot / "long.wav").exists()
    assert sink.submissions[0].sha256 == hashlib.sha256(data).hexdigest()


def test_polling_observer_path(hot: Path, run_watcher: Callable[..., HotFolderWatcher]) -> None:
    sink = RecordingSink()
    watcher = run_watcher(sink, [folder(hot, polling=True)])
    assert [type(o) for o in watcher._watches._observers.values()] == [PollingObserver]
    writer = SlowWavWriter(hot / "share.wav", wav_bytes(seconds=2, seed=5), duration=1.0, chunks=10)
    writer.start()
    writer.join()
    wait_until(lambda: len(sink.submissions) >= 1, "the polled file")
    assert sink.submissions[0].at > writer.finished_at
    assert sink.submissions[0].size == (hot / "share.wav").stat().st_size


def test_two_watchers_on_one_folder_take_every_file_exactly_once(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    for index in range(10):
        (hot / f"before {index}.wav").write_bytes(wav_bytes(seconds=0.05, seed=100 + index))
    sinks = [RecordingSink("studio-a"), RecordingSink("studio-b")]
    run_watcher(sinks[0], [folder(hot)], instance_id="studio-a:1")
    run_watcher(sinks[1], [folder(hot, polling=True)], instance_id="studio-b:1")
    names = [f"before {n}.wav" for n in range(10)]
    for index in range(30):
        names.append(f"after {index}.wav")
        drop(hot / names[-1], wav_bytes(seconds=0.05, seed=200 + index))
    wait_until(lambda: len(sinks[0].submissions) + len(sinks[1].submissions) >= 40, "40 submissions")
    time.sleep(3 * SETTLE)
    taken = Counter(sinks[0].sources() + sinks[1].sources())
    assert sorted(taken) == sorted(names)
    assert set(taken.values()) == {1}


def test_a_dead_watchers_claim_is_taken_over_after_it_expires(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    first = RecordingSink("first")
    watcher = run_watcher(first, [folder(hot)], instance_id="first", claim_ttl=1.0)
    drop(hot / "orphan.wav")
    wait_until(lambda: len(first.submissions) == 1, "the first watcher's job")
    watcher.stop()  # "dies" holding the claim, its job unfinished
    second = RecordingSink("second")
    run_watcher(second, [folder(hot)], instance_id="second", claim_ttl=1.0)
    time.sleep(0.5)
    assert second.submissions == []  # the claim is still fresh
    wait_until(lambda: len(second.submissions) == 1, "the takeover")
    assert second.sources() == ["orphan.wav"]


@pytest.mark.parametrize("how", ["marker removed", "folder deleted"])
def test_a_lost_claim_says_why_in_the_log(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """The log line of a claim that could not be renewed tells a user which of the two it was: blaming
    another sam-bridge for a folder the user deleted sent people looking for a second daemon."""
    sink = RecordingSink()  # the job stays unfinished: its claim is renewed every heartbeat
    run_watcher(sink, [folder(hot)], claim_ttl=0.6)
    drop(hot / "held.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job")
    caplog.set_level(logging.WARNING, logger="bridge")
    if how == "folder deleted":
        for path in sorted(hot.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        hot.rmdir()
        expected = "lost the claim on held.wav: its folder is gone (deleted or moved?)"
    else:
        for marker in (hot / ".sam-bridge" / "claims").iterdir():
            marker.unlink()
        expected = "lost the claim on held.wav: its claim marker was taken over by another sam-bridge or removed"
    wait_until(lambda: any(expected in record.getMessage() for record in caplog.records), "the lost-claim line")
    other = "its claim marker" if how == "folder deleted" else "its folder is gone"
    assert not any(other in record.getMessage() for record in caplog.records)


def test_own_stems_inside_the_hot_folder_are_never_taken(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """Engine output written into the hot folder itself and into a folder inside it."""

    def engine(sink: RecordingSink, request: SeparationRequest, job_id: str) -> None:
        assert request.output_dir is not None
        request.output_dir.mkdir(exist_ok=True)
        base = request.source.stem
        stems = {}
        if request.preset == "4-stems":  # a stem set: names carry no marker, only the manifest knows
            for stem in ("drums", "bass", "other", "vocals"):
                stems[stem] = str(drop(request.output_dir / f"{base} - {stem}.wav"))
        else:
            for label in ("target", "residual"):
                stems[label] = str(drop(request.output_dir / f"{base} - piano.{label}.wav"))
        manifest = request.output_dir / f"{base} - {request.preset}.sam.json"
        manifest.write_text(json.dumps({"stems": {label: {"path": path} for label, path in stems.items()}}))
        sink.finish(job_id, JobState.done, stems=stems)

    sink = RecordingSink(on_submit=engine)
    inside = hot / "out"
    run_watcher(sink, [folder(hot, preset="piano", output_dir=inside, recursive=True),
                       folder(hot / "sets", preset="4-stems", output_dir=hot / "sets")],
                rescan_interval=0.5)
    (hot / "sets").mkdir(exist_ok=True)
    drop(hot / "Keys.wav")
    drop(hot / "sets" / "Band.wav")
    inside.mkdir()
    drop(inside / "anything in the output folder.wav")
    wait_until(lambda: len(list(inside.glob("*.wav"))) == 3 and len(list((hot / "sets").glob("*.wav"))) == 5,
               "the stems")
    time.sleep(1.5)  # settle windows and two rescans over the stems
    assert sorted(sink.sources()) == ["Band.wav", "Keys.wav"]
    # A restarted watcher knows nothing of those jobs: folder, names and manifests must tell it.
    for watcher in list(started_watchers(run_watcher)):
        watcher.stop()
    fresh = RecordingSink("fresh")
    run_watcher(fresh, [folder(hot, preset="piano", output_dir=inside, recursive=True),
                        folder(hot / "sets", preset="4-stems", output_dir=hot / "sets")],
                instance_id="studio-b")
    time.sleep(1.0)
    assert fresh.submissions == []


def test_a_stem_dropped_into_a_hot_folder_is_separated_again(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """Chaining: split the residual of one preset with another. Only a manifest beside a stem makes it
    ours; a stem copied elsewhere is a file like any other."""
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], rescan_interval=0.3)
    drop(hot / "Beat - kick.residual.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the stem's job")
    assert sink.submissions[0].request.source.name == "Beat - kick.residual.wav"
    mixed = hot / "mixed"
    mixed.mkdir()
    run_watcher(sink, [folder(mixed)], instance_id="studio-b", rescan_interval=0.3)
    (mixed / "Beat - kick.sam.json").write_text(json.dumps({"stems": {}}))  # its manifest came along
    drop(mixed / "Beat - kick.target.wav")
    time.sleep(4 * SETTLE + 0.6)
    assert len(sink.submissions) == 1


def test_an_error_file_from_before_a_restart_still_blocks(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    source = drop(hot / "Failed before.wav")
    error_file_for(source).write_text("it failed yesterday")
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], rescan_interval=0.3)
    time.sleep(1.0)
    assert sink.submissions == []
    error_file_for(source).unlink()
    wait_until(lambda: len(sink.submissions) == 1, "the retry")


def test_a_failed_job_writes_the_error_file_and_waits_for_delete_or_touch(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], rescan_interval=0.3)
    source = drop(hot / "Drums.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job")
    failure = "The service could not be reached.\nTry later."
    sink.finish(sink.submissions[0].job_id, JobState.failed, error=failure)
    error_file = error_file_for(source)
    wait_until(error_file.exists, "the error file")
    text = error_file.read_text()
    assert "The service could not be reached." in text and "Try later." in text
    assert "delete this file" in text and sink.submissions[0].job_id in text
    time.sleep(1.0)  # rescans pass: no retry while the error file is there
    assert len(sink.submissions) == 1
    error_file.unlink()  # retry, way 1
    wait_until(lambda: len(sink.submissions) == 2, "the retry after deleting the error file")
    assert sink.submissions[1].request.idempotency_key == sink.submissions[0].request.idempotency_key
    sink.finish(sink.submissions[1].job_id, JobState.cancelled)
    wait_until(error_file.exists, "the error file for the cancelled job")
    assert "cancelled" in error_file.read_text()
    later = time.time() + 5
    os.utime(source, (later, later))  # retry, way 2: save/touch the source
    wait_until(lambda: len(sink.submissions) == 3, "the retry after touching the source")
    assert sink.submissions[2].request.idempotency_key != sink.submissions[0].request.idempotency_key
    sink.finish(sink.submissions[2].job_id, JobState.done)
    wait_until(lambda: not error_file.exists(), "the stale error file to go")
    assert source.exists()


def test_a_failed_job_made_good_by_retry_clears_its_error_file_and_counts_as_done(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """`sam-bridge retry <job>` runs the same job again: when it succeeds, the file is done as usual."""
    sink = RecordingSink()
    run_watcher(sink, [folder(hot, after_success="move-to-done")], rescan_interval=0.3)
    source = drop(hot / "Keys.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job")
    job_id = sink.submissions[0].job_id
    sink.finish(job_id, JobState.failed, error="The service could not be reached.")
    wait_until(error_file_for(source).exists, "the error file")
    sink.finish(job_id, JobState.done, stems={"target": str(hot / "Stems" / "Keys - vocals.target.wav")})
    wait_until(lambda: (hot / "done" / "Keys.wav").exists(), "the source moved to done/")
    assert not error_file_for(source).exists() and not source.exists()
    time.sleep(1.0)  # rescans pass
    assert len(sink.submissions) == 1


def test_a_retry_of_an_old_version_leaves_the_version_saved_since_to_its_own_job(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """J1 fails; the file is saved again (the README's way to retry) and J2 is queued for it; then
    `sam-bridge retry J1` succeeds. The new version is J2's: not done, not moved, its outcome still counts."""
    sink = RecordingSink()
    run_watcher(sink, [folder(hot, after_success="move-to-done")], rescan_interval=0.3)
    source = drop(hot / "Pad.wav", wav_bytes(seconds=0.2, seed=1))
    wait_until(lambda: len(sink.submissions) == 1, "the first job")
    first = sink.submissions[0].job_id
    sink.finish(first, JobState.failed, error="The service could not be reached.")
    wait_until(error_file_for(source).exists, "the error file")
    later = time.time() + 5
    os.utime(source, (later, later))  # saved again
    wait_until(lambda: len(sink.submissions) == 2, "a job for the file as saved again")
    sink.finish(first, JobState.done)  # the retry of J1
    time.sleep(3 * SETTLE)
    assert source.exists() and not (hot / "done").exists()
    sink.finish(sink.submissions[1].job_id, JobState.failed, error="The service failed.")
    wait_until(lambda: "(job " + sink.submissions[1].job_id + ")" in error_file_for(source).read_text(),
               "J2's own error file")


def test_a_failure_of_a_version_saved_over_meanwhile_leaves_no_error_and_the_new_one_is_taken(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """A copy that pauses longer than the settle time is taken early; its job fails on the partial file.
    The file as it ends up gets a job of its own, and that failure writes no error file."""
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)], rescan_interval=0.3)
    source = drop(hot / "Bass.wav", wav_bytes(seconds=0.1, seed=1))
    wait_until(lambda: len(sink.submissions) == 1, "the first job")
    drop(source, wav_bytes(seconds=0.3, seed=2))  # the rest of the copy arrives
    sink.finish(sink.submissions[0].job_id, JobState.failed, error="The file ends early.")
    wait_until(lambda: len(sink.submissions) == 2, "a job for the file as it is now")
    assert sink.submissions[1].size == len(wav_bytes(seconds=0.3, seed=2))
    time.sleep(3 * SETTLE)
    assert not error_file_for(source).exists()
    sink.finish(sink.submissions[1].job_id, JobState.done)
    time.sleep(1.0)
    assert len(sink.submissions) == 2 and not error_file_for(source).exists()


def piped_wav(seconds: float, seed: int) -> bytes:
    """A WAV written to a pipe (`ffmpeg … -f wav - > x.wav`, `arecord > x.wav`): the writer cannot seek back,
    so its RIFF and data sizes stay 0xFFFFFFFF for good, as ffmpeg's wav muxer leaves them."""
    data = bytearray(encoded("WAV", seconds, seed))
    data[4:8] = b"\xff\xff\xff\xff"
    data_at = data.index(b"data", 12)
    data[data_at + 4 : data_at + 8] = b"\xff\xff\xff\xff"
    return bytes(data)


@pytest.mark.parametrize(("name", "fmt", "pause"),
                         [("Strings.flac", "FLAC", 3 * SETTLE), ("Ref.mp3", "MP3", 2 * SETTLE),
                          ("Piped.wav", "piped WAV", 4 * SETTLE)])
def test_a_copy_that_pauses_longer_than_the_settle_time_is_taken_only_once_whole(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], name: str, fmt: str, pause: float
) -> None:
    """None has size fields to go by. A FLAC's header counts its frames, so the watcher waits for the last
    one; nothing in an MP3 shows it whole, so it settles for three times as long (a copy taken early is a
    paid request). A WAV with its sizes unfilled (written to a pipe, or by ffmpeg still writing a file that
    it patches at the end) settles for ten times as long: it used to wait for a header patch that never
    comes and fail as "unfinished" after five minutes, then was taken after three."""
    data = piped_wav(3.0, seed=3) if fmt == "piped WAV" else encoded(fmt, 3.0, seed=3)
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)])
    copy_with_pauses(hot / name, data, 3, pause)
    wait_until(lambda: len(sink.submissions) == 1, "the whole file")
    time.sleep(4 * SETTLE)
    [job] = sink.submissions
    assert job.size == len(data) and job.sha256 == hashlib.sha256(data).hexdigest()


def test_rejected_request_writes_the_reason(hot: Path, run_watcher: Callable[..., HotFolderWatcher]) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot, preset="no-such-preset")])
    source = drop(hot / "x.wav")
    wait_until(error_file_for(source).exists, "the error file")
    assert 'Unknown preset "no-such-preset"' in error_file_for(source).read_text()
    assert sink.submissions == []


def test_parent_folder_maps_subfolders_to_presets(tmp_path: Path,
                                                  run_watcher: Callable[..., HotFolderWatcher]) -> None:
    parent = tmp_path / "hot"
    parent.mkdir()
    sink = RecordingSink()
    run_watcher(sink, [folder(parent, preset=None)], preset_names=lambda: PRESETS)
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == sorted(PRESETS)
    drop(parent / "4-stems" / "mix.wav")
    drop(parent / "vocals" / "sing.wav")
    (parent / "vocals" / "deeper").mkdir()
    drop(parent / "vocals" / "deeper" / "not recursive.wav")
    drop(parent / "loose.wav")
    (parent / "archive").mkdir()
    drop(parent / "archive" / "old.wav")
    (parent / "archive" / "bells.sam.yaml").write_text("prompt: church bells\n")
    time.sleep(SETTLE)
    drop(parent / "archive" / "bells.wav")  # a sidecar's choice makes the folder's name irrelevant
    wait_until(lambda: len(sink.submissions) == 3, "three jobs")
    wait_until(lambda: error_file_for(parent / "loose.wav").exists(), "the loose file's error")
    wait_until(lambda: error_file_for(parent / "archive" / "old.wav").exists(), "the archive error")
    assert sink.by_name("mix.wav").request.preset == "4-stems"
    assert sink.by_name("sing.wav").request.preset == "vocals"
    assert sink.by_name("sing.wav").request.output_dir == (parent / "vocals" / "Stems").resolve()
    assert "preset folder" in error_file_for(parent / "loose.wav").read_text()
    assert "not named after a preset" in error_file_for(parent / "archive" / "old.wav").read_text()
    assert sink.by_name("bells.wav").request.prompt == "church bells"
    time.sleep(2 * SETTLE)
    assert len(sink.submissions) == 3


def test_preset_folders_follow_the_preset_list(tmp_path: Path,
                                              run_watcher: Callable[..., HotFolderWatcher]) -> None:
    parent = tmp_path / "hot"
    parent.mkdir()
    presets = ["vocals"]
    run_watcher(RecordingSink(), [folder(parent, preset=None)], preset_names=lambda: list(presets),
                rescan_interval=0.2)
    assert (parent / "vocals").is_dir()
    presets.append("guitar")
    wait_until((parent / "guitar").is_dir, "the new preset's folder")
    presets.remove("vocals")
    time.sleep(0.5)
    assert (parent / "vocals").is_dir()  # never removed: it may hold the user's files


def test_sidecar_overrides_preset_and_prompt(hot: Path, run_watcher: Callable[..., HotFolderWatcher]) -> None:
    sink = RecordingSink()
    (hot / "Gtr.sam.yaml").write_text(
        "prompt: acoustic guitar strumming\nstart: 1.5\nlength: 4\ntag: reaper-42\n"
        "options:\n  reranking_candidates: 2\n"
    )
    (hot / "Bad.wav.sam.yaml").write_text("prompt: x\ncolour: blue\n")
    time.sleep(SETTLE)  # sidecars written before the audio, as documented
    run_watcher(sink, [folder(hot)])
    drop(hot / "Gtr.wav")
    drop(hot / "Bad.wav")
    wait_until(lambda: len(sink.submissions) == 1 and error_file_for(hot / "Bad.wav").exists(), "both")
    request = sink.by_name("Gtr.wav").request
    assert request.preset is None and request.prompt == "acoustic guitar strumming"
    assert (request.start, request.length, request.tag) == (1.5, 4.0, "reaper-42")
    assert request.options == {"reranking_candidates": 2}
    assert "colour" in error_file_for(hot / "Bad.wav").read_text()


def test_move_to_done_after_success(hot: Path, run_watcher: Callable[..., HotFolderWatcher]) -> None:
    sink = RecordingSink(on_submit=lambda s, r, j: s.finish(j, JobState.done))
    (hot / "done").mkdir()
    (hot / "done" / "Song.wav").write_bytes(b"an older file of the same name")
    run_watcher(sink, [folder(hot, after_success="move-to-done")], rescan_interval=0.3)
    data = wav_bytes(seed=9)
    drop(hot / "Song.wav", data)
    wait_until(lambda: (hot / "done" / "Song (2).wav").exists(), "the move")
    assert not (hot / "Song.wav").exists()
    assert (hot / "done" / "Song (2).wav").read_bytes() == data
    assert (hot / "done" / "Song.wav").read_bytes() == b"an older file of the same name"
    time.sleep(1.0)
    assert sink.sources() == ["Song.wav"]


def test_a_restart_does_not_repeat_finished_files(hot: Path,
                                                  run_watcher: Callable[..., HotFolderWatcher]) -> None:
    sink = RecordingSink(on_submit=lambda s, r, j: s.finish(j, JobState.done))
    first = run_watcher(sink, [folder(hot)], instance_id="studio-a")
    for index in range(3):
        drop(hot / f"t{index}.wav")
    wait_until(lambda: len(sink.submissions) == 3, "three jobs")
    first.stop()
    drop(hot / "while down.wav")
    run_watcher(sink, [folder(hot)], instance_id="studio-a")
    wait_until(lambda: len(sink.submissions) == 4, "the file that arrived while down")
    time.sleep(3 * SETTLE)
    assert sorted(sink.sources()) == ["t0.wav", "t1.wav", "t2.wav", "while down.wav"]


def test_journal_dedup_holds_when_the_claim_markers_are_gone(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """The engine's idempotency key is the last line: a done job is not started again."""
    sink = RecordingSink(on_submit=lambda s, r, j: s.finish(j, JobState.done))
    first = run_watcher(sink, [folder(hot)])
    drop(hot / "x.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job")
    first.stop()
    for marker in (hot / ".sam-bridge" / "claims").iterdir():
        marker.unlink()
    run_watcher(sink, [folder(hot)], instance_id="studio-a")
    wait_until(lambda: any((hot / ".sam-bridge" / "claims").iterdir()), "the file to be looked at again")
    time.sleep(2 * SETTLE)
    assert len(sink.submissions) == 1  # submit returned the done job's id: nothing new ran


def test_lost_events_are_recovered_by_the_rescan(hot: Path,
                                                 run_watcher: Callable[..., HotFolderWatcher]) -> None:
    sink = RecordingSink()
    watcher = run_watcher(sink, [folder(hot)], rescan_interval=0.5)
    watcher._note = lambda *args: None  # type: ignore[method-assign]  # an overflowed queue
    drop(hot / "missed.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the rescan to find the file")
    assert sink.sources() == ["missed.wav"]


def test_recursive_folder_takes_nested_files_but_not_done_or_stems(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink()
    run_watcher(sink, [folder(hot, recursive=True)])
    for sub in ("Session 1/Audio", "Stems", "done", ".hidden"):
        (hot / sub).mkdir(parents=True)
        drop(hot / sub / "take.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the nested file")
    time.sleep(2 * SETTLE)
    assert [s.request.source for s in sink.submissions] == [(hot / "Session 1/Audio/take.wav").resolve()]


def test_a_folder_where_sam_bridge_cannot_write_is_said_once_and_taken_once_it_can(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder (a mounted share) logged a traceback at every rescan, forever, and said nothing a
    user could act on: the claim marker's folder could not be made. (Here `.sam-bridge` is a file, which
    fails the same way for root, whom a read-only mode would not stop.)"""
    import bridge.hotfolder.jobs

    monkeypatch.setattr(bridge.hotfolder.jobs, "RETRY_AFTER_UNWRITABLE", 0.5)
    blocker = hot / ".sam-bridge"
    blocker.write_text("in the way")
    sink = RecordingSink()
    with caplog.at_level(logging.WARNING, logger="bridge.hotfolder.watcher"):
        run_watcher(sink, [folder(hot)], rescan_interval=0.2)
        drop(hot / "Vox.wav")
        wait_until(lambda: any("cannot write" in r.getMessage() for r in caplog.records), "the warning")
        time.sleep(6 * 0.2 + 3 * SETTLE)  # several rescans
    assert sink.submissions == []
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1 and str(hot) in warnings[0].getMessage() and ".sam-bridge" in warnings[0].getMessage()
    assert not [r for r in caplog.records if "unexpected problem" in r.getMessage()]
    blocker.unlink()  # writable again: the file is taken
    wait_until(lambda: len(sink.submissions) == 1, "the file once the folder is writable")


def test_a_flac_still_being_exported_waits_for_its_length(hot: Path,
                                                        run_watcher: Callable[..., HotFolderWatcher]) -> None:
    """libsndfile and sox write a FLAC's length only when they close it: one paused longer than the settle
    time was taken, refused as "written as a stream", and got an error file beside the export, five times."""
    sink = RecordingSink()
    run_watcher(sink, [folder(hot)])
    audio = np.random.default_rng(4).uniform(-0.3, 0.3, (48000, 2))
    path = hot / "Strings.flac"
    with sf.SoundFile(str(path), "w", 48000, 2, "PCM_24", format="FLAC") as out:
        for part in np.array_split(audio, 4):
            out.write(part)
            out.flush()
            time.sleep(4 * SETTLE)
    wait_until(lambda: len(sink.submissions) == 1, "the finished export")
    time.sleep(2 * SETTLE)
    [job] = sink.submissions
    assert job.size == path.stat().st_size and not error_file_for(path).exists()


# ---- taken again: a changed sidecar, a file that comes back, a folder that comes back ----------------


def _done_at_once(sink: RecordingSink, request: SeparationRequest, job_id: str) -> None:
    sink.finish(job_id, JobState.done)


def _stays(sink: RecordingSink, count: int, seconds: float) -> None:
    """Nothing more is submitted for `seconds` (settle windows and a look at every event pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(sink.submissions) == count, sink.sources()
        time.sleep(0.05)


def _sidecar_job_done(hot: Path, run_watcher: Callable[..., HotFolderWatcher], name: str,
                      prompt: str) -> tuple[RecordingSink, Path, Path, HotFolderWatcher]:
    """`name`.wav dropped after its sidecar asking for `prompt`, taken, and finished at once (no rescan):
    (the sink, the sidecar, the audio file, the watcher)."""
    sink = RecordingSink(on_submit=_done_at_once)
    sidecar = hot / f"{name}.sam.yaml"
    sidecar.write_text(f"prompt: {prompt}\n")
    time.sleep(SETTLE)
    watcher = run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    source = drop(hot / f"{name}.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the first job")
    return sink, sidecar, source, watcher


def test_a_sidecar_edited_after_the_job_makes_a_new_job_and_one_saved_unchanged_does_not(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """Only what the sidecar says counts: saving it unchanged (or touching it) costs nothing; a new prompt
    makes the file a new job once the sidecar has settled, with the audio untouched. No rescan helps."""
    sink, sidecar, source, _ = _sidecar_job_done(hot, run_watcher, "Gtr", "acoustic guitar")
    audio_stat = source.stat()
    sidecar.write_text("prompt: acoustic guitar\n")  # saved again, same text
    later = time.time() + 3
    os.utime(sidecar, (later, later))  # and touched
    _stays(sink, 1, 6 * SETTLE)
    sidecar.write_text("prompt: electric guitar\n")
    written = time.monotonic()
    wait_until(lambda: len(sink.submissions) == 2, "a job for the new prompt")
    first, second = sink.submissions
    assert (first.request.prompt, second.request.prompt) == ("acoustic guitar", "electric guitar")
    assert second.request.idempotency_key != first.request.idempotency_key
    assert second.at - written >= SETTLE - 0.05  # not before the sidecar settled
    assert source.stat().st_mtime_ns == audio_stat.st_mtime_ns  # the audio was never touched
    _stays(sink, 2, 6 * SETTLE)
    # The other sidecar name, `Gtr.wav.sam.yaml`, is watched the same way.
    sidecar.unlink()
    (hot / "Gtr.wav.sam.yaml").write_text("prompt: electric guitar\n")  # what the last job asked: nothing new
    _stays(sink, 2, 6 * SETTLE)
    (hot / "Gtr.wav.sam.yaml").write_text("prompt: nylon guitar\n")
    wait_until(lambda: len(sink.submissions) == 3, "a job for the third prompt")
    assert sink.submissions[2].request.prompt == "nylon guitar"


def test_deleting_the_sidecar_of_a_finished_file_asks_for_nothing_not_even_after_a_restart(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """Tidying up a finished file's sidecar is no request to separate it again with the folder's preset:
    that would be a charge and stems nobody asked for. A new sidecar with other content still is one."""
    sink, sidecar, _, first = _sidecar_job_done(hot, run_watcher, "Vox", "lead vocal")
    wait_until(lambda: any(m.read_text().count('"done"') for m in (hot / ".sam-bridge" / "claims").iterdir()),
               "the file marked done")
    sidecar.unlink()
    _stays(sink, 1, 6 * SETTLE)
    first.stop()
    run_watcher(sink, [folder(hot)], rescan_interval=600.0)  # a restart remembers nothing but the markers
    _stays(sink, 1, 6 * SETTLE)
    sidecar.write_text("prompt: backing vocals\n")
    wait_until(lambda: len(sink.submissions) == 2, "a job for the new sidecar")
    assert sink.submissions[1].request.prompt == "backing vocals"


def test_a_sidecar_job_leaves_the_claim_of_our_running_job_without_a_sidecar_alone(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """The file runs with the folder's preset; a sidecar added meanwhile is a job of its own, whose cover (the
    file without a sidecar, marked done) must not mark the running job's own claim done before it ends."""
    sink = RecordingSink()  # jobs stay under way
    run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    drop(hot / "Bass.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job without a sidecar")
    (hot / "Bass.sam.yaml").write_text("prompt: bass guitar\n")
    wait_until(lambda: len(sink.submissions) == 2, "the job for the sidecar")
    time.sleep(2 * SETTLE)
    states = sorted(json.loads(m.read_text())["state"] for m in (hot / ".sam-bridge" / "claims").iterdir())
    assert states == ["active", "active"], states


def test_a_sidecar_the_share_cannot_read_for_a_moment_is_no_new_version(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network share failing the read of a finished file's sidecar (EIO) for a while wrote an error file
    beside the finished file. Nothing happens now; the sidecar saved with other content later is a new job."""
    import errno

    from bridge.hotfolder import names

    sink, sidecar, _, _ = _sidecar_job_done(hot, run_watcher, "Keys", "electric piano")
    def failing(real: Callable[..., object]) -> Callable[..., object]:
        def read(path: Path, *args: object, **kwargs: object) -> object:
            if path.name == sidecar.name:
                raise OSError(errno.EIO, "Input/output error")
            return real(path, *args, **kwargs)
        return read

    real_read, real_text = names.read_small_file, names.read_small_text
    monkeypatch.setattr(names, "read_small_file", failing(real_read))
    monkeypatch.setattr(names, "read_small_text", failing(real_text))
    sidecar.write_text("prompt: electric piano\n")  # saved again: its stat changed, it is read, the read fails
    deadline = time.monotonic() + 12 * SETTLE  # past the sidecar edit's settle (5 × SETTLE in these tests)
    while time.monotonic() < deadline:
        assert len(sink.submissions) == 1 and not error_file_for(hot / "Keys.wav").exists()
        time.sleep(0.05)
    monkeypatch.setattr(names, "read_small_file", real_read)
    monkeypatch.setattr(names, "read_small_text", real_text)
    sidecar.write_text("prompt: organ\n")
    wait_until(lambda: len(sink.submissions) == 2, "a job for the new prompt")
    assert sink.submissions[1].request.prompt == "organ"


def test_a_sidecar_saved_while_the_daemon_was_down_counts_and_an_unchanged_one_does_not(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink(on_submit=_done_at_once)
    (hot / "Pad.sam.yaml").write_text("prompt: pad\n")
    time.sleep(SETTLE)
    first = run_watcher(sink, [folder(hot)])
    drop(hot / "Pad.wav")
    drop(hot / "Keys.wav")
    wait_until(lambda: len(sink.submissions) == 2, "the first jobs")
    first.stop()
    (hot / "Pad.sam.yaml").write_text("prompt: pad\n")  # unchanged
    (hot / "Keys.sam.yaml").write_text("prompt: keys\n")  # new: the file asks for other work now
    time.sleep(SETTLE)
    run_watcher(sink, [folder(hot)])
    wait_until(lambda: len(sink.submissions) == 3, "the job the new sidecar asks for")
    _stays(sink, 3, 6 * SETTLE)
    assert sink.submissions[2].request.source.name == "Keys.wav"
    assert sink.submissions[2].request.prompt == "keys"


def test_a_file_moved_back_from_done_is_taken_again_and_not_while_it_stays(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """`mv` keeps the file's time: its name, size and time are those of the finished job. Coming back is
    what counts: it is taken again (as a new job: the engine may reuse the earlier result), once; staying,
    over rescans and a restart, never."""
    sink = RecordingSink(on_submit=_done_at_once)
    run_watcher(sink, [folder(hot, after_success="move-to-done")], rescan_interval=600.0)
    data = wav_bytes(seed=11)
    drop(hot / "Song.wav", data)
    wait_until(lambda: (hot / "done" / "Song.wav").exists(), "the move to done/")
    stat = (hot / "done" / "Song.wav").stat()
    os.rename(hot / "done" / "Song.wav", hot / "Song.wav")  # what `mv done/Song.wav .` does
    assert (hot / "Song.wav").stat().st_mtime_ns == stat.st_mtime_ns
    wait_until(lambda: len(sink.submissions) == 2, "the file to be taken again")
    first, second = sink.submissions
    assert second.sha256 == first.sha256 == hashlib.sha256(data).hexdigest()
    assert second.request.idempotency_key != first.request.idempotency_key  # a new job, not the done one
    wait_until(lambda: (hot / "done" / "Song.wav").exists(), "the second move to done/")
    os.rename(hot / "done" / "Song.wav", hot / "Song.wav")  # and once more
    wait_until(lambda: len(sink.submissions) == 3, "the third arrival")
    assert len({s.request.idempotency_key for s in sink.submissions}) == 3
    _stays(sink, 3, 6 * SETTLE)


def test_a_file_moved_out_and_back_is_taken_again_but_one_that_stays_never_is(
    hot: Path, tmp_path: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink(on_submit=_done_at_once)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = run_watcher(sink, [folder(hot)], rescan_interval=0.3)
    drop(hot / "Stay.wav", wav_bytes(seed=12))
    drop(hot / "Roam.wav", wav_bytes(seed=13))
    wait_until(lambda: len(sink.submissions) == 2, "both files")
    _stays(sink, 2, 4 * 0.3 + 3 * SETTLE)  # several rescans: neither is taken again
    os.rename(hot / "Roam.wav", elsewhere / "Roam.wav")
    time.sleep(2 * SETTLE)
    os.rename(elsewhere / "Roam.wav", hot / "Roam.wav")
    wait_until(lambda: len(sink.submissions) == 3, "the file that came back")
    assert sink.submissions[2].request.source.name == "Roam.wav"
    _stays(sink, 3, 4 * 0.3 + 3 * SETTLE)
    first.stop()  # a restart: both stayed, neither is taken again
    run_watcher(sink, [folder(hot)], rescan_interval=0.3)
    _stays(sink, 3, 4 * 0.3 + 6 * SETTLE)


def test_a_file_copied_in_with_its_time_kept_after_its_twin_left_is_taken(
    hot: Path, tmp_path: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """`cp -p` (or a Finder copy) keeps the time too: a copy arriving where the done one was is new."""
    sink = RecordingSink(on_submit=_done_at_once)
    run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    source = drop(hot / "Take.wav", wav_bytes(seed=14))
    wait_until(lambda: len(sink.submissions) == 1, "the job")
    keep = tmp_path / "Take.wav"
    keep.write_bytes(source.read_bytes())
    stat = source.stat()
    os.utime(keep, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    source.unlink()
    time.sleep(2 * SETTLE)
    drop(source, keep.read_bytes())
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    wait_until(lambda: len(sink.submissions) == 2, "the copy")
    _stays(sink, 2, 6 * SETTLE)
    assert sink.sources() == ["Take.wav", "Take.wav"]
    assert sink.submissions[1].request.idempotency_key != sink.submissions[0].request.idempotency_key


@pytest.mark.parametrize("polling", [False, True])
def test_a_hot_folder_deleted_and_made_again_is_watched_at_once(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], polling: bool
) -> None:
    sink = RecordingSink(on_submit=_done_at_once)
    run_watcher(sink, [folder(hot, polling=polling)], rescan_interval=600.0)
    drop(hot / "Before.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the first file")
    for attempt in range(2):  # deleted and made again, twice
        shutil.rmtree(hot)
        time.sleep(0.3)  # the watcher sees it gone
        hot.mkdir()
        drop(hot / f"After {attempt}.wav")  # straight after: before any watch could be set up again
        wait_until(lambda n=attempt: len(sink.submissions) == 2 + n, f"the file in the new folder ({attempt})")
    assert sink.sources() == ["Before.wav", "After 0.wav", "After 1.wav"]
    later = hot / "Later.wav"  # and files dropped later still raise events
    time.sleep(0.5)
    drop(later)
    wait_until(lambda: len(sink.submissions) == 4, "a file dropped later into the new folder")


def test_folders_come_back_even_when_no_event_says_so(
    tmp_path: Path, hot: Path, run_watcher: Callable[..., HotFolderWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS's FSEvents drops a non-recursive watch's folder events (watchdog #918, #1013), and a drive mounted
    on a folder makes none: the parent's watch then says nothing. The worker's own look at each folder
    still finds a folder made again (a new inode) and one that appeared, well before the rescan."""
    from bridge.hotfolder import folder_watches

    monkeypatch.setattr(folder_watches._AnchorForwarder, "on_any_event", lambda self, event: None)
    sink = RecordingSink(on_submit=_done_at_once)
    later = tmp_path / "later"
    run_watcher(sink, [folder(hot), folder(later, preset="piano")], rescan_interval=600.0)
    drop(hot / "Before.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the first file")
    hot.rename(tmp_path / "hot (old)")  # moved away: its own watch follows it there and says nothing
    hot.mkdir()  # a new folder by the old name: the same by name, not by inode
    drop(hot / "After.wav")
    wait_until(lambda: len(sink.submissions) == 2, "the file in the folder made again", timeout=15)
    time.sleep(1.0)
    later.mkdir()  # a folder that appears long after the start, with no event for it
    drop(later / "Keys.wav")
    wait_until(lambda: len(sink.submissions) == 3, "the file in the folder that appeared", timeout=15)
    assert sink.sources() == ["Before.wav", "After.wav", "Keys.wav"]


def test_a_folder_the_share_cannot_stat_for_a_moment_keeps_its_watch(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A network share that does not answer a stat for a while (EIO, ESTALE) is no folder gone: its watch is
    not torn down and made again every second (nor its files' departures noted)."""
    import errno

    from bridge.hotfolder import watcher as watcher_module

    sink = RecordingSink(on_submit=_done_at_once)
    watcher = run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    observer = watcher._watches._observers[hot]
    real_stat = os.stat

    def flaky_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if Path(str(path)) == hot:
            raise OSError(errno.EIO, "Input/output error")
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    caplog.set_level(logging.INFO, logger="bridge.hotfolder.folder_watches")
    monkeypatch.setattr(os, "stat", flaky_stat)  # every caller's: pathlib's too
    time.sleep(3 * watcher_module.FOLDER_LOOK_INTERVAL)
    monkeypatch.undo()
    assert watcher._watches._observers.get(hot) is observer
    assert not [r for r in caplog.records if "is gone" in r.getMessage()]
    drop(hot / "Still.wav")
    wait_until(lambda: len(sink.submissions) == 1, "a file in the folder still watched")


def test_a_hot_folder_missing_at_start_is_watched_as_soon_as_it_is_made(
    tmp_path: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """A folder on a drive not yet connected, or not made yet: no waiting for the rescan when it appears,
    however many of its parent folders were missing too."""
    sink = RecordingSink(on_submit=_done_at_once)
    near, deep = tmp_path / "near", tmp_path / "a" / "b" / "deep"
    run_watcher(sink, [folder(near), folder(deep, preset="piano")], rescan_interval=600.0)
    time.sleep(0.3)
    near.mkdir()
    drop(near / "One.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the file in the folder made after the start")
    deep.mkdir(parents=True)
    drop(deep / "Two.wav")
    wait_until(lambda: len(sink.submissions) == 2, "the file in the deep folder")
    time.sleep(0.5)
    drop(deep / "Three.wav")
    wait_until(lambda: len(sink.submissions) == 3, "a later file there")
    assert sink.by_name("Two.wav").request.preset == "piano"


def test_a_hot_folder_moved_away_and_back_is_watched_again(
    hot: Path, tmp_path: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    sink = RecordingSink(on_submit=_done_at_once)
    run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    os.rename(hot, tmp_path / "hot (old)")
    drop(tmp_path / "hot (old)" / "Not ours.wav")  # the old folder is not watched any more
    time.sleep(0.3)
    os.rename(tmp_path / "hot (old)", hot)  # its file comes back with it: taken
    wait_until(lambda: len(sink.submissions) == 1, "the file of the folder that came back")
    drop(hot / "New.wav")
    wait_until(lambda: len(sink.submissions) == 2, "a file dropped into it")
    _stays(sink, 2, 6 * SETTLE)
    assert sink.sources() == ["Not ours.wav", "New.wav"]


def test_a_sidecar_deleted_while_its_job_is_under_way_asks_for_nothing_here_nor_on_a_sibling(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """The engine is busy: the job with a sidecar is still queued when the user tidies the sidecar away. That
    is no request to run the file with the folder's preset: not here, not on a sibling daemon sharing the
    folder, not after a restart, not once the job is done."""
    sink = RecordingSink()  # jobs stay queued
    (hot / "Vox.sam.yaml").write_text("prompt: lead vocal\n")
    time.sleep(SETTLE)
    first = run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    drop(hot / "Vox.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job with the sidecar")
    (hot / "Vox.sam.yaml").unlink()
    _stays(sink, 1, 8 * SETTLE)
    sibling = RecordingSink("sibling")
    run_watcher(sibling, [folder(hot)], instance_id="studio-b", rescan_interval=600.0)
    _stays(sibling, 0, 8 * SETTLE)
    first.stop()  # a restart while the job still runs (the journal keeps it)
    run_watcher(sink, [folder(hot)], instance_id="studio-a2", rescan_interval=600.0)
    _stays(sink, 1, 8 * SETTLE)
    sink.finish(sink.submissions[0].job_id, JobState.done)
    _stays(sink, 1, 6 * SETTLE)
    assert sink.submissions[0].request.prompt == "lead vocal" and sibling.submissions == []


def test_a_failed_sidecar_job_frees_the_file_without_its_sidecar(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """The job with a sidecar failed: deleting the error file and the sidecar runs the file with the folder's
    preset, as before sidecars counted, also on a sibling daemon (the cover taken at submit is released)."""
    sink = RecordingSink()
    (hot / "Vox.sam.yaml").write_text("prompt: lead vocal\n")
    time.sleep(SETTLE)
    run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    source = drop(hot / "Vox.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the job with the sidecar")
    (hot / "Vox.sam.yaml").unlink()
    _stays(sink, 1, 6 * SETTLE)  # deleted while queued: nothing
    sink.finish(sink.submissions[0].job_id, JobState.failed, error="out of credit")
    wait_until(lambda: error_file_for(source).exists(), "the error file")
    _stays(sink, 1, 4 * SETTLE)  # the error file blocks, the missing sidecar changes nothing
    sibling = RecordingSink("sibling")
    run_watcher(sibling, [folder(hot)], instance_id="studio-b", rescan_interval=600.0)
    _stays(sibling, 0, 6 * SETTLE)
    error_file_for(source).unlink()
    wait_until(lambda: len(sink.submissions) + len(sibling.submissions) == 2, "the retry")
    _stays(sink, len(sink.submissions), 4 * SETTLE)
    [retry] = [s for s in (*sink.submissions[1:], *sibling.submissions)]
    assert retry.request.preset == "vocals" and retry.request.prompt is None


def test_a_file_done_by_an_older_sam_bridge_is_not_paid_for_again_whatever_its_sidecar_holds(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher]
) -> None:
    """A rolling upgrade of daemons sharing a folder: markers written before sidecars counted have the bare
    key (name, size, time) and no format, also for files with a sidecar. Done, they cover the file whatever
    its sidecar holds. A bare done marker of this version (a file done without a sidecar) does not: a sidecar
    added later still asks for a new job."""
    (hot / "Pad.sam.yaml").write_text("prompt: pad\n")
    pad = drop(hot / "Pad.wav", wav_bytes(seed=31))
    stat = pad.stat()
    key = hashlib.sha256(f"Pad.wav\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    claims = hot / ".sam-bridge" / "claims"
    claims.mkdir(parents=True)
    (claims / f"{key}.1.claim").write_text(json.dumps({  # as the version before sidecar variants wrote it
        "source": "Pad.wav", "instance": "studio-old:123", "host": "studio-old", "pid": 123, "state": "done",
        "claimed_at": time.time() - 60, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "changed_at": time.time() - 30}))
    time.sleep(SETTLE)
    sink = RecordingSink(on_submit=_done_at_once)  # a sibling on another machine: its journal has no such job
    run_watcher(sink, [folder(hot)], instance_id="studio-new", rescan_interval=600.0)
    drop(hot / "Keys.wav", wav_bytes(seed=32))  # done here, without a sidecar
    wait_until(lambda: "Keys.wav" in sink.sources(), "the file without a sidecar")
    _stays(sink, 1, 6 * SETTLE)  # and not Pad.wav, done by the older daemon
    # The old marker cannot say what the sidecar held: the file is done whatever it holds (save the audio
    # again to run it with a new prompt). A sidecar added to a file done here without one is a new job.
    (hot / "Pad.sam.yaml").write_text("prompt: warm pad\n")
    (hot / "Keys.sam.yaml").write_text("prompt: keys\n")
    wait_until(lambda: len(sink.submissions) == 2, "the job the new sidecar asks for")
    _stays(sink, 2, 6 * SETTLE)
    assert (sink.submissions[1].request.source.name, sink.submissions[1].request.prompt) == ("Keys.wav", "keys")
    pad.touch()  # saved again: a new version of the audio
    wait_until(lambda: len(sink.submissions) == 3, "the audio saved again")
    assert sink.submissions[2].request.prompt == "warm pad"


def test_a_sidecar_being_typed_with_autosave_is_one_job_for_the_prompt_it_ends_with(
    hot: Path, run_watcher: Callable[..., HotFolderWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor that autosaves (VS Code's afterDelay, TextEdit) saves the sidecar of a finished file while the
    user types a new prompt, pausing longer than the folder's settle time: only the prompt it ends with is a
    job, once the sidecar has been quiet for the longer edit settle time. A new file's first drop keeps the
    folder's settle time."""
    edit_settle = jobs.SIDECAR_EDIT_SETTLE_FACTOR * SETTLE
    sink = RecordingSink(on_submit=_done_at_once)
    sidecar = hot / "Gtr.sam.yaml"
    sidecar.write_text("prompt: acoustic guitar\n")
    time.sleep(SETTLE)
    run_watcher(sink, [folder(hot)], rescan_interval=600.0)
    drop(hot / "Gtr.wav")
    wait_until(lambda: len(sink.submissions) == 1, "the first job")
    for partial in ("prompt: e\n", "prompt: electr\n", "prompt: electric guitar\n"):
        sidecar.write_text(partial)  # an autosave
        saved = time.monotonic()
        time.sleep(4 * SETTLE)  # a pause longer than the folder's settle time, shorter than the edit's
    wait_until(lambda: sink.submissions[-1].request.prompt == "electric guitar", "the job for the prompt typed")
    assert [s.request.prompt for s in sink.submissions] == ["acoustic guitar", "electric guitar"]
    _stays(sink, 2, edit_settle + 2 * SETTLE)
    assert sink.submissions[1].at - saved >= edit_settle - 0.05
    # A new file with its sidecar: the folder's settle time, not the edit's (made far longer here).
    monkeypatch.setattr(jobs, "SIDECAR_EDIT_SETTLE", 600.0)
    (hot / "Bass.sam.yaml").write_text("prompt: bass\n")
    drop(hot / "Bass.wav")
    wait_until(lambda: len(sink.submissions) == 3, "the new file", timeout=15.0)
    assert sink.submissions[2].request.prompt == "bass"
