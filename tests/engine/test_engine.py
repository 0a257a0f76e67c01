"""The job engine in-process with its real journal, pipeline and the local service: fairness between ways
in, the daily budget, a lost submit answer, and cancel of a queued job."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.common.cost import PriceTable
from bridge.common.jobs import JobEvent, JobState
from bridge.common.request import Origin, SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.auth import ApiKey
from bridge.fal.client import DEFAULT_QUEUE_URL, FalClient
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from bridge.presets.recipe import recipe_for
from tests.conftest import wait_for
from tests.test_daemon import make_source


@pytest.fixture
def make_engine(client: FalClient, tmp_path: Path) -> Iterator[object]:
    engines: list[JobEngine] = []

    def make(**settings: object) -> JobEngine:
        journal = Journal(tmp_path / f"journal{len(engines)}.sqlite")
        engine = JobEngine(journal, Pipeline(client, poll_interval=0.02, use_stream=False, billed=True),  # as fal
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, **settings))  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()
        engine.journal.close()


def finished(engine: JobEngine, job_id: str) -> bool:
    view = engine.get(job_id)
    return view is not None and view.state.finished


def test_fairness_between_ways_in(make_engine, tmp_path: Path) -> None:
    engine = make_engine(concurrency=1, dedupe=False)
    started: list[str] = []
    lock = threading.Lock()

    def record(event: JobEvent) -> None:
        if event.state == JobState.preparing:
            with lock:
                started.append(event.tag)

    engine.subscribe(record)
    ids = []
    for n in range(6):  # a hot-folder dump first…
        source = make_source(tmp_path / f"hot{n}.wav", seconds=0.2, channels=1, seed=n)
        ids.append(engine.submit(SeparationRequest(source=source, prompt="piano", tag=f"hot{n}",
                                                   origin=Origin.hot_folder)))
    for n in range(2):  # …then two requests from REAPER
        source = make_source(tmp_path / f"reaper{n}.wav", seconds=0.2, channels=1, seed=10 + n)
        ids.append(engine.submit(SeparationRequest(source=source, prompt="piano", tag=f"reaper{n}",
                                                   origin=Origin.request_file)))
    engine.start()
    wait_for(lambda: all(finished(engine, j) for j in ids), timeout=60, what="all jobs")
    assert started.index("reaper0") <= 2 and started.index("reaper1") <= 4  # not behind all six hot files
    assert [t for t in started if t.startswith("hot")] == [f"hot{n}" for n in range(6)]  # FIFO within a way in


def test_daily_budget_holds_jobs_with_a_message(make_engine, service, tmp_path: Path) -> None:
    engine = make_engine(daily_budget=0.001, prices=PriceTable(per_30s=0.05))
    engine.start()
    job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=1.0), prompt="piano"))
    wait_for(lambda: (engine.get(job) or object()).state == JobState.waiting, what="the job to wait")  # type: ignore[attr-defined]
    view = engine.get(job)
    assert view is not None and "Daily budget reached" in view.message
    assert service.stats()["submits"] == 0


@pytest.mark.parametrize("part", [
    {"start": 50.0},  # the rest of a 60 s file: 10 s, not the whole file
    {"start": 40.0, "length": 60.0},  # runs past the end: sent cut at it, 20 s
    {"audition": 5.0},  # the loudest 5 s only
])
def test_the_daily_budget_reserves_what_is_sent_not_the_whole_file(make_engine, service, tmp_path: Path,
                                                                    part: dict[str, float]) -> None:
    """The budget reserved the request's raw length, or the whole file without one: a job sending 5-20 s
    of a 60 s file waited for tomorrow under a budget its estimate fits in (60 s = 2 units, 0.10)."""
    engine = make_engine(daily_budget=0.06, prices=PriceTable(per_30s=0.05))
    engine.start()
    source = make_source(tmp_path / "long.wav", seconds=60.0)
    job = engine.submit(SeparationRequest(source=source, prompt="piano", **part))
    wait_for(lambda: (engine.get(job) or object()).state in (JobState.done, JobState.waiting, JobState.failed),  # type: ignore[attr-defined]
             what="the job to end or wait", timeout=60)
    view = engine.get(job)
    assert view is not None and view.state == JobState.done, view.message
    assert service.stats()["submits"] == 1


def test_only_fal_itself_bills() -> None:
    """A stand-in bills nothing, on this machine or another (no real key is ever sent to one)."""
    urls = {DEFAULT_QUEUE_URL: True, "http://127.0.0.1:8899": False, "http://studio-server.lan:8899": False}
    for url, billed in urls.items():
        with FalClient(ApiKey("k"), queue_url=url, rest_url=url) as fal:  # made, never called
            assert Pipeline(fal).bills() is billed, url
            assert Pipeline(fal, billed=not billed).bills() is not billed  # tests may price a stand-in


def test_a_service_on_this_machine_bills_nothing_so_the_daily_budget_never_holds_its_jobs(
        client: FalClient, service, tmp_path: Path) -> None:
    """Trying things on the stand-in first must not use up the budget of the day's real fal jobs."""
    journal = Journal(tmp_path / "journal.sqlite")
    engine = JobEngine(journal, Pipeline(client, poll_interval=0.02, use_stream=False),
                       PresetLibrary([("built-in", builtin_presets_dir())]),
                       EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, daily_budget=0.001,
                                      prices=PriceTable(per_30s=0.05)))
    try:
        engine.start()
        jobs = [engine.submit(SeparationRequest(source=make_source(tmp_path / f"{n}.wav", seconds=1.0, seed=n),
                                                prompt="piano")) for n in range(2)]
        for job in jobs:
            wait_for(lambda job=job: finished(engine, job), what="the job")  # type: ignore[misc]
            view = engine.get(job)
            assert view is not None and view.state == JobState.done, view
            manifest = json.loads(Path(view.manifest or "").read_text())
            assert manifest["estimated_cost"]["amount"] == 0.0 and manifest["steps"][0]["estimated_cost"] == 0.0
        assert journal.spent_since(0) == 0.0 and service.stats()["submits"] == 2
    finally:
        engine.stop()
        journal.close()


