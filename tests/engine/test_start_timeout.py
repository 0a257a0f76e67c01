"""fal's start timeout end to end: the engine's request waits behind another in the stand-in's only runner,
the stand-in drops it when its `X-Fal-Request-Timeout` passes (as fal does: a 504 with
`X-Fal-Request-Timeout-Type: user`, see the stand-in's queue docstring and fal-protocol.md), the job fails
saying so, and `sam-bridge retry` sends it anew: the dropped request never ran, one run made the stems."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from tests.conftest import FAST_RETRY, TEST_KEY, wait_for
from tests.test_daemon import make_source


def state_of(engine: JobEngine, job: str) -> JobState | None:
    view = engine.get(job)
    return view.state if view is not None else None


def test_a_request_fal_drops_for_its_start_timeout_fails_in_words_and_its_retry_sends_it_anew(
        user_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    # one runner; a second of service time per 4 s of audio: the 12 s blocker holds it for 3 s
    with LocalFalService(key=TEST_KEY, concurrency=1, processing_delay=0.25) as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY,
                      start_timeout=1.5) as client, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, start_timeout=None) as other:
        blocker = make_source(user_dirs["home"] / "long.wav", seconds=12.0, rate=8000, channels=1)
        audio = "data:audio/wav;base64," + base64.b64encode(blocker.read_bytes()).decode()
        other.submit("separate", {"audio_url": audio, "prompt": "bass"})  # somebody else's, running first
        wait_for(lambda: service.stats()["running"] == 1, what="the blocker to start")

        journal = Journal(user_dirs["state"] / "journal.sqlite")  # the one `sam-bridge retry` reads
        engine = JobEngine(journal, Pipeline(client, poll_interval=0.05, use_stream=False),
                           PresetLibrary([("built-in", builtin_presets_dir())]),
                           EngineSettings(workroot=user_dirs["state"] / "work", rescan_interval=0.1))
        try:
            source = make_source(user_dirs["home"] / "mix.wav", seconds=0.5)
            engine.start()
            job = engine.submit(SeparationRequest(source=source, prompt="piano",
                                                  output_dir=user_dirs["home"] / "out"))
            wait_for(lambda: state_of(engine, job) in (JobState.failed, JobState.done), timeout=30,
                     what="the job to end")
            view = engine.get(job)
            assert view is not None and view.state == JobState.failed, view
            assert "fal dropped the request because it did not start within the start timeout (1.5 s)" in view.message
            assert "Nothing ran, so nothing was charged" in view.message
            stats = service.stats()
            assert stats["start_timeouts"] == 1 and stats["started"] == 1  # only the blocker ever ran
            assert stats["submits"] == 2

            wait_for(lambda: service.stats()["completed"] == 1, timeout=30, what="the blocker to finish")
            assert main(["retry", job]) == 0
            capsys.readouterr()
            wait_for(lambda: state_of(engine, job) == JobState.done, timeout=30, what="the retried job")
            view = engine.get(job)
            assert view is not None
            stats = service.stats()
            assert stats["submits"] == 3  # sent anew, once
            assert stats["started"] == 2 and stats["completed"] == 2  # the blocker and exactly one run of ours
            assert stats["start_timeouts"] == 1
            original, _ = sf.read(source, dtype="float64")
            target, _ = sf.read(view.stems["target"], dtype="float64")
            residual, _ = sf.read(view.stems["residual"], dtype="float64")
            assert target.shape == original.shape
            assert np.max(np.abs(original - target - residual)) <= 1.5 / 2**23  # the stems null the source
        finally:
            engine.stop()
            journal.close()
