"""The team's dedupe (one PostgreSQL journal, its dedupe leaders) is per service: a workstation on another
service never waits for, nor reuses, the stems of the same audio being made by a stand-in elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal.postgres import PostgresJournal
from bridge.engine.pipeline import Pipeline
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for
from tests.test_daemon import make_source

pytestmark = pytest.mark.timeout(120)


def test_a_workstation_on_another_service_neither_waits_for_nor_reuses_a_stand_ins_job(
        team_db: str, tmp_path: Path) -> None:
    with LocalFalService(key=TEST_KEY, job_time=3.0) as slow, LocalFalService(key=TEST_KEY) as other, \
            FalClient(ApiKey(TEST_KEY), queue_url=slow.url, rest_url=slow.url, retry=FAST_RETRY) as on_slow, \
            FalClient(ApiKey(TEST_KEY), queue_url=other.url, rest_url=other.url, retry=FAST_RETRY) as on_other:
        engines = [JobEngine(PostgresJournal(team_db, name, daemon=True),
                             Pipeline(client, poll_interval=0.02, use_stream=False),
                             PresetLibrary([("built-in", builtin_presets_dir())]),
                             EngineSettings(workroot=tmp_path / name, rescan_interval=0.1))
                   for name, client in (("studio-a", on_slow), ("studio-b", on_other))]
        try:
            for engine in engines:
                engine.start()
            source = make_source(tmp_path / "Bass.wav", seconds=1.0)
            a, b = engines
            leader = a.submit(SeparationRequest(source=source, prompt="bass", tag="on the stand-in"))
            wait_for(lambda: slow.stats()["submits"] == 1, timeout=30, what="studio-a's request at its service")
            follower = b.submit(SeparationRequest(source=source, prompt="bass", tag="on another service"))
            wait_for(lambda: (v := b.get(follower)) is not None and v.state.finished, timeout=30,
                     what="studio-b's job")
            done = b.get(follower)
            assert done is not None and done.state == JobState.done, done
            assert other.stats()["submits"] == 1  # made by its own service, not waiting for studio-a's
            leading = a.get(leader)
            assert leading is not None and not leading.state.finished  # studio-a's job is still running
            assert done.manifest is not None
            manifest = json.loads(Path(done.manifest).read_text(encoding="utf-8"))
            assert manifest["reused_from"] is None
            assert manifest["service"] == f"fal-ai/sam-audio@{other.url.removeprefix('http://')}"
            wait_for(lambda: (v := a.get(leader)) is not None and v.state.finished, timeout=30, what="studio-a")
        finally:
            for engine in engines:
                engine.stop()
                engine.journal.close()
