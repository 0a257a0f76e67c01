"""Progress that moves (issue #23, item 4): the service's chunk log lines advance the bar, the expected time
per chunk moves it between them, and an ETA comes with it. Times are given explicitly: no wall clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.pipeline import Pipeline
from bridge.engine.pipeline_hooks import STAGE_END, StandaloneHooks
from bridge.engine.progress import ServiceClock
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from bridge.presets.recipe import recipe_for
from tests.conftest import FAST_RETRY, TEST_KEY


def test_chunk_lines_advance_the_service_fraction() -> None:
    clock = ServiceClock(audio_seconds=600.0, chunk_seconds=60.0, overlap=5.0, now=0.0)
    assert clock.chunks == 11  # as the service will split it
    seen = [clock.fraction(0.0)]
    for k in range(1, 12):
        clock.saw_line(f"Separating 'piano' chunk {k}/11", now=2.0 * k)
        seen.append(clock.fraction(2.0 * k))
        seen.append(clock.fraction(2.0 * k + 1.0))  # between lines: it creeps on
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # moves at every line and between them
    assert seen[-1] > 0.95
    assert clock.eta(23.0) < clock.eta(3.0)
    # measured 2 s per chunk from the lines: after chunk 11 started at 22 s, about 2 s are left
    assert abs(clock.eta(22.0) - 2.0) < 1e-6


def test_the_bar_never_runs_past_a_chunk_the_service_has_not_started() -> None:
    clock = ServiceClock(audio_seconds=120.0, chunk_seconds=60.0, overlap=5.0, now=0.0)
    clock.saw_line("chunk 1/3", now=0.0)
    assert clock.fraction(1e6) < 0.05 + 0.95 / 3  # long after: still inside chunk 1


class Recorder(StandaloneHooks):
    def __init__(self) -> None:
        self.running: list[tuple[float, float | None]] = []
        self.fractions: list[float] = []

    def progress(self, state: JobState, fraction: float, message: str, eta: float | None = None) -> None:
        self.fractions.append(fraction)
        if state == JobState.running:
            self.running.append((fraction, eta))


def test_pipeline_progress_follows_the_services_chunks(tmp_path: Path) -> None:
    rate, seconds = 8000, 12.0
    t = np.arange(int(rate * seconds)) / rate
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype="PCM_16")
    request = SeparationRequest(source=tmp_path / "a.wav", prompt="piano",
                                options={"max_chunk_duration": 2.0, "chunk_overlap": 0.0})
    recipe = recipe_for(request, PresetLibrary([("built-in", builtin_presets_dir())]))
    hooks = Recorder()
    with LocalFalService(key=TEST_KEY, processing_delay=0.05) as service, \
            FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY) as client:
        Pipeline(client, poll_interval=0.02).run(request, recipe, hooks, tmp_path / "work")
    fractions = [f for f, _ in hooks.running]
    assert hooks.fractions == sorted(hooks.fractions)  # never back
    # six chunks: the bar reached the fifth one at least (the old bar stood at the middle of the stage, 0.475,
    # whatever the service said); lines that arrive together are one step
    start, end = STAGE_END[JobState.submitted], STAGE_END[JobState.running]
    assert max(fractions) >= start + (end - start) * (0.05 + 0.95 * 4 / 6) - 1e-3, fractions
    assert len(set(fractions)) >= 3
    assert all(eta is not None and eta >= 0 for _, eta in hooks.running)
