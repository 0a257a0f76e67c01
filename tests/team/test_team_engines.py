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
