"""Dedupe with the real engine, pipeline and local service: a job whose audio, prompt and options match an
earlier finished job reuses its stems without a second submit, and its manifest describes its own source
and request, not the earlier one's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bridge.common.jobs import JobState, JobView
from bridge.common.request import Origin, SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from tests.conftest import wait_for
from tests.test_daemon import make_source


@pytest.fixture
def engine(client: FalClient, tmp_path: Path) -> Iterator[JobEngine]:
    running = JobEngine(Journal(tmp_path / "journal.sqlite"), Pipeline(client, poll_interval=0.02, use_stream=False),
                        PresetLibrary([("built-in", builtin_presets_dir())]),
                        EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
    running.start()
    yield running
    running.stop()
    running.journal.close()


def run(engine: JobEngine, request: SeparationRequest) -> JobView:
    job_id = engine.submit(request)

    def finished() -> bool:
        view = engine.get(job_id)
        return view is not None and view.state.finished

    wait_for(finished, timeout=60, what=f"job {request.tag}")
    view = engine.get(job_id)
    assert view is not None and view.state == JobState.done, view
    return view


def manifest_of(view: JobView) -> dict[str, Any]:
    assert view.manifest is not None
    return dict(json.loads(Path(view.manifest).read_text(encoding="utf-8")))


def test_a_reused_result_names_the_new_source_and_request(
        engine: JobEngine, service: LocalFalService, tmp_path: Path) -> None:
    for session in ("Session A", "Session B"):
        (tmp_path / session).mkdir()
    first_source = make_source(tmp_path / "Session A" / "Guitar 01.wav", seconds=0.5)
    second_source = tmp_path / "Session B" / "Guitar 01 copy.wav"
    second_source.write_bytes(first_source.read_bytes())  # same bytes, another path
    before = second_source.read_bytes()

    first = run(engine, SeparationRequest(source=first_source, prompt="piano", tag="first"))
    second = run(engine, SeparationRequest(source=second_source, prompt="piano", tag="second",
                                           origin=Origin.request_file))

    assert service.stats()["submits"] == 1  # the second job paid nothing
    old, new = manifest_of(first), manifest_of(second)
    assert new["reused_from"] == first.manifest
    assert new["source"]["path"] == str(second_source)
    assert old["source"]["path"] == str(first_source)  # the earlier manifest is left as it was
    assert {k: v for k, v in new["source"].items() if k != "path"} == \
        {k: v for k, v in old["source"].items() if k != "path"}  # same bytes: same hash, format, length
    assert new["request"]["tag"] == "second" and new["request"]["origin"] == "request-file"
    assert str(first_source) not in json.dumps({k: v for k, v in new.items() if k != "reused_from"})
    assert new["estimated_cost"]["amount"] == 0.0
    # the stems sit beside the second source, name it, and are the first job's stems sample for sample
    assert {Path(p).parent for p in second.stems.values()} == {second_source.parent / "Stems"}
    assert all(Path(p).name.startswith("Guitar 01 copy") for p in second.stems.values())
    assert {label: entry["path"] for label, entry in new["stems"].items()} == second.stems
    for label in ("target", "residual"):
        assert np.array_equal(sf.read(first.stems[label])[0], sf.read(second.stems[label])[0])
    target, residual = (sf.read(second.stems[label])[0] for label in ("target", "residual"))
    assert np.allclose(target + residual, sf.read(second_source)[0], atol=2.0**-22)
    assert second_source.read_bytes() == before


def test_an_unreadable_earlier_manifest_makes_the_stems_anew_from_the_earlier_requests(
        engine: JobEngine, service: LocalFalService, tmp_path: Path) -> None:
    first_source = make_source(tmp_path / "a.wav", seconds=0.5)
    second_source = tmp_path / "b.wav"
    second_source.write_bytes(first_source.read_bytes())
    first = run(engine, SeparationRequest(source=first_source, prompt="piano", tag="first"))
    assert first.manifest is not None
    Path(first.manifest).write_text("{ half a manifest")  # e.g. a user's editor saved garbage over it
    second = run(engine, SeparationRequest(source=second_source, prompt="piano", tag="second"))
    assert service.stats()["submits"] == 1  # its results fetched again, not paid again
    new = manifest_of(second)
    assert new["reused_from"] is None and new["source"]["path"] == str(second_source)
    assert len(sf.read(second.stems["target"])[0]) == len(sf.read(second_source)[0])


def test_stems_gone_the_earlier_results_are_fetched_again_and_when_those_are_gone_it_is_sent_anew(
        engine: JobEngine, service: LocalFalService, tmp_path: Path) -> None:
    first = run(engine, SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=1.0, seed=3),
                                          prompt="piano", tag="first"))
    first_ids = [step["request_id"] for step in manifest_of(first)["steps"]]
    for path in [*first.stems.values(), first.manifest]:
        Path(str(path)).unlink()  # the stems were deleted (or sit on a drive no one reaches any more)
    copy = tmp_path / "again"
    copy.mkdir()
    again = run(engine, SeparationRequest(source=make_source(copy / "a.wav", seconds=1.0, seed=3), prompt="piano",
                                          tag="again"))
    assert service.stats()["submits"] == 1  # nothing paid again
    assert [step["request_id"] for step in manifest_of(again)["steps"]] == first_ids
    target = sf.read(str(again.stems["target"]))[0]
    assert target.shape[0] == 44100 and np.abs(target).max() > 0.01
    for path in [*again.stems.values(), again.manifest]:
        Path(str(path)).unlink()
    service.faults.expire_files()  # the service no longer has those results either
    third_folder = tmp_path / "third"
    third_folder.mkdir()
    third = run(engine, SeparationRequest(source=make_source(third_folder / "a.wav", seconds=1.0, seed=3),
                                          prompt="piano", tag="third"))
    assert service.stats()["submits"] == 2  # sent anew, once
    assert [step["request_id"] for step in manifest_of(third)["steps"]] != first_ids


def test_the_same_work_twice_at_once_is_paid_once(tmp_path: Path) -> None:
    """A double-click in the DAW, the same request file saved twice, a running request renamed: the second
    job came while the first still ran and both were submitted and paid (dedupe only knew finished jobs on
    one workstation; a team waited already). Now the later one waits for the first and reuses its stems."""
    from bridge.fal.auth import ApiKey
    from tests.conftest import FAST_RETRY, TEST_KEY

    source = make_source(tmp_path / "Take.wav", seconds=0.5)
    with LocalFalService(key=TEST_KEY, job_time=1.5) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        engine = JobEngine(Journal(tmp_path / "journal.sqlite"), Pipeline(client, poll_interval=0.02, use_stream=False),
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, concurrency=2))
        engine.start()
        try:
            first = engine.submit(SeparationRequest(source=source, prompt="piano", tag="first"))
            second = engine.submit(SeparationRequest(source=source, prompt="piano", tag="second"))
            wait_for(lambda: all((engine.get(j) or object()).state.finished for j in (first, second)),  # type: ignore[attr-defined]
                     timeout=60, what="both jobs")
            views = [engine.get(j) for j in (first, second)]
            assert all(v is not None and v.state == JobState.done for v in views), views
            assert slow.stats()["submits"] == 1  # paid once
            reused = [manifest_of(v)["reused_from"] for v in views if v is not None]
            assert sorted(r is None for r in reused) == [False, True]  # one made them, the other reused them
        finally:
            engine.stop()
            engine.journal.close()


def test_the_same_work_waiting_across_a_restart_is_paid_once(tmp_path: Path) -> None:
    """The first job was sent, its twin waited for it, the daemon restarted: the leader was kept in memory
    only, and the resuming job never asks for it, so the twin took the lead and paid again."""
    from bridge.fal.auth import ApiKey
    from tests.conftest import FAST_RETRY, TEST_KEY

    def new_engine(client: FalClient) -> JobEngine:
        return JobEngine(Journal(tmp_path / "journal.sqlite"), Pipeline(client, poll_interval=0.02, use_stream=False),
                         PresetLibrary([("built-in", builtin_presets_dir())]),
                         EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, concurrency=4))

    source = make_source(tmp_path / "Take.wav", seconds=0.5)
    with LocalFalService(key=TEST_KEY, job_time=3.0) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        engine = new_engine(client)
        engine.start()
        try:
            first = engine.submit(SeparationRequest(source=source, prompt="piano", tag="first"))
            wait_for(lambda: engine.journal.handles(first)[0], timeout=20, what="the first job sent")
            second = engine.submit(SeparationRequest(source=source, prompt="piano", tag="second"))
            wait_for(lambda: "Waiting for job" in ((engine.get(second) or object()).message or ""),  # type: ignore[attr-defined]
                     timeout=20, what="the second job waiting for it")
        finally:
            engine.stop()
            engine.journal.close()
        engine = new_engine(client)
        engine.start()
        try:
            wait_for(lambda: all((engine.get(j) or object()).state.finished for j in (first, second)),  # type: ignore[attr-defined]
                     timeout=60, what="both jobs")
            assert [(engine.get(j) or object()).state for j in (first, second)] == [JobState.done] * 2  # type: ignore[attr-defined]
            assert slow.stats()["submits"] == 1  # paid once
        finally:
            engine.stop()
            engine.journal.close()


def test_a_re_export_that_changes_only_metadata_is_reused(
        engine: JobEngine, service: LocalFalService, tmp_path: Path) -> None:
    """A DAW's re-export with a new BWF description or date is the same audio at the same place: it was paid
    for again (dedupe hashed the file's bytes)."""
    from bridge.audio import bwf

    first_source = make_source(tmp_path / "Take.wav", seconds=0.5)
    second_source = tmp_path / "Take (re-export).wav"
    second_source.write_bytes(first_source.read_bytes())
    bwf.append_chunks(first_source, bwf.with_time_reference(b"take", 96_000), None)
    run(engine, SeparationRequest(source=first_source, prompt="piano", tag="first"))
    bwf.append_chunks(second_source, bwf.with_time_reference(b"exported again", 96_000), b"<BWFXML/>")
    second = run(engine, SeparationRequest(source=second_source, prompt="piano", tag="second"))
    assert service.stats()["submits"] == 1  # the same audio: paid once
    assert manifest_of(second)["reused_from"] is not None
