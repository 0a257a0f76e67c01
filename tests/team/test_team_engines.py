"""Two job engines in one process, each with its own instance in one PostgreSQL journal (two workstations'
engines, without the rest of the daemon): one daily budget for the team."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

from bridge.common.cost import PriceTable
from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal.postgres import PostgresJournal
from bridge.engine.pipeline import Pipeline
from bridge.fal.client import FalClient
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from tests.conftest import wait_for
from tests.team.team_helpers import query, wait_server_up_for
from tests.test_daemon import make_source

pytestmark = pytest.mark.timeout(120)


def test_a_daily_budget_of_two_jobs_admits_two_across_two_machines(
        client: FalClient, service, team_db: str, tmp_path: Path) -> None:
    engines = []
    for name in ("studio-a", "studio-b"):
        journal = PostgresJournal(team_db, name, daemon=True)
        engines.append(JobEngine(
            journal, Pipeline(client, poll_interval=0.02, use_stream=False, billed=True),  # priced as fal
            PresetLibrary([("built-in", builtin_presets_dir())]),
            EngineSettings(workroot=tmp_path / name, rescan_interval=0.1, dedupe=False, daily_budget=0.10,
                           prices=PriceTable(per_30s=1.5))))  # 1 s of audio = 0.05: the budget is 2 jobs
    try:
        for engine in engines:
            engine.start()
        jobs = [(engine, engine.submit(SeparationRequest(
            source=make_source(tmp_path / f"{n}.wav", seconds=1.0, seed=n), prompt="piano")))
            for n, engine in enumerate(engines * 2)]

        def settled() -> bool:
            states = [engine.get(job).state for engine, job in jobs]  # type: ignore[union-attr]
            return states.count(JobState.done) == 2 and states.count(JobState.waiting) == 2

        wait_for(settled, timeout=60, what="two jobs done and two waiting")
        waiting = [engine.get(job) for engine, job in jobs if engine.get(job).state is JobState.waiting]  # type: ignore[union-attr]
        assert all("Daily budget reached" in v.message and "by the team" in v.message for v in waiting)  # type: ignore[union-attr]
        assert service.stats()["submits"] == 2
    finally:
        for engine in engines:
            engine.stop()
            engine.journal.close()


class HeldUpJournal(PostgresJournal):
    """A workstation's journal whose dedupe call is held up (as by a team database outage) until the test
    lets it go: meanwhile the other workstation takes the job over and finishes it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entered, self.release = threading.Event(), threading.Event()

    def active_leader(self, job_id: str, key: str) -> str | None:
        self.entered.set()
        assert self.release.wait(60)
        return super().active_leader(job_id, key)


def test_a_job_taken_over_and_finished_while_its_first_daemon_waited_is_not_written_again_by_it(
        client: FalClient, service, team_db: str, tmp_path: Path) -> None:
    """The database restart case: studio-a's lease ran out while it waited for the database, studio-b took
    its job and wrote the stems; studio-a, going on, must not copy them as a second set (`… (2)`) for the
    very job it lost, nor pay again."""
    held = HeldUpJournal(team_db, "studio-a", daemon=True)
    other = PostgresJournal(team_db, "studio-b", daemon=True)
    engines = [JobEngine(journal, Pipeline(client, poll_interval=0.02, use_stream=False, billed=True),
                         PresetLibrary([("built-in", builtin_presets_dir())]),
                         EngineSettings(workroot=tmp_path / journal.instance, rescan_interval=0.1))
               for journal in (held, other)]
    try:
        source = make_source(tmp_path / "take06.wav", seconds=0.3)
        job = engines[0].submit(SeparationRequest(source=source, prompt="piano"))
        engines[0].start()
        assert held.entered.wait(30)
        with psycopg.connect(team_db, autocommit=True) as conn:  # the takeover `adopt_orphans` makes
            conn.execute("UPDATE jobs SET owner='studio-b' WHERE id=%s", (job,))
        engines[1].start()  # resumes it as its own
        wait_for(lambda: engines[1].get(job).state is JobState.done, timeout=60,  # type: ignore[union-attr]
                 what="studio-b finishing the job")
        held.release.set()
        wait_for(lambda: engines[0].running_count == 0, timeout=30, what="studio-a letting go of the job")
        time.sleep(0.3)  # a late second write would show now
        assert sorted(p.name for p in (tmp_path / "Stems").iterdir()) == [
            "take06 - piano.residual.wav", "take06 - piano.sam.json", "take06 - piano.target.wav"]
        assert service.stats()["submits"] == 1
        view = engines[1].get(job)
        assert view is not None and view.state is JobState.done and view.manifest is not None
        assert json.loads(Path(view.manifest).read_text())["source"]["path"] == str(source)
    finally:
        held.release.set()
        for engine in engines:
            engine.stop()
            engine.journal.close()


