"""The journal on a real sqlite file: what forgotten requests cost, and journals from before new columns."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.journal import Journal, JournalDamaged, SchemaTooNew
from bridge.engine.journal.sqlite import VERSION
from bridge.fal.client import RequestHandle

HANDLE = RequestHandle("req-1", "http://127.0.0.1:9/s", "http://127.0.0.1:9/r", "http://127.0.0.1:9/c")


def test_forgotten_requests_still_count_and_a_new_reservation_adds_to_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    job = journal.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
    other = journal.add(SeparationRequest(source=tmp_path / "b.wav", prompt="piano"), "piano")
    journal.set_fields(other, cost=0.25)
    journal.set_fields(job, cost=0.6)  # reserved, then accepted at the service
    journal.mark_submitted(job, 0, HANDLE)
    journal.clear_steps(job)  # e.g. the source changed: the request is forgotten, not unpaid
    assert journal.handles(job)[0] == {}
    assert journal.spent_since(0) == pytest.approx(0.85)
    assert journal.spent_since(0, exclude=job) == pytest.approx(0.85)  # what it spent is not a reservation
    journal.set_fields(job, cost=0.6)  # the retry reserves again
    assert journal.spent_since(0) == pytest.approx(1.45)
    assert journal.spent_since(0, exclude=job) == pytest.approx(0.85)
    journal.close()


def test_clearing_steps_that_never_reached_the_service_costs_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    job = journal.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
    journal.set_fields(job, cost=0.6)
    journal.mark_submitting(job, 0)  # sent, no answer: nothing accepted
    journal.clear_steps(job)
    journal.set_state(job, JobState.failed, None, "failed", cost=0.0)
    assert journal.spent_since(0) == 0.0
    journal.close()


def test_a_journal_from_before_the_new_columns_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    old = Journal(path)
    job = old.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
    old.set_fields(job, cost=0.3)
    old.close()
    with sqlite3.connect(path) as db:  # what the first release's schema had (no version table yet)
        db.execute("ALTER TABLE jobs DROP COLUMN source_hash")
        db.execute("ALTER TABLE jobs DROP COLUMN forgotten_cost")
        db.execute("ALTER TABLE jobs DROP COLUMN owner")
        db.execute("DROP TABLE schema_version")
    journal = Journal(path)
    row = journal.get(job)
    assert row is not None and row.source_hash is None and row.cost == pytest.approx(0.3)
    assert journal.spent_since(0) == pytest.approx(0.3)
    journal.set_fields(job, source_hash="ab" * 32)
    assert (journal.get(job) or row).source_hash == "ab" * 32
    journal.close()


def test_the_journal_records_its_schema_version_and_an_older_sam_bridge_refuses_a_newer_one(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(VERSION,)]
        db.execute("UPDATE schema_version SET version=?", (VERSION + 1,))  # as a newer sam-bridge leaves it
    with pytest.raises(SchemaTooNew) as caught:
        Journal(path)
    assert f"schema version {VERSION + 1}" in caught.value.message and "Update sam-bridge" in caught.value.hint
    with sqlite3.connect(path) as db:  # untouched
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(VERSION + 1,)]


def test_a_damaged_journal_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalDamaged) as caught:
        Journal(path)
    assert str(path) in caught.value.message and "Move it aside" in caught.value.hint


@pytest.mark.parametrize("command", [["status"], ["run", "--local", "--no-osc", "--no-hot-folder"]])
def test_status_and_run_on_a_damaged_journal_say_so_without_a_traceback(tmp_path: Path, command: list[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.sqlite").write_bytes(b"this is not sqlite" * 100)
    env = {**os.environ, "HOME": str(tmp_path), "SAM_BRIDGE_STATE_DIR": str(state),
           "SAM_BRIDGE_CONFIG": str(tmp_path / "config.yaml"), "SAM_BRIDGE_HOT_DIR": str(tmp_path / "hot"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = subprocess.run([sys.executable, "-m", "bridge", *command], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"The job journal {state / 'journal.sqlite'} is damaged" in done.stderr
    assert "Move it aside" in done.stderr
    assert not (state / "daemon.json").exists()