def test_lost_submit_answer_fails_the_job_without_a_second_submit(make_engine, service, tmp_path: Path) -> None:
    engine = make_engine()
    engine.start()
    service.faults.lose_submit_answer(times=1)
    job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3), prompt="piano"))
    wait_for(lambda: finished(engine, job), what="the job to end")
    view = engine.get(job)
    assert view is not None and view.state == JobState.failed
    assert "may or may not have been accepted" in (view.error or "")
    time.sleep(0.5)
    assert service.stats()["submits"] == 1


def test_restart_after_a_crash_mid_submit_does_not_resubmit(make_engine, service, tmp_path: Path) -> None:
    engine = make_engine()
    request = SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3), prompt="piano")
    job = engine.submit(request)
    engine.journal.mark_submitting(job, 0)  # what a crash between "send" and "answer" leaves behind
    engine.start()
    wait_for(lambda: finished(engine, job), what="the job to end")
    view = engine.get(job)
    assert view is not None and view.state == JobState.failed and "sam-bridge retry" in (view.error or "")
    assert service.stats()["submits"] == 0


def test_cancel_a_queued_job_never_reaches_the_service(make_engine, service, tmp_path: Path) -> None:
    engine = make_engine()
    job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3), prompt="piano"))
    assert engine.cancel(job)
    engine.start()
    view = engine.get(job)
    assert view is not None and view.state == JobState.cancelled
    assert not engine.cancel(job)  # already finished
    time.sleep(0.3)
    assert service.stats()["submits"] == 0


def test_a_waiting_job_is_not_blocked_by_its_own_budget_reservation(make_engine, service, tmp_path: Path) -> None:
    engine = make_engine(daily_budget=0.08, prices=PriceTable(per_30s=1.5), retry_base=0.05)  # 1 s = 0.05
    service.faults.fail("submit", status=503, times=1000)  # the queue is down: the job waits
    engine.start()
    job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=1.0), prompt="piano"))
    wait_for(lambda: (engine.get(job) or object()).state == JobState.waiting, what="the job to wait")  # type: ignore[attr-defined]
    service.faults.clear()
    wait_for(lambda: finished(engine, job), timeout=60, what="the job to finish")
    view = engine.get(job)
    assert view is not None and view.state == JobState.done, view


