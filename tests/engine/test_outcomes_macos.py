"""A job that fails because macOS refused the service a protected folder (TCC: EPERM, "Operation not
permitted") says, in its own error (status file, OSC /sam/error, `sam-bridge status`), exactly what to grant:
not only `sam-bridge service status` reading the logs afterwards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bridge.common.errors import SourceError
from bridge.common.jobs import JobEvent, JobState
from bridge.common.request import SeparationRequest
from bridge.engine.events import JobEvents
from bridge.engine.journal import Journal
from bridge.engine.outcomes import JobOutcomes
from bridge.os_service.macos_privacy import job_error_hint

REFUSED = "/Users/you/Documents/Live Sets/Song/Samples/take.wav"


def test_a_refusal_on_macos_gets_the_grant_and_nothing_elsewhere() -> None:
    text = f"The source {REFUSED} cannot be read ([Errno 1] Operation not permitted)."
    hint = job_error_hint(text, Path("/Users/you"), "/usr/bin/python3", platform="darwin")
    assert hint is not None and "Documents Folder" in hint and "Full Disk Access" in hint
    assert job_error_hint(text, Path("/Users/you"), "/usr/bin/python3", platform="linux") is None
    plain = "The source /Users/you/Music/take.wav cannot be read ([Errno 13] Permission denied)."
    assert job_error_hint(plain, Path("/Users/you"), "/usr/bin/python3", platform="darwin") is None


def test_a_failed_jobs_error_carries_the_grant_on_macos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")  # the service runs as a LaunchAgent there
    journal = Journal(tmp_path / "journal.sqlite")
    events = JobEvents()
    seen: list[JobEvent] = []
    events.subscribe(seen.append)
    source = tmp_path / "take.wav"
    source.write_bytes(b"")
    job_id = journal.add(SeparationRequest(source=source, prompt="piano"), "piano")
    row = journal.get(job_id)
    assert row is not None
    outcomes = JobOutcomes(journal, events, cancel_request=lambda _handle: None, retry_base=1.0, retry_max=2.0)
    outcomes.failed(row, SourceError(f"The source {REFUSED} cannot be read ([Errno 1] Operation not permitted)."))
    failed = journal.get(job_id)
    assert failed is not None and failed.view.state == JobState.failed
    assert failed.view.error is not None and "Full Disk Access" in failed.view.error
    assert seen and seen[-1].error is not None and "Full Disk Access" in seen[-1].error
    journal.close()
