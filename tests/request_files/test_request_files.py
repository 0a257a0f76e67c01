"""The request-files way in with the real engine, pipeline and local service: answered requests move to
done/<date>/ once they are old enough — never onto an existing file, never before they are answered, and
never submitted again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bridge.common.errors import InputError
from bridge.common.request import Span
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from bridge.request_files.folder import RequestFolder, parse_request_file, status_path
from bridge.request_files.parse import RequestVersion, read_version
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for
from tests.test_daemon import make_source, write_request

Start = Callable[..., tuple[LocalFalService, Path]]


@pytest.fixture
def start_folder(tmp_path: Path) -> Iterator[Start]:
    """A RequestFolder on `tmp_path/requests` fed to a real engine against a local service."""
    running: list[tuple[RequestFolder, JobEngine, FalClient, LocalFalService]] = []

    def start(archive_after: float, job_time: float = 0.0, *, state: Path = tmp_path,
              service: LocalFalService | None = None, instance_id: str | None = None) -> tuple[LocalFalService, Path]:
        """`state`: the daemon's own folder (journal, work); `service`: share another daemon's."""
        if service is None:
            service = LocalFalService(key=TEST_KEY, job_time=job_time)
            service.start()
        client = FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY)
        engine = JobEngine(Journal(state / "journal.sqlite"), Pipeline(client, use_stream=True),
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=state / "work", rescan_interval=0.1))
        engine.start()
        folder = RequestFolder(engine, tmp_path / "requests", rescan_interval=0.2, archive_after=archive_after,
                               instance_id=instance_id)
        folder.start()
        running.append((folder, engine, client, service))
        return service, tmp_path / "requests"

    yield start
    for folder, engine, client, _service in running:
        folder.stop()
        engine.stop()
        engine.journal.close()
        client.close()
    for service in {id(entry[3]): entry[3] for entry in running}.values():
        service.stop()


def version_of(path: Path) -> RequestVersion:
    found = read_version(path)
    assert found is not None
    return found[0]


def archived(requests: Path, name: str) -> list[Path]:
    return sorted(requests.glob(f"done/*/{name}"))


def status_of(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_an_answered_request_moves_to_done_with_its_status_and_is_not_submitted_again(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav")
    before = source.read_bytes()
    service, requests = start_folder(archive_after=1.0)
    body = {"source": str(source), "preset": "bass", "tag": "item-7", "output_dir": str(tmp_path / "out")}
    write_request(requests, "item-7", **body)
    wait_for(lambda: archived(requests, "item-7.status.json"), timeout=60, what="the request to be archived")

    [moved] = archived(requests, "item-7.json")
    assert json.loads(moved.read_text()) == body  # the request itself, unchanged
    assert moved.parent.name == time.strftime("%Y-%m-%d")
    status = status_of(moved.with_name("item-7.status.json"))
    assert status["state"] == "done" and status["tag"] == "item-7"
    target, residual = (sf.read(status["stems"][label])[0] for label in ("target", "residual"))
    assert np.allclose(target + residual, sf.read(source)[0], atol=2.0**-22)  # the stems it points at
    assert not list(requests.glob("item-7*"))  # nothing left behind in the requests folder
    time.sleep(0.6)  # a few rescans
    assert service.stats()["submits"] == 1 and not list(requests.glob("*.json"))
    assert source.read_bytes() == before


def test_an_archived_name_already_taken_gets_a_number_and_nothing_is_overwritten(
        start_folder: Start, tmp_path: Path) -> None:
    day = tmp_path / "requests" / "done" / time.strftime("%Y-%m-%d")
    day.mkdir(parents=True)
    (day / "take.json").write_text("an older request of the same name")
    (day / "take.status.json").write_text("its status")
    _, requests = start_folder(archive_after=0.5)
    write_request(requests, "take", source=str(tmp_path / "missing.wav"), preset="bass")  # answered: failed
    wait_for(lambda: (day / "take-2.status.json").exists(), timeout=30, what="the numbered archive")
    assert (day / "take.json").read_text() == "an older request of the same name"
    assert (day / "take.status.json").read_text() == "its status"
    status = status_of(day / "take-2.status.json")
    assert status["state"] == "failed" and "missing.wav" in status["error"]
    assert json.loads((day / "take-2.json").read_text())["source"].endswith("missing.wav")


def test_a_request_still_running_is_not_moved(start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Long.wav", seconds=1.0)
    service, requests = start_folder(archive_after=0.0, job_time=1.5)
    write_request(requests, "slow", source=str(source), preset="bass", output_dir=str(tmp_path / "out"))
    wait_for(lambda: (requests / "slow.status.json").exists()
             and status_of(requests / "slow.status.json")["state"] == "running", timeout=30, what="running")
    time.sleep(0.5)  # rescans while the job runs
    assert (requests / "slow.json").exists() and not archived(requests, "slow.json")
    wait_for(lambda: archived(requests, "slow.status.json"), timeout=30, what="archived once done")
    assert status_of(archived(requests, "slow.status.json")[0])["state"] == "done"
    assert service.stats()["submits"] == 1


def test_an_old_status_whose_request_is_gone_is_moved_and_a_new_one_stays(
        start_folder: Start, tmp_path: Path) -> None:
    requests = tmp_path / "requests"
    requests.mkdir()
    old, young = requests / "lost.status.json", requests / "fresh.status.json"
    old.write_text('{"state": "done"}')
    young.write_text('{"state": "done"}')
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    start_folder(archive_after=3600.0)
    wait_for(lambda: archived(requests, "lost.status.json"), timeout=10, what="the orphan status to move")
    [moved] = archived(requests, "lost.status.json")
    assert moved.parent.name == time.strftime("%Y-%m-%d", time.localtime(long_ago))
    assert moved.read_text() == '{"state": "done"}' and young.exists()


# -- paths in a request file: `~` is the user's home, relative is relative to the request's folder --------


def test_relative_paths_are_resolved_beside_the_request_file_not_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "daemon-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    requests = tmp_path / "Song" / "requests"
    path = write_request(requests, "take", source="../Audio/Guitar 01.wav", preset="bass",
                        project_dir="Project", output_dir="Stems")
    request = parse_request_file(path, version_of(path))
    assert request.source == tmp_path / "Song" / "Audio" / "Guitar 01.wav"  # `..` folded away
    assert request.project_dir == requests / "Project"
    assert request.output_dir == requests / "Stems"
    assert all(p is not None and p.is_absolute() and elsewhere not in p.parents
               for p in (request.source, request.project_dir, request.output_dir))


def test_tilde_is_the_users_home_in_every_path_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))  # what expanduser reads on Windows
    path = write_request(tmp_path / "requests", "take", source="~/Audio/Bass.wav", preset="bass",
                        project_dir="~/Music/Song", output_dir="~/Music/Song/Stems")
    request = parse_request_file(path, version_of(path))
    assert request.source == home / "Audio" / "Bass.wav"
    assert request.project_dir == home / "Music" / "Song"
    assert request.output_dir == home / "Music" / "Song" / "Stems"
    assert "~" not in str(request.output_dir)


def test_absolute_paths_and_missing_fields_are_left_as_written(tmp_path: Path) -> None:
    source = tmp_path / "Takes" / "Vox.wav"
    path = write_request(tmp_path / "requests", "take", source=str(source), prompt="voice", project_dir=None)
    request = parse_request_file(path, version_of(path))
    assert request.source == source and request.project_dir is None and request.output_dir is None


def test_a_relative_output_dir_gets_the_stems_beside_the_request_not_in_the_daemons_folder(
        start_folder: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "daemon-cwd"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(elsewhere)
    service, requests = start_folder(archive_after=3600.0)
    near = make_source(requests / "Guitar 01.wav", seconds=0.5, seed=1)  # relative source too
    far = make_source(tmp_path / "Bass 01.wav", seconds=0.5, seed=2)
    first = write_request(requests, "near", source="Guitar 01.wav", preset="bass", output_dir="Stems")
    second = write_request(requests, "home", source=str(far), preset="bass", project_dir="~/Music/Song")

    def done(request: Path) -> dict[str, Any]:
        wait_for(lambda: status_of(status_path(request)).get("state") in ("done", "failed")
                 if status_path(request).exists() else False, timeout=60, what=f"{request.name} to finish")
        status = status_of(status_path(request))
        assert status["state"] == "done", status
        return status

    for request, source, folder in ((first, near, requests / "Stems"),
                                    (second, far, home / "Music" / "Song" / "Stems")):
        status = done(request)
        stems = {label: Path(p) for label, p in status["stems"].items()}
        assert {p.parent for p in stems.values()} == {folder}
        assert Path(status["manifest"]).parent == folder
        target, residual = (sf.read(stems[label])[0] for label in ("target", "residual"))
        original = sf.read(source)[0]
        assert len(target) == len(original)
        assert np.allclose(target + residual, original, atol=2.0**-22)
    assert not list(elsewhere.iterdir())  # nothing in the daemon's working folder
    assert not (requests / "~").exists() and not (elsewhere / "~").exists()
    assert service.stats()["submits"] == 2


def test_every_problem_of_a_request_file_is_named_at_once_and_only_its_own_fields_are_offered(
        tmp_path: Path) -> None:
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"source": str(tmp_path / "a.wav"), "prompt": "piano", "colour": "red",
                                   "start": -1}))
    with pytest.raises(InputError) as caught:
        parse_request_file(request, version_of(request))
    message = caught.value.message
    assert message.startswith("r.json: ") and "colour: unknown field; allowed: source, " in message
    assert "start: must be at least 0 (got -1)" in message  # both, not only the first
    assert "origin" not in message and "idempotency_key" not in message  # set by sam-bridge, not by you


def test_a_request_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # What Windows PowerShell 5.1 writes with `Out-File` or `Set-Content -Encoding UTF8`.
    request = tmp_path / "r.json"
    request.write_bytes(b"\xef\xbb\xbf" + json.dumps({"source": str(tmp_path / "a.wav"), "prompt": "piano"}).encode())
    assert parse_request_file(request, version_of(request)).prompt == "piano"


def test_a_json_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    request = tmp_path / "r.json"
    request.write_text('{\n  "source": "a.wav"\n  "prompt": "piano"\n}')
    with pytest.raises(InputError) as caught:
        parse_request_file(request, version_of(request))
    assert caught.value.message.startswith("r.json is not valid JSON")
    assert "line 3, column 3" in caught.value.message


def test_a_field_written_twice_is_refused_by_name(tmp_path: Path) -> None:
    request = tmp_path / "r.json"
    request.write_text('{"source": "a.wav", "preset": "piano", "preset": "bass"}')
    with pytest.raises(InputError) as caught:
        parse_request_file(request, version_of(request))
    assert caught.value.message == "r.json: preset is written twice; keep one."


@pytest.mark.parametrize(("fields", "expected"), [
    ({"start": float("nan")}, "start: should be a finite number, got nan"),
    ({"length": float("inf")}, "length: should be a finite number, got inf"),
    ({"start": True}, "start: should be a number, got true"),
    ({"source": None}, "source: give the path of an audio file"),
])
def test_wrong_values_in_a_request_file_are_named_in_plain_words(
        tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"source": str(tmp_path / "a.wav"), "prompt": "piano", **fields}))
    with pytest.raises(InputError) as caught:
        parse_request_file(request, version_of(request))
    assert caught.value.message == f"r.json: {expected}"


def test_spans_written_as_the_cli_writes_them_give_the_same_request_as_spans_written_as_fields(
        tmp_path: Path) -> None:
    requests = []
    for name, spans in (("text", ["2-9.5", "4-5:exclude"]),
                        ("fields", [{"start": 2, "end": 9.5}, {"start": 4, "end": 5, "include": False}])):
        request = tmp_path / f"{name}.json"
        request.write_text(json.dumps({"source": str(tmp_path / "a.wav"), "prompt": "piano", "spans": spans}))
        requests.append(parse_request_file(request, version_of(request)))
    text, fields = requests
    assert text.spans == fields.spans == [Span(start=2, end=9.5), Span(start=4, end=5, include=False)]
    assert text.model_dump(exclude={"idempotency_key"}) == fields.model_dump(exclude={"idempotency_key"})


def test_a_span_written_wrong_is_named_in_the_requests_status_and_nothing_is_sent(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    service, requests = start_folder(archive_after=3600.0)
    request = write_request(requests, "take", source=source, prompt="piano", spans=["0.1-0.2", "0.3-x"])
    status = finished(request)
    assert status["state"] == "failed"
    assert "spans.1: '0.3-x': give START-END in seconds, e.g. 12.5-20 (or 12.5-20:exclude)" in status["error"]
    assert service.stats()["submits"] == 0


def test_true_is_not_a_number_of_candidates(tmp_path: Path) -> None:
    from bridge.presets.recipe import recipe_for

    request = tmp_path / "r.json"
    request.write_text(json.dumps({"source": str(tmp_path / "a.wav"), "prompt": "piano",
                                   "options": {"reranking_candidates": True}}))
    with pytest.raises(InputError) as caught:
        recipe_for(parse_request_file(request, version_of(request)), PresetLibrary([]))
    assert "reranking_candidates: should be a number, got true" in caught.value.message


# -- versions: a folder with coarse file times (FAT, some NAS: 2 s) --------------------------------------


def finished(request: Path) -> dict[str, Any]:
    wait_for(lambda: status_path(request).exists()
             and status_of(status_path(request)).get("state") in ("done", "failed", "cancelled"),
             timeout=60, what=f"{request.name} to be answered")
    return status_of(status_path(request))


def test_a_request_saved_again_within_the_same_mtime_is_a_new_version(start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    service, requests = start_folder(archive_after=3600.0)
    request = write_request(requests, "take", source=str(source), prompt="piano", tag="first")
    first = finished(request)
    assert first["state"] == "done" and first["tag"] == "first", first
    slot = request.stat().st_mtime_ns
    write_request(requests, "take", source=str(source), prompt="bass guitar", tag="second, saved again")
    os.utime(request, ns=(slot, slot))  # the same 2 s slot: the file system gives it the first one's mtime
    wait_for(lambda: status_of(status_path(request)).get("tag") == "second, saved again"
             and status_of(status_path(request)).get("state") == "done", timeout=60, what="the second version")
    second = status_of(status_path(request))
    assert second["job_id"] != first["job_id"] and second["request_mtime_ns"] == slot
    assert Path(second["stems"]["target"]).name == "Guitar 01 - bass-guitar.target.wav"
    target, residual = (sf.read(second["stems"][label], dtype="float64")[0] for label in ("target", "residual"))
    assert np.array_equal(target + residual, sf.read(source, dtype="float64")[0])
    time.sleep(1.0)  # rescans: the untouched second version is not taken again
    assert status_of(status_path(request))["job_id"] == second["job_id"]
    assert service.stats()["submits"] == 2


def test_a_request_written_in_two_steps_within_one_mtime_is_answered_once_whole(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    service, requests = start_folder(archive_after=3600.0)
    request = requests / "take.json"
    whole = json.dumps({"source": str(source), "prompt": "piano", "tag": "whole"})
    request.write_text(whole[:25])  # a writer that does not rename into place, seen half way
    slot = request.stat().st_mtime_ns
    assert finished(request)["error"].startswith("take.json is not valid JSON")
    request.write_text(whole)
    os.utime(request, ns=(slot, slot))
    wait_for(lambda: status_of(status_path(request)).get("state") == "done", timeout=60, what="the whole request")
    status = status_of(status_path(request))
    assert status["tag"] == "whole" and status["error"] is None and status["request_mtime_ns"] == slot
    assert sf.read(status["stems"]["target"])[0].shape == sf.read(source)[0].shape
    assert service.stats()["submits"] == 1


# -- cancel markers ---------------------------------------------------------------------------------


def test_a_request_cancelled_before_it_was_taken_is_answered_cancelled_and_never_sent(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    requests = tmp_path / "requests"
    write_request(requests, "early", source=str(source), prompt="piano", tag="item-3")
    (requests / "early.cancel").touch()  # REAPER's Cancel, while the daemon was not running
    service, _ = start_folder(archive_after=3600.0)
    wait_for(lambda: status_path(requests / "early.json").exists(), timeout=30, what="the status file")
    time.sleep(0.5)  # a few rescans
    status = status_of(status_path(requests / "early.json"))
    assert status["state"] == "cancelled" and status["job_id"] is None and status["tag"] == "item-3"
    assert service.stats()["submits"] == 0


def test_a_cancel_marker_older_than_the_request_file_does_not_cancel_its_new_version(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    requests = tmp_path / "requests"
    requests.mkdir()
    (requests / "again.cancel").touch()  # cancelled an earlier version
    write_request(requests, "again", source=str(source), prompt="piano")
    written = (requests / "again.json").stat().st_mtime_ns
    os.utime(requests / "again.cancel", ns=(written - 2_000_000_000, written - 2_000_000_000))  # 2 s older
    service, _ = start_folder(archive_after=3600.0)
    wait_for(lambda: status_path(requests / "again.json").exists()
             and status_of(status_path(requests / "again.json"))["state"] == "done", timeout=60, what="done")
    time.sleep(0.5)  # rescans see the marker again
    assert status_of(status_path(requests / "again.json"))["state"] == "done"
    assert service.stats()["submits"] == 1


# -- `sam-bridge retry` of a request file's job --------------------------------------------------------


def retry_job(state: Path, job_id: str) -> None:
    done = subprocess.run([sys.executable, "-m", "bridge", "retry", job_id], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SAM_BRIDGE_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stderr


def test_a_retried_job_reports_its_progress_and_end_in_the_same_status_file(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    service, requests = start_folder(archive_after=3600.0)
    service.faults.fail_job("CUDA error: out of memory")
    request = write_request(requests, "take", source=str(source), prompt="piano", tag="item-9")
    wait_for(lambda: status_path(request).exists() and status_of(status_path(request))["state"] == "failed",
             timeout=60, what="the job to fail")
    job_id = status_of(status_path(request))["job_id"]
    retry_job(tmp_path, job_id)
    wait_for(lambda: status_of(status_path(request))["state"] == "done", timeout=60, what="the retry to finish")
    status = status_of(status_path(request))
    assert status["job_id"] == job_id and status["tag"] == "item-9" and status["error"] is None
    from bridge.request_files.folder import STATUS_FIELDS
    assert set(status) == set(STATUS_FIELDS)  # the README's table
    target, residual = (sf.read(status["stems"][label], dtype="float64")[0] for label in ("target", "residual"))
    assert np.array_equal(target + residual, sf.read(source, dtype="float64")[0])  # the retry's stems null
    assert service.stats()["submits"] == 2


Daemon = tuple[RequestFolder, JobEngine, FalClient]


def start_daemon(tmp_path: Path, service: LocalFalService, instance_id: str = "me") -> Daemon:
    """A daemon's engine and requests folder on `tmp_path`'s journal, stopped with `stop_daemon`."""
    client = FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY)
    engine = JobEngine(Journal(tmp_path / "journal.sqlite"), Pipeline(client, use_stream=True),
                       PresetLibrary([("built-in", builtin_presets_dir())]),
                       EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
    engine.start()
    folder = RequestFolder(engine, tmp_path / "requests", rescan_interval=0.2, archive_after=3600.0,
                           instance_id=instance_id)
    folder.start()
    return folder, engine, client


def stop_daemon(folder: RequestFolder, engine: JobEngine, client: FalClient) -> None:
    folder.stop()
    engine.stop()
    engine.journal.close()
    client.close()


def state_of(request: Path) -> str:
    return str(status_of(status_path(request))["state"])


def test_a_daemon_restarted_under_another_name_still_follows_and_cancels_its_requests(tmp_path: Path) -> None:
    """Its claim markers name the host, which a laptop may rename between networks: the job in its own
    journal still makes the request its own, so the status file follows it and a cancel reaches it."""
    with LocalFalService(key=TEST_KEY, job_time=3.0) as service:
        sources = [make_source(tmp_path / f"Take {n}.wav", seconds=0.5, seed=n) for n in range(2)]
        running = start_daemon(tmp_path, service, "studio-mac.local:state")
        try:
            requests = [write_request(tmp_path / "requests", f"take-{n}", source=str(source), prompt="piano")
                        for n, source in enumerate(sources)]
            wait_for(lambda: all(status_path(r).exists() and state_of(r) == "running" for r in requests),
                     timeout=30, what="both running at the service")
        finally:
            stop_daemon(*running)
        running = start_daemon(tmp_path, service, "studio-mac-2.local:state")
        try:
            (tmp_path / "requests" / "take-1.cancel").touch()
            wait_for(lambda: state_of(requests[0]) == "done" and state_of(requests[1]) == "cancelled", timeout=60,
                     what="one done, one cancelled")
            wait_for(lambda: service.stats()["calls"].get("cancel", 0) >= 1, what="the cancel to reach the service")
            assert Path(status_of(status_path(requests[0]))["stems"]["target"]).is_file()
            assert service.stats()["submits"] == 2  # both followed by polling, never sent again
        finally:
            stop_daemon(*running)


def test_a_cancel_marker_acted_on_before_a_restart_does_not_cancel_the_jobs_retry(tmp_path: Path) -> None:
    """Cancel by marker, the daemon stops, `sam-bridge retry`, the daemon starts: the old marker (still
    there: markers are the user's) must not cancel the retried, paid-for job again."""
    start, stop = start_daemon, stop_daemon
    with LocalFalService(key=TEST_KEY, job_time=1.5) as service:
        source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
        running = start(tmp_path, service)
        try:
            request = write_request(tmp_path / "requests", "take", source=str(source), prompt="piano")
            wait_for(lambda: status_path(request).exists() and state_of(request) == "running", timeout=30,
                     what="the job to run")
            (tmp_path / "requests" / "take.cancel").touch()  # REAPER's Cancel
            wait_for(lambda: state_of(request) == "cancelled", timeout=30, what="the cancel")
        finally:
            stop(*running)
        retry_job(tmp_path, str(status_of(status_path(request))["job_id"]))
        running = start(tmp_path, service)
        try:
            wait_for(lambda: state_of(request) in ("done", "failed"), timeout=60, what="the retried job")
            time.sleep(1.0)  # rescans see the old marker again
            assert state_of(request) == "done", status_of(status_path(request))
            assert service.stats()["submits"] == 2 and service.stats()["cancels"] == 1
        finally:
            stop(*running)


# -- several daemons on one requests folder ----------------------------------------------------------


def test_two_daemons_sharing_a_requests_folder_take_each_request_once(start_folder: Start, tmp_path: Path) -> None:
    sources = [make_source(tmp_path / f"Take {n}.wav", seconds=0.5, seed=n) for n in range(4)]
    requests = tmp_path / "requests"
    for n, source in enumerate(sources):  # there before either starts: both see them at once
        write_request(requests, f"take-{n}", source=str(source), prompt="piano", output_dir=str(tmp_path / "out"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    service, _ = start_folder(archive_after=3600.0, job_time=0.3, state=tmp_path / "a", instance_id="a")
    start_folder(archive_after=3600.0, state=tmp_path / "b", service=service, instance_id="b")
    for n in range(4):
        wait_for(lambda n=n: status_path(requests / f"take-{n}.json").exists()
                 and status_of(status_path(requests / f"take-{n}.json"))["state"] == "done", timeout=60,
                 what=f"take-{n} to be done")
    time.sleep(0.6)  # rescans by both
    assert service.stats()["submits"] == 4
    jobs = [status_of(status_path(requests / f"take-{n}.json"))["job_id"] for n in range(4)]
    assert len(set(jobs)) == 4
    stems = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".wav")
    assert len(stems) == 8  # one target and one residual per take: no numbered second set


def test_a_request_file_saved_again_while_its_job_runs_cancels_that_job_and_follows_the_new_one(
        start_folder: Start, tmp_path: Path) -> None:
    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    out = tmp_path / "out"
    service, requests = start_folder(archive_after=3600.0, job_time=1.5)
    request = write_request(requests, "take", source=str(source), prompt="first prompt", tag="v1",
                            output_dir=str(out))
    wait_for(lambda: status_path(request).exists() and status_of(status_path(request))["state"] == "running",
             timeout=30, what="the first version to run")
    first_job = status_of(status_path(request))["job_id"]
    write_request(requests, "take", source=str(source), prompt="second prompt", tag="v2", output_dir=str(out))
    wait_for(lambda: status_of(status_path(request))["job_id"] != first_job, timeout=30, what="the new job")
    wait_for(lambda: status_of(status_path(request))["state"] in ("done", "failed", "cancelled"), timeout=60,
             what="the new version to finish")
    time.sleep(2.0)  # the first job would have ended by now: nothing of it may land in the status file
    status = status_of(status_path(request))
    assert status["state"] == "done" and status["tag"] == "v2" and status["job_id"] != first_job
    assert service.stats()["cancels"] >= 1  # the first job was cancelled at the service
    assert sorted(p.name for p in out.glob("*.wav")) == [
        "Guitar 01 - second-prompt.residual.wav", "Guitar 01 - second-prompt.target.wav"]


# -- the flags in words, from the daemon ---------------------------------------------------------------


def test_a_flagged_jobs_status_says_which_flags_are_warnings_and_what_each_means(
        start_folder: Start, tmp_path: Path) -> None:
    """A DAW script had its own few words for three flags and took every flag but `audition` for a
    warning: the status file now carries the daemon's words (FLAG_TEXT) and which flags are warnings."""
    from bridge.common.flags import FLAG_TEXT
    from bridge.request_files.folder import STATUS_FIELDS

    source = make_source(tmp_path / "Guitar 01.wav", seconds=0.5)
    _, requests = start_folder(archive_after=3600.0)
    request = write_request(requests, "past-end", source=str(source), prompt="piano", start=0.25, length=1.0)
    wait_for(lambda: status_path(request).exists() and status_of(status_path(request))["state"] == "done",
             timeout=60, what="done")
    status = status_of(status_path(request))
    assert status["flags"] == ["cut-at-end"]  # the part asked for runs past the end of the file
    assert status["warnings"] == ["cut-at-end"]
    assert status["flag_words"] == {"cut-at-end": FLAG_TEXT["cut-at-end"]}
    assert set(status) == set(STATUS_FIELDS)


def test_notes_are_worded_but_no_warnings() -> None:
    from bridge.common.flags import FLAG_TEXT, NOTES
    from bridge.request_files.folder import flag_fields

    fields = flag_fields(("drift-corrected", "target-unlikely", "audition", "span-cut-at-end", "drift", "new-one"))
    assert fields["warnings"] == ["target-unlikely", "drift", "new-one"]  # in order; a flag with no words too
    assert fields["flag_words"] == {flag: FLAG_TEXT[flag] for flag in (
        "drift-corrected", "target-unlikely", "audition", "span-cut-at-end", "drift")}
    assert not NOTES & set(fields["warnings"])
    assert flag_fields(()) == {"warnings": [], "flag_words": {}}