STAGES = ["queued", "preparing", "uploading", "submitted", "running", "downloading", "conforming", "done"]


def assert_one_run(states: list[str]) -> None:
    """One run of a job: every state once, in order (a quick service may skip `running`), ending done."""
    assert states == sorted(set(states), key=STAGES.index) and states[0] == "queued" and states[-1] == "done", states


class HeldAtStart(PostgresJournal):
    """A workstation whose first job start is held up after it read the job (as by a busy machine): the
    job is still queued meanwhile, so another daemon with a free slot may take it, and this one take it back."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entered, self.release = threading.Event(), threading.Event()

    def get(self, job_id: str):  # type: ignore[no-untyped-def]
        row = super().get(job_id)
        if threading.current_thread().name.startswith("job-worker") and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(60)
        return row


def test_a_job_taken_back_while_its_daemon_starts_it_runs_once(team_db: str, tmp_path: Path) -> None:
    """studio-b took studio-a's queued job and studio-a, with a free slot, took it back while one of its
    workers was starting it: queued again there, a second worker would run it beside the first and pay twice."""
    from bridge.common.request import Origin
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    held = HeldAtStart(team_db, "studio-a", daemon=True)
    other = PostgresJournal(team_db, "studio-b", daemon=True)
    with LocalFalService(key=TEST_KEY, job_time=2.0) as slow, \
            FalClient(ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        engine = JobEngine(held, Pipeline(client, poll_interval=0.02, use_stream=False),
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=tmp_path / "studio-a", rescan_interval=0.1, concurrency=2))
        try:
            source = make_source(tmp_path / "take.wav", seconds=0.3)
            job = engine.submit(SeparationRequest(source=source, prompt="piano", origin=Origin.hot_folder))
            engine.start()
            assert held.entered.wait(30)  # a worker of studio-a has read the job, not started it
            assert [row.view.job_id for row in other.take_queued(1)] == [job]
            wait_for(lambda: held.get(job).owner == "studio-a", timeout=10,  # type: ignore[union-attr]
                     what="studio-a taking it back (a free slot)")
            deadline = time.monotonic() + 3.0  # a second worker of studio-a, had it been queued twice, would
            while time.monotonic() < deadline:  # have it at the service now
                if held.get(job).view.state is JobState.running:  # type: ignore[union-attr]
                    break
                time.sleep(0.05)
            held.release.set()
            wait_for(lambda: engine.get(job).state is JobState.done, timeout=30,  # type: ignore[union-attr]
                     what="the job done")
            wait_for(lambda: engine.running_count == 0, timeout=30, what="every worker done with it")
            assert slow.stats()["submits"] == 1
            states = [s for (s,) in query(team_db, "SELECT state FROM history WHERE job_id=%s ORDER BY at", (job,))]
            assert_one_run(states)
        finally:
            held.release.set()
            engine.stop()
            held.close()
            other.close()


class SlowToAnswerAdd(PostgresJournal):
    """A journal whose `add` answers late (a busy database): the engine's journal watcher meanwhile finds
    the new job and a worker starts it, before `submit` queues it itself."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.started = threading.Event()

    def add(self, request: SeparationRequest, what: str) -> str:
        job = super().add(request, what)
        assert self.started.wait(30)
        return job

    def get(self, job_id: str):  # type: ignore[no-untyped-def]
        row = super().get(job_id)
        if threading.current_thread().name.startswith("job-worker") and not self.started.is_set():
            self.started.set()
            time.sleep(0.3)  # still starting when `submit` goes on
        return row


def test_a_new_job_the_journal_watcher_started_first_runs_once(
        client: FalClient, service, team_db: str, tmp_path: Path) -> None:
    journal = SlowToAnswerAdd(team_db, "studio-a", daemon=True)
    engine = JobEngine(journal, Pipeline(client, poll_interval=0.02, use_stream=False),
                       PresetLibrary([("built-in", builtin_presets_dir())]),
                       EngineSettings(workroot=tmp_path / "work", rescan_interval=0.05, concurrency=2))
    try:
        engine.start()
        job = engine.submit(SeparationRequest(source=make_source(tmp_path / "take.wav", seconds=0.3),
                                              prompt="piano"))
        wait_for(lambda: engine.get(job).state is JobState.done, timeout=30,  # type: ignore[union-attr]
                 what="the job done")
        wait_for(lambda: engine.running_count == 0, timeout=30, what="every worker done with it")
        time.sleep(0.3)
        states = [s for (s,) in query(team_db, "SELECT state FROM history WHERE job_id=%s ORDER BY at", (job,))]
        assert_one_run(states)
        assert service.stats()["submits"] == 1
    finally:
        engine.stop()
        journal.close()


