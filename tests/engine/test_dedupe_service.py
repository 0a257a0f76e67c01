"""Dedupe never crosses services: stems a stand-in made (a band split) are never given to a job meant for
another service (SAM Audio on fal, or another stand-in), and results from before the manifest named its
service are not reused at all. Real daemons and engines, real HTTP to stand-ins on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bridge.audio.source import source_sha256
from bridge.common.jobs import JobState, JobView
from bridge.common.request import SeparationRequest
from bridge.engine.engine import EngineSettings, JobEngine
from bridge.engine.journal import Journal
from bridge.engine.pipeline import Pipeline
from bridge.fal.client import FalClient
from bridge.local_service import LocalFalService
from bridge.presets.library import PresetLibrary, builtin_presets_dir
from bridge.presets.recipe import Recipe, recipe_for
from tests.conftest import TEST_KEY, wait_for
from tests.test_daemon import make_source, requests_dir, wait_state, write_request


def run_daemon(user_dirs: dict[str, Path], args: list[str], log: Path,
               key: str | None = None) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`sam-bridge run ARGS` as the user starts it (no FAL_KEY: the README's first run)."""
    info_path = user_dirs["state"] / "daemon.json"
    info_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "FAL_KEY"}
    if key is not None:
        env["FAL_KEY"] = key
    env.update(PYTHONUNBUFFERED="1", HOME=str(user_dirs["home"]), SAM_BRIDGE_STATE_DIR=str(user_dirs["state"]),
               SAM_BRIDGE_CONFIG=str(user_dirs["config"] / "config.yaml"), SAM_BRIDGE_HOT_DIR=str(user_dirs["hot"]))
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--osc-port", "0", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if info_path.exists() and json.loads(info_path.read_text()).get("pid") == proc.pid:
            return proc, dict(json.loads(info_path.read_text()))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"daemon did not start:\n{log.read_text()}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def manifest_at(status: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(Path(status["manifest"]).read_text(encoding="utf-8")))


def test_stand_in_stems_are_never_reused_once_another_service_is_used(
        service: LocalFalService, user_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The README's path: a first run with no key (the built-in stand-in), then a real service. The same
    audio, prompt and options go to the new service; its stems are reused only by its own later jobs."""
    source = make_source(user_dirs["home"] / "src.wav", seconds=1.0)
    proc, info = run_daemon(user_dirs, ["--local"], tmp_path / "first.log")
    try:
        first = wait_state(write_request(requests_dir(info), "first", source=source, prompt="bass"),
                           ("done", "failed"))
    finally:
        stop(proc)
    assert first["state"] == "done", first
    assert manifest_at(first)["service"] == "stand-in"

    proc, info = run_daemon(user_dirs, ["--service-url", service.url], tmp_path / "second.log", key=TEST_KEY)
    try:
        second = wait_state(write_request(requests_dir(info), "second", source=source, prompt="bass"),
                            ("done", "failed"))
        assert second["state"] == "done", second
        assert "reused" not in second["message"]
        assert service.stats()["submits"] == 1  # the new service made its own stems
        made = manifest_at(second)
        host = service.url.removeprefix("http://")
        assert made["service"] == f"fal-ai/sam-audio@{host}" and made["reused_from"] is None
        own, _ = sf.read(second["stems"]["target"])
        assert Path(second["stems"]["target"]).parent == source.parent / "Stems"

        third = wait_state(write_request(requests_dir(info), "third", source=source, prompt="bass"),
                           ("done", "failed"))  # the same service again: reused, as before
        assert third["state"] == "done" and "reused" in third["message"], third
        assert service.stats()["submits"] == 1
        assert manifest_at(third)["reused_from"] == second["manifest"]
        assert np.array_equal(sf.read(third["stems"]["target"])[0], own)
    finally:
        stop(proc)


def legacy_dedupe_key(request: SeparationRequest, recipe: Recipe, audio_sha256: str) -> str:
    """The key journals written before the service was part of it hold (sam-bridge up to 2026-12-07)."""
    what = {
        "audio": audio_sha256,
        "part": [request.start, request.length] + ([request.audition] if request.audition else []),
        "steps": [[s.prompt, [sp.model_dump() for sp in s.spans or ()], s.options.to_payload()]
                  for s in recipe.steps],
        "output": recipe.output.model_dump(mode="json", exclude={"folder", "label"}),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def test_a_result_from_before_the_service_was_recorded_is_not_reused(
        client: FalClient, service: LocalFalService, tmp_path: Path) -> None:
    """An earlier version's journal row (its key without a service) and manifest (no `service`) may be a
    stand-in's band split: a job made now sends its audio for real instead of copying those stems."""
    library = PresetLibrary([("built-in", builtin_presets_dir())])
    engine = JobEngine(Journal(tmp_path / "journal.sqlite"), Pipeline(client, poll_interval=0.02, use_stream=False),
                       library, EngineSettings(workroot=tmp_path / "work", rescan_interval=0.1))
    engine.start()
    try:
        source = make_source(tmp_path / "Bass.wav", seconds=0.5)
        request = SeparationRequest(source=source, prompt="bass")
        old = run(engine, request)
        # as the earlier version left it: its key, and a manifest that does not say which service made it
        key = legacy_dedupe_key(request, recipe_for(request, library), source_sha256(source))
        engine.journal.set_fields(old.job_id, dedupe_key=key)
        assert old.manifest is not None
        manifest = json.loads(Path(old.manifest).read_text(encoding="utf-8"))
        manifest.pop("service", None)
        Path(old.manifest).write_text(json.dumps(manifest), encoding="utf-8")

        new = run(engine, SeparationRequest(source=source, prompt="bass", tag="after the upgrade"))
        assert service.stats()["submits"] == 2  # sent for real
        assert new.manifest is not None
        assert json.loads(Path(new.manifest).read_text(encoding="utf-8"))["reused_from"] is None
    finally:
        engine.stop()
        engine.journal.close()


def run(engine: JobEngine, request: SeparationRequest) -> JobView:
    job_id = engine.submit(request)
    wait_for(lambda: (view := engine.get(job_id)) is not None and view.state.finished, timeout=60, what="the job")
    view = engine.get(job_id)
    assert view is not None and view.state == JobState.done, view
    return view