def test_a_file_edited_mid_job_has_its_request_cancelled_and_a_retry_pays_once_in_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The request made from the audio as it was is cancelled at the service as soon as the edit is seen
    (fal bills only what completes); the retry of the file as restored sends it anew: one billed result in
    all, as when the first request was left to complete and fetched again."""
    from bridge.cli import main
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    # the service works long enough for the once-a-second look at the file to see the edit first
    with LocalFalService(key=TEST_KEY, job_time=5.0) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        monkeypatch.setenv("SAM_BRIDGE_STATE_DIR", str(tmp_path))
        journal = Journal(tmp_path / "journal.sqlite")  # the one `sam-bridge retry` reads
        engine = JobEngine(journal, Pipeline(client), PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
        try:
            source = make_source(tmp_path / "a.wav", seconds=0.5)
            original = source.read_bytes()
            engine.start()
            job = engine.submit(SeparationRequest(source=source, prompt="piano"))
            wait_for(lambda: slow.stats()["running"] == 1, what="the service to run it")
            source.write_bytes(original[:-100] + bytes(100))  # the user edits the file mid-job
            wait_for(lambda: finished(engine, job), what="the job to fail")
            view = engine.get(job)
            assert view is not None and view.state == JobState.failed
            assert "changed while the service worked on it" in (view.error or "")
            assert (slow.stats()["cancels"], slow.stats()["completed"]) == (1, 0)  # nothing billed for it
            source.write_bytes(original)
            assert main(["retry", job]) == 0
            assert "queued again" in capsys.readouterr().out
            wait_for(lambda: finished(engine, job), what="the retried job")
            assert (engine.get(job) or object()).state == JobState.done  # type: ignore[attr-defined]
            assert (slow.stats()["submits"], slow.stats()["completed"]) == (2, 1)  # one billed result in all
        finally:
            engine.stop()
            journal.close()


def test_cancelling_a_waiting_job_cancels_its_request_at_the_service(tmp_path: Path) -> None:
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    with LocalFalService(key=TEST_KEY, job_time=10.0) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        journal = Journal(tmp_path / "j.sqlite")
        engine = JobEngine(journal, Pipeline(client), PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, retry_base=30.0))
        try:
            engine.start()
            slow.faults.fail("stream", status=503, times=1000)  # following the job breaks down: it waits
            slow.faults.fail("status", status=503, times=1000)
            job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3),
                                                  prompt="piano"))
            wait_for(lambda: (engine.get(job) or object()).state == JobState.waiting,  # type: ignore[attr-defined]
                     what="the job to wait")
            assert engine.journal.handles(job)[0]  # fal accepted it and is still running it
            assert engine.cancel(job)
            wait_for(lambda: slow.stats()["cancels"] >= 1, what="the cancel to reach the service")
            # the cancel leaves on its own thread, so it can reach the service before the worker marks the
            # job; the worker must notice at once, not after its 30 s back-off
            wait_for(lambda: (engine.get(job) or object()).state == JobState.cancelled,  # type: ignore[attr-defined]
                     timeout=10.0, what="the waiting job to end cancelled")
        finally:
            engine.stop()
            journal.close()


def test_a_job_that_wrote_its_stems_before_a_stop_is_not_written_twice(make_engine, client: FalClient, service,
                                                                      tmp_path: Path) -> None:
    """Stems and manifest placed, then the daemon stopped before journalling "done": the restart
    recognises its own stems by their request id instead of writing a second numbered set."""
    from tests.engine.test_pipeline import Hooks

    source = make_source(tmp_path / "a.wav", seconds=0.3)
    request = SeparationRequest(source=source, prompt="piano")
    library = PresetLibrary([("built-in", builtin_presets_dir())])
    hooks = Hooks()
    first = Pipeline(client, poll_interval=0.02).run(request, recipe_for(request, library), hooks, tmp_path / "w")
    engine = make_engine()
    job = engine.submit(request)
    engine.journal.mark_submitted(job, 0, hooks.handles[0])
    engine.journal.set_state(job, JobState.conforming, 0.9, "Aligning and writing stems")
    engine.start()
    wait_for(lambda: finished(engine, job), what="the resumed job")
    view = engine.get(job)
    assert view is not None and view.state == JobState.done
    assert view.manifest == str(first.manifest)
    assert sorted(p.name for p in (tmp_path / "Stems").iterdir()) == [
        "a - piano.residual.wav", "a - piano.sam.json", "a - piano.target.wav"]
    assert service.stats()["submits"] == 1


def test_a_source_gone_before_its_job_runs_fails_in_words(make_engine, service, tmp_path: Path) -> None:
    engine = make_engine()
    source = make_source(tmp_path / "Gone Take.wav", seconds=0.3)
    job = engine.submit(SeparationRequest(source=source, prompt="piano"))
    source.unlink()  # moved or deleted while the job waited in the queue
    engine.start()
    wait_for(lambda: finished(engine, job), what="the job to end")
    view = engine.get(job)
    assert view is not None and view.state == JobState.failed
    assert "Gone Take.wav" in (view.error or "") and "not found" in (view.error or "")
    assert "Internal error" not in (view.error or "")
    assert service.stats()["submits"] == 0


def test_a_source_changed_while_the_daemon_was_stopped_never_gets_the_old_audios_stems(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request fal accepted belongs to the audio it was made from: after a re-render the job says so and
    forgets it, and a retry sends the new audio (paid again, knowingly) instead of stems of the old take."""
    import soundfile as sf

    from bridge.cli import main
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    with LocalFalService(key=TEST_KEY, job_time=1.0) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        monkeypatch.setenv("SAM_BRIDGE_STATE_DIR", str(tmp_path))
        journal = Journal(tmp_path / "journal.sqlite")  # the one `sam-bridge retry` reads

        def new_engine() -> JobEngine:
            return JobEngine(journal, Pipeline(client, billed=True),
                             PresetLibrary([("built-in", builtin_presets_dir())]),
                             EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, daily_budget=100.0,
                                            prices=PriceTable(per_30s=0.05)))

        first, second = new_engine(), new_engine()
        try:
            source = make_source(tmp_path / "Take.wav", seconds=0.5, seed=1)
            first.start()
            job = first.submit(SeparationRequest(source=source, prompt="piano", output_dir=tmp_path / "out"))
            wait_for(lambda: slow.stats()["running"] == 1, what="the service to run it")
            first.stop()  # the daemon stops with the request accepted at fal
            make_source(source, seconds=0.5, seed=2)  # the user re-renders the take meanwhile
            second.start()
            wait_for(lambda: finished(second, job), what="the resumed job to end")
            view = second.get(job)
            assert view is not None and view.state == JobState.failed
            assert "changed after it was sent" in (view.error or "") and "charged again" in (view.error or "")
            assert journal.handles(job)[0] == {}  # the old audio's request is forgotten…
            first_attempt = journal.spent_since(0)
            assert first_attempt > 0  # …but what it cost still counts against the daily budget
            assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

            assert main(["retry", job]) == 0
            wait_for(lambda: finished(second, job), what="the retried job")
            view = second.get(job)
            assert view is not None and view.state == JobState.done, view
            assert slow.stats()["submits"] == 2
            assert journal.spent_since(0) > first_attempt  # both attempts count, the retry did not erase the first
            target, residual = (sf.read(view.stems[label])[0] for label in ("target", "residual"))
            new_audio = sf.read(source)[0]
            assert np.max(np.abs(target + residual - new_audio)) < 1e-6  # stems of the new take
        finally:
            first.stop()
            second.stop()
            journal.close()


