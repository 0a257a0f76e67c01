"""A daemon job stopped by its output disk: the hint says how to run it again as the facts are. Before
anything was sent a retry runs it again (nothing was paid); once the service had it, `sam-bridge retry JOB`
collects the results without paying again. (A read-only disk failed at 0% saying "retry the job: it costs
nothing, the results are fetched again", though nothing had been sent.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.common.jobs import JobState, JobView
from bridge.common.path_policy import PathPolicy
from bridge.common.request import Origin, SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.client import FalClient
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from tests.conftest import wait_for
from tests.test_daemon import make_source

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine(client: FalClient, tmp_path: Path) -> Iterator[JobEngine]:
    started = JobEngine(Journal(tmp_path / "journal.sqlite"),
                        Pipeline(client, poll_interval=0.02, use_stream=False, billed=True),
                        PresetLibrary([("built-in", builtin_presets_dir())]),
                        EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1, dedupe=False))
    started.start()
    yield started
    started.stop()
    started.journal.close()


def refuse_under(folder: Path, code: int, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`os.<name>` fails with `code` for paths under `folder` (os.mkdir: its first path; os.link: its second)."""
    real = getattr(os, name)

    def refusing(*args: Any, **kwargs: Any) -> Any:
        if Path(args[-1] if name == "link" else args[0]).is_relative_to(folder):
            raise OSError(code, os.strerror(code), str(args[-1] if name == "link" else args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(f"bridge.common.stems.os.{name}", refusing)


def failed_osc_job(engine: JobEngine, tmp_path: Path, project: Path) -> JobView:
    (tmp_path / "m").mkdir()
    source = make_source(tmp_path / "m" / "ok.wav", seconds=0.5)
    policy = PathPolicy.from_roots([tmp_path], [tmp_path])
    job = engine.submit(SeparationRequest(source=source, prompt="drums", project_dir=project, tag="t",
                                          origin=Origin.osc, confined_to=policy))
    wait_for(lambda: engine.get(job).state.finished, what="the job")  # type: ignore[union-attr]
    view = engine.get(job)
    assert view is not None and view.state == JobState.failed, view
    return view


def test_a_read_only_output_disk_before_anything_was_sent_says_it_simply_runs_again(
        engine: JobEngine, service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "Proj"
    refuse_under(project, errno.EROFS, "mkdir", monkeypatch)
    view = failed_osc_job(engine, tmp_path, project)
    error = view.error or ""
    assert "is read-only, so nothing was written there" in error, error
    assert "Nothing had been sent to the service, so nothing was paid" in error, error
    assert f"`sam-bridge retry {view.job_id}` runs it again" in error, error
    assert "fetched again" not in error and "costs nothing" not in error and "Internal error" not in error, error
    assert service.stats()["submits"] == 0


def test_a_full_output_disk_after_the_service_answered_says_retry_collects_it_without_paying(
        engine: JobEngine, service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "Proj"
    refuse_under(project, errno.ENOSPC, "link", monkeypatch)  # the stems' placing: the service had answered
    view = failed_osc_job(engine, tmp_path, project)
    error = view.error or ""
    assert "is full" in error, error
    assert f"`sam-bridge retry {view.job_id}` collects its results without paying again" in error, error
    assert "nothing was paid" not in error, error
    assert service.stats()["submits"] == 1
