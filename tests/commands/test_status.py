"""`sam-bridge status JOB` says what a user needs (issue #23, item 5): stems, flags, cost and request ids;
`--json` times in ISO 8601; a job paused because the daemon stopped says so in its status file. The real
daemon process against the stand-in over real HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY, wait_for
from tests.test_daemon import make_source, read_status, requests_dir, wait_state, write_request

pytestmark = pytest.mark.timeout(120)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", "status", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=30)


def test_status_of_a_job_shows_stems_flags_cost_and_request_ids(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "Take.wav", seconds=1.0)
    request = write_request(requests_dir(info), "take", source=source, prompt="piano")
    done = wait_state(request, ("done", "failed"))
    assert done["state"] == "done", done
    shown = status("--json", done["job_id"][:6])
    job = json.loads(shown.stdout)[0]
    assert ISO.match(job["created_at"]) and ISO.match(job["updated_at"])
    assert job["stems"] == done["stems"] and job["flags"] == done["flags"]
    assert len(job["request_ids"]) == 1 and job["estimated_cost"] == 0.0  # the stand-in costs nothing
    text = status(done["job_id"]).stdout
    assert f"target:   {done['stems']['target']}" in text and f"residual: {done['stems']['residual']}" in text
    assert f"requests: {job['request_ids'][0]}" in text and "cost:     $0.00" in text
    assert daemon.stop() == 0


def test_a_job_paused_by_a_stopping_daemon_says_so(daemon_factory, user_dirs) -> None:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY, job_time=30.0) as slow:
        daemon = daemon_factory(slow.url)
        info = daemon.start()
        source = make_source(user_dirs["home"] / "long.wav", seconds=0.5)
        request = write_request(requests_dir(info), "long", source=source, prompt="piano")
        running = wait_state(request, ("running",))
        # the progress reaches the status file with its ETA while the service works
        wait_for(lambda: isinstance(read_status(request).get("eta_seconds"), float), what="an ETA in the status file")
        assert daemon.stop() == 0
        paused = json.loads(request.with_name("long.status.json").read_text())
        assert paused["state"] == "running" and paused["message"] == "paused (daemon stopped)", paused
        assert "paused (daemon stopped)" in status(running["job_id"]).stdout
    assert Path(str(info["requests_dir"])).exists()