def test_retry_sends_a_changed_source_again_and_keeps_an_unchanged_ones_request(
        user_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.audio.source import source_sha256
    from bridge.cli import main
    from bridge.fal.client import RequestHandle

    journal = Journal(user_dirs["state"] / "journal.sqlite")
    jobs = {}
    for name in ("same", "edited"):
        source = make_source(user_dirs["home"] / f"{name}.wav", seconds=0.2, seed=3)
        job = journal.add(SeparationRequest(source=source, prompt="piano"), "piano")
        journal.mark_submitted(job, 0, RequestHandle(f"req-{name}", "http://127.0.0.1:9/s", "http://127.0.0.1:9/r",
                                                     "http://127.0.0.1:9/c"))
        journal.set_fields(job, source_hash=source_sha256(source))
        journal.set_state(job, JobState.failed, 0.0, "failed", error="The source changed while the job ran.")
        jobs[name] = job
    make_source(user_dirs["home"] / "edited.wav", seconds=0.2, seed=4)
    assert main(["retry", jobs["same"]]) == 0
    assert "charged again" not in capsys.readouterr().out
    assert main(["retry", jobs["edited"]]) == 0
    assert "edited.wav changed since it was sent" in capsys.readouterr().out
    assert [h.request_id for h in journal.handles(jobs["same"])[0].values()] == ["req-same"]  # polled, not paid
    assert journal.handles(jobs["edited"])[0] == {}
    journal.close()


def test_a_locked_fal_account_holds_the_jobs_until_it_is_unlocked(make_engine, service, tmp_path: Path) -> None:
    """fal refuses every billable call of an account out of credit: rather than failing a whole hot folder
    one file after another, the jobs wait with the reason, and go on once the account is topped up."""
    engine = make_engine(retry_base=0.2, retry_max=0.5, concurrency=1)
    locked = "User is locked. Reason: Exhausted balance. Top up your balance."
    service.faults.fail("submit", 403, times=1000, detail=locked)
    engine.start()
    jobs = [engine.submit(SeparationRequest(source=make_source(tmp_path / f"{n}.wav", seconds=0.3, seed=n),
                                            prompt="piano", origin=Origin.hot_folder)) for n in range(3)]
    wait_for(lambda: (engine.get(jobs[0]) or object()).state == JobState.waiting,  # type: ignore[attr-defined]
             what="the first job to wait")
    view = engine.get(jobs[0])
    assert view is not None and "account is locked" in view.message and "dashboard/billing" in view.message
    assert all(not finished(engine, job) for job in jobs)  # none failed
    service.faults.clear()  # topped up
    wait_for(lambda: all(finished(engine, job) for job in jobs), timeout=60, what="all jobs after the top-up")
    assert [engine.get(job).state for job in jobs] == [JobState.done] * 3  # type: ignore[union-attr]
    assert service.stats()["submits"] == 3  # each paid once: the refused submits cost nothing


def test_time_spent_locked_uses_none_of_the_tries_an_outage_is_allowed(make_engine, service, tmp_path: Path) -> None:
    """Locked through a dozen looks (more than the 8 tries a service outage gets), then unlocked into a
    passing outage: the job waits again and finishes instead of failing."""
    engine = make_engine(retry_base=0.05, retry_max=0.1)
    service.faults.fail("submit", 403, times=12, detail="User is locked. Reason: Exhausted balance.")
    service.faults.fail("submit", 503, times=4)  # after the top-up, a short outage: every retry of one try
    engine.start()
    job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3), prompt="piano"))
    wait_for(lambda: finished(engine, job), timeout=60, what="the job to end")
    view = engine.get(job)
    assert view is not None and view.state == JobState.done, view
    assert service.stats()["submits"] == 1


