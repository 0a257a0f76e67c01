"""Two job engines in one process, each with its own instance in one PostgreSQL journal (two workstations'
engines, without the rest of the daemon): one daily budget for the team."""

from __future__ import annotations

from pathlib import Path

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