def test_a_cancel_through_another_machine_ends_the_job_cancelled_not_failed(team_db: str, tmp_path: Path) -> None:
    """The other machine's engine flags the cancel in the team journal and cancels the request at fal at once;
    the owner's wait then sees fal's `client_cancelled` end, usually before its own (throttled) look at the
    journal: that end is the user's cancel, not a failure (it was "failed: cancelled at the service", with an
    error file, one CI run in a few)."""
    from bridge.fal.auth import ApiKey
    from bridge.local_service import LocalFalService
    from tests.conftest import FAST_RETRY, TEST_KEY

    with LocalFalService(key=TEST_KEY, job_time=30.0) as slow, FalClient(
            ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as client:
        engines = [JobEngine(PostgresJournal(team_db, name, daemon=True),
                             Pipeline(client, poll_interval=0.02, use_stream=False),
                             PresetLibrary([("built-in", builtin_presets_dir())]),
                             EngineSettings(workroot=tmp_path / name, rescan_interval=0.1))
                   for name in ("studio-a", "studio-b")]
        owner, other = engines
        try:
            for engine in engines:
                engine.start()
            outcomes = []
            for n in range(3):  # the race is won by the cancel most of the time: three tries show it
                job = owner.submit(SeparationRequest(source=make_source(tmp_path / f"take{n}.wav", seconds=0.5, seed=n),
                                                     prompt="piano"))
                wait_for(lambda job=job: owner.get(job).state is JobState.running, timeout=30,  # type: ignore[union-attr]
                         what="the job running at the service")
                assert other.cancel(job)
                wait_for(lambda job=job: owner.get(job).state.finished, timeout=30,  # type: ignore[union-attr]
                         what="the job ended")
                view = owner.get(job)
                outcomes.append((view.state, view.message))  # type: ignore[union-attr]
            assert outcomes == [(JobState.cancelled, "Cancelled")] * 3, outcomes
            assert slow.stats()["submits"] == 3
        finally:
            for engine in engines:
                engine.stop()
                engine.journal.close()


def test_a_dead_daemons_job_this_machine_cannot_even_stat_leaves_the_journal_watch_running(
        client: FalClient, service, team_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its source raises on stat here (File name too long; EACCES, ESTALE on a stale share alike): that job
    waits for a machine that can reach it, and the watch goes on adopting the next dead daemon's jobs. A
    row this version cannot read at all is logged, and the watch carries on too."""
    from tests.team.test_team_journal import expire

    wait_server_up_for(team_db, 2)
    dead = PostgresJournal(team_db, "dead", daemon=True, lease=2)
    too_long = tmp_path / ("x" * 300) / "take.wav"
    blocked = dead.add(SeparationRequest(source=too_long, prompt="piano"), "piano")
    garbled = dead.add(SeparationRequest(source=tmp_path / "garbled.wav", prompt="piano"), "piano")
    dead._stop.set()  # killed: no clean stop
    expire(team_db, "dead")
    with psycopg.connect(team_db, autocommit=True) as conn:  # as a newer or broken writer might leave it
        conn.execute("UPDATE jobs SET request='{not json' WHERE id=%s", (garbled,))
    journal = PostgresJournal(team_db, "studio-b", daemon=True, lease=2)
    engine = JobEngine(journal, Pipeline(client, poll_interval=0.02, use_stream=False),
                       PresetLibrary([("built-in", builtin_presets_dir())]),
                       EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
    later: PostgresJournal | None = None
    try:
        engine.start()
        wait_for(lambda: "Could not look at the journal" in caplog.text, timeout=30, what="the unreadable row logged")
        query(team_db, "DELETE FROM jobs WHERE id=%s RETURNING id", (garbled,))
        wait_for(lambda: "can reach" in (journal.get(blocked).view.message), timeout=30,  # type: ignore[union-attr]
                 what="the unreachable job's message")
        later = PostgresJournal(team_db, "dead-2", daemon=True, lease=2)
        reachable = later.add(SeparationRequest(source=make_source(tmp_path / "take.wav", seconds=0.3),
                                                prompt="piano"), "piano")
        later._stop.set()
        expire(team_db, "dead-2")
        wait_for(lambda: journal.get(reachable).view.state is JobState.done, timeout=60,  # type: ignore[union-attr]
                 what="the next dead daemon's job adopted and done")
        assert journal.get(blocked).owner == "dead"  # type: ignore[union-attr]
        assert caplog.text.count("Could not look at the journal") == 1  # said once, not on every pass
    finally:
        engine.stop()
        journal.close()
        dead.close()
        if later is not None:
            later.close()