def test_a_job_waiting_for_a_locked_account_holds_no_budget(make_engine, service, tmp_path: Path) -> None:
    """While nothing is at the service, a waiting job gives its reservation back: the next job must not be
    told the daily budget is spent when nothing was."""
    engine = make_engine(daily_budget=0.003, prices=PriceTable(per_30s=0.05), retry_base=0.2, retry_max=0.3,
                         concurrency=1)  # one at a time: the second runs while the first waits
    service.faults.fail("submit", 403, times=1000, detail="User is locked. Reason: Exhausted balance.")
    engine.start()
    jobs = [engine.submit(SeparationRequest(source=make_source(tmp_path / f"{n}.wav", seconds=1.0, seed=n),
                                            prompt="piano")) for n in range(2)]
    for job in jobs:
        wait_for(lambda job=job: "account is locked" in getattr(engine.get(job), "message", ""), timeout=30,
                 what="each job to wait for the account")
    assert all("Daily budget" not in (engine.get(job).message or "") for job in jobs)  # type: ignore[union-attr]
    assert service.stats()["submits"] == 0


def test_a_retried_stem_set_pays_again_only_from_the_step_that_failed(
        user_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Step 1 of `4-stems` worked, step 2 failed at the service: `sam-bridge retry` fetches step 1's result
    again (its request is still there) and sends only steps 2 and 3."""
    import soundfile as sf

    from bridge.cli import main
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    with LocalFalService(key=TEST_KEY) as service, FalClient(
            ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY) as client:
        journal = Journal(user_dirs["state"] / "journal.sqlite")  # the one `sam-bridge retry` reads
        engine = JobEngine(journal, Pipeline(client, poll_interval=0.02, use_stream=False),
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=user_dirs["state"] / "work", rescan_interval=0.1))
        try:
            source = make_source(user_dirs["home"] / "mix.wav", seconds=0.5)
            service.faults.fail_job("CUDA error: out of memory", after=1)  # step 1 runs, step 2 fails
            engine.start()
            job = engine.submit(SeparationRequest(source=source, preset="4-stems",
                                                  output_dir=user_dirs["home"] / "out"))
            wait_for(lambda: finished(engine, job), what="the job to fail")
            assert (engine.get(job) or object()).state == JobState.failed  # type: ignore[attr-defined]
            kept = journal.handles(job)[0]
            assert list(kept) == [0] and service.stats()["submits"] == 2

            assert main(["retry", job]) == 0
            assert "asked for again, at no cost" in capsys.readouterr().out
            wait_for(lambda: finished(engine, job), timeout=60, what="the retried job")
            view = engine.get(job)
            assert view is not None and view.state == JobState.done, view
            assert service.stats()["submits"] == 4  # step 1 once, step 2 twice, step 3 once
            assert journal.handles(job)[0][0] == kept[0]  # step 1's first request served the retry
            stems = [sf.read(view.stems[label])[0] for label in ("vocals", "drums", "bass", "other")]
            assert np.max(np.abs(sum(stems) - sf.read(source)[0])) < 1e-4  # the set still sums to the source
        finally:
            engine.stop()
            journal.close()


def test_requests_of_a_stand_in_that_is_gone_are_sent_again_at_no_cost(tmp_path: Path) -> None:
    """The built-in stand-in starts afresh on a new port with each daemon: a job it had accepted before a
    restart can never be followed there, so it is sent to the new one instead of waiting forever."""
    from bridge.fal.auth import ApiKey
    from bridge.fal.client import RequestHandle
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    with LocalFalService(key=TEST_KEY) as stand_in, FalClient(
            ApiKey(TEST_KEY), queue_url=stand_in.url, rest_url=stand_in.url, retry=FAST_RETRY) as client:
        journal = Journal(tmp_path / "j.sqlite")
        pipeline = Pipeline(client, poll_interval=0.02, use_stream=False)
        engine = JobEngine(journal, pipeline, PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
        try:
            job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3),
                                                  prompt="piano"))
            old = "http://127.0.0.1:9/fal-ai/sam-audio/requests/r1"  # the stand-in of the daemon's last run
            journal.mark_submitted(job, 0, RequestHandle("r1", f"{old}/status", old, f"{old}/cancel"))
            engine.start()
            wait_for(lambda: finished(engine, job), what="the job to end")
            view = engine.get(job)
            assert view is not None and view.state == JobState.done, view
            assert stand_in.stats()["submits"] == 1
            fal = f"{DEFAULT_QUEUE_URL}/fal-ai/sam-audio/requests/r2"
            assert not pipeline.made_by_other_stand_in(RequestHandle("r2", f"{fal}/status", fal, f"{fal}/cancel"))
        finally:
            engine.stop()
            journal.close()


def test_a_gone_stand_ins_request_is_never_sent_to_fal_on_its_own(make_engine, service, tmp_path: Path) -> None:
    """Tried on a stand-in, the daemon now on fal: sending it there would pay for a free trial; it fails
    saying so, and a retry sends it (knowingly)."""
    from bridge.fal.client import RequestHandle

    engine = make_engine()  # billed, as fal
    job = engine.submit(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.3), prompt="piano"))
    old = "http://127.0.0.1:9/fal-ai/sam-audio/requests/r1"
    engine.journal.mark_submitted(job, 0, RequestHandle("r1", f"{old}/status", old, f"{old}/cancel"))
    engine.start()
    wait_for(lambda: finished(engine, job), what="the job to end")
    view = engine.get(job)
    assert view is not None and view.state == JobState.failed
    assert "stand-in service that is gone" in (view.error or "") and "sends it to fal (charged)" in (view.error or "")
    assert service.stats()["submits"] == 0 and engine.journal.handles(job)[0] == {}


def test_retry_resubmit_forgets_the_requests_a_plain_retry_asks_again(
        user_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main
    from bridge.fal.client import RequestHandle

    journal = Journal(user_dirs["state"] / "journal.sqlite")
    jobs = {}
    for name in ("plain", "resubmit"):
        job = journal.add(SeparationRequest(source=make_source(user_dirs["home"] / f"{name}.wav", seconds=0.2),
                                            prompt="piano"), "piano")
        journal.mark_submitted(job, 0, RequestHandle(f"req-{name}", "http://127.0.0.1:9/s", "http://127.0.0.1:9/r",
                                                     "http://127.0.0.1:9/c"))
        journal.set_state(job, JobState.failed, 0.0, "failed", error="The service finished the request but ...")
        jobs[name] = job
    assert main(["retry", jobs["plain"]]) == 0
    assert f"`sam-bridge retry --resubmit {jobs['plain']}`" in capsys.readouterr().out
    assert main(["retry", "--resubmit", jobs["resubmit"]]) == 0
    assert "anew (charged again)" in capsys.readouterr().out
    assert list(journal.handles(jobs["plain"])[0]) == [0]
    assert journal.handles(jobs["resubmit"])[0] == {}
    journal.close()


@pytest.mark.parametrize("use_stream", [False, True], ids=["polling", "streaming"])
def test_a_source_changed_while_the_service_works_cancels_its_request_there(tmp_path: Path, use_stream: bool) -> None:
    """A copy that paused longer than its settle window was taken early; the rest arrived while the service
    worked. The job failed only at conform, after the early request had completed (and been charged); the
    request is now cancelled at the service as soon as the change is seen, and the job fails saying so."""
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    with LocalFalService(key=TEST_KEY, job_time=8.0) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        journal = Journal(tmp_path / "j.sqlite")
        engine = JobEngine(journal, Pipeline(client, poll_interval=0.1, use_stream=use_stream),
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
        try:
            engine.start()
            source = make_source(tmp_path / "a.wav", seconds=0.3)
            job = engine.submit(SeparationRequest(source=source, prompt="piano", output_dir=tmp_path / "out"))
            wait_for(lambda: slow.stats()["running"] >= 1, what="the service to work on it")
            make_source(source, seconds=0.6)  # the rest of the copy arrives
            wait_for(lambda: (engine.get(job) or object()).state.finished,  # type: ignore[attr-defined]
                     timeout=6.0, what="the job to end before the service would have finished")
            view = engine.get(job)
            assert view is not None and view.state == JobState.failed
            assert "changed while the service worked on it" in (view.error or "")
            assert slow.stats()["cancels"] == 1 and slow.stats()["completed"] == 0  # nothing to be billed for
        finally:
            engine.stop()
            journal.close()
