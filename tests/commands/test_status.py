"""`sam-bridge status JOB` says what a user needs (issue #23, item 5): stems, flags, cost and request ids;
`--json` times in ISO 8601; a job paused because the daemon stopped says so in its status file and in the
list. The real daemon process against the stand-in over real HTTP."""

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
    job = json.loads(shown.stdout)  # the job itself, not a list of one, as its text shows only that job
    assert isinstance(job, dict), job
    assert [job] == json.loads(status("--json").stdout)  # the same summary as the list's
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
        # the list says so too: it showed only `running 43%`
        listing = status().stdout.splitlines()
        row = next(i for i, line in enumerate(listing) if line.startswith(running["job_id"]))
        assert listing[row].split()[1] == "running", listing
        assert listing[row + 1:row + 2] == [" " * 14 + "paused (daemon stopped)"], listing
        listed = {job["job_id"]: job for job in json.loads(status("--json").stdout)}[running["job_id"]]
        assert (listed["state"], listed["message"]) == ("running", "paused (daemon stopped)"), listed
    assert Path(str(info["requests_dir"])).exists()


# ESC [ 2J clears the screen, OSC 52 writes the clipboard, \x9b is the 8-bit CSI, \r rewrites the line
HOSTILE = "\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\x9b31m\rok"
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_status_shows_control_sequences_from_outside_as_text(user_dirs) -> None:
    """File names, prompts, tags, messages and errors come from whoever wrote a request or named a file:
    none of them may drive the terminal `sam-bridge status` prints to."""
    from bridge.common.jobs import JobState
    from bridge.common.request import SeparationRequest
    from bridge.engine.journal import Journal

    source = user_dirs["home"] / f"take{HOSTILE}.wav"
    journal = Journal(user_dirs["state"] / "journal.sqlite")
    job = journal.add(SeparationRequest(source=source, prompt=f"piano{HOSTILE}", tag=f"tag{HOSTILE}"),
                      f"piano{HOSTILE}")
    journal.set_state(job, JobState.failed, 0.5, f"Failed{HOSTILE}",
                      error=f"{source.name} is gone{HOSTILE}\nExport it{HOSTILE} again.")
    journal.close()
    listing, one, as_json = status(), status(job), status("--json", job)
    for shown in (listing, one, as_json):
        assert shown.returncode == 0, shown.stderr
        assert not RAW_CONTROL.search(shown.stdout), repr(shown.stdout)
    assert "take\\x1b[2J\\x1b]52;c;cm0gLXJmIH4=\\x07\\x9b31m\\rok.wav" in listing.stdout
    escaped = HOSTILE.encode("unicode_escape").decode()
    assert f"\n              take{escaped}.wav is gone{escaped}\n" in listing.stdout  # the error's first line
    for field in (f"source:   {str(source).encode('unicode_escape').decode()}\n", f"Failed{escaped}\n",
                  f"what:     piano{escaped}  (tag tag{escaped})\n",
                  f"error:    take{escaped}.wav is gone{escaped}\n            Export it{escaped} again.\n"):
        assert field in one.stdout, one.stdout
    summary = json.loads(as_json.stdout)  # still JSON, and the same text once parsed
    assert summary["source"] == str(source) and summary["tag"] == f"tag{HOSTILE}"
    assert "\\u009b" in as_json.stdout and "\\u001b" in as_json.stdout


def test_status_json_of_an_unknown_job_is_json(daemon_factory, service, user_dirs, capsys) -> None:
    """A script reading `status --json ID` got plain text for an id that is not there."""
    from bridge.cli import main

    daemon = daemon_factory(service.url)
    daemon.start()
    daemon.stop()
    assert main(["status", "--json", "nope"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and answer["error"] == "bad_input" and "nope" in answer["message"]
