"""A journal write whose COMMIT reached the server but whose answer was lost (the connection broke just
then) is retried by the daemon: the retry must not apply it twice. A real proxy between psycopg and a real
server carries the COMMIT out and cuts the connection before its answer arrives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bridge.common.jobs import JobState
from bridge.common.request import Origin, SeparationRequest
from bridge.engine.journal.postgres import PostgresJournal
from bridge.fal.client import RequestHandle
from tests.team.lossy_proxy import LossyProxy
from tests.team.pg_cluster import PgCluster
from tests.team.team_helpers import query, wait_server_up_for

pytestmark = pytest.mark.timeout(60)

HANDLE = RequestHandle("req-1", "http://127.0.0.1:9/s", "http://127.0.0.1:9/r", "http://127.0.0.1:9/c")


@pytest.fixture
def proxy(pg_cluster: PgCluster) -> Iterator[LossyProxy]:
    lossy = LossyProxy(pg_cluster.port)
    yield lossy
    lossy.close()


def lose_commit(proxy: LossyProxy, needle: bytes, call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run one journal call with the answer to the COMMIT of the statement holding `needle` lost."""
    before = proxy.cut
    proxy.lose_answer_to(needle)
    result = call(*args, **kwargs)
    assert proxy.cut == before + 1, "the answer was not lost: the test proves nothing"
    return result


def test_a_jobs_writes_retried_after_a_lost_commit_apply_once(
        proxy: LossyProxy, team_db: str, tmp_path: Path) -> None:
    journal = PostgresJournal(proxy.dsn(team_db), "studio-a", daemon=True)
    try:
        request = SeparationRequest(source=tmp_path / "a.wav", prompt="piano", idempotency_key="hot:a")
        job = lose_commit(proxy, b"INSERT INTO jobs", journal.add, request, "piano")
        assert query(team_db, "SELECT id, state FROM jobs") == [(job, "queued")]  # one job, not two
        assert query(team_db, "SELECT job_id, state FROM history") == [(job, "queued")]  # one event
        other = journal.add(SeparationRequest(source=tmp_path / "b.wav", prompt="piano"), "piano")

        # the daily budget: 1.00, each job 0.60 — the first is admitted once, so the second is refused
        assert lose_commit(proxy, b"pg_advisory_xact_lock", journal.reserve_budget, job, 0.6, 0, 1.0) is None
        assert journal.reserve_budget(other, 0.6, 0, 1.0) == pytest.approx(0.6)
        assert journal.spent_since(0) == pytest.approx(0.6)

        lose_commit(proxy, b"INSERT INTO steps", journal.mark_submitting, job, 0)
        lose_commit(proxy, b"INSERT INTO steps", journal.mark_submitted, job, 0, HANDLE)
        assert journal.handles(job) == ({0: HANDLE}, [])
        lose_commit(proxy, b"INSERT INTO history", journal.set_state, job, JobState.running, 0.5, "Separating")
        assert query(team_db, "SELECT state FROM history WHERE job_id=%s ORDER BY at", (job,)) == [
            ("queued",), ("running",)]  # the transition, applied once

        # forgetting a paid request (failed at the service) counts what it cost once
        lose_commit(proxy, b"DELETE FROM steps", journal.clear_steps, job)
        assert journal.handles(job) == ({}, [])
        assert query(team_db, "SELECT cost, forgotten_cost FROM jobs WHERE id=%s", (job,)) == [(0.0, 0.6)]
        assert journal.spent_since(0) == pytest.approx(0.6)
    finally:
        journal.close()


def test_a_takeover_retried_after_a_lost_commit_still_hands_the_jobs_over(
        proxy: LossyProxy, team_db: str, tmp_path: Path) -> None:
    """The takeover committed: the jobs are the taker's. Its retry must hand them to the taker's engine,
    or they stay unfinished, owned by a live daemon that never runs them."""
    dead = PostgresJournal(team_db, "dead", daemon=True, lease=1)
    busy = PostgresJournal(team_db, "busy", daemon=True, lease=1)
    taker = PostgresJournal(proxy.dsn(team_db), "taker", daemon=True, lease=1)
    try:
        orphan = dead.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
        dead.mark_submitting(orphan, 0)
        dead.mark_submitted(orphan, 0, HANDLE)
        dead.set_state(orphan, JobState.running, 0.2, "Separating")
        queued = busy.add(SeparationRequest(source=tmp_path / "b.wav", prompt="piano", origin=Origin.hot_folder),
                          "piano")
        dead._stop.set()  # the machine dies
        with psycopg.connect(team_db, autocommit=True) as conn:
            conn.execute("UPDATE daemons SET heartbeat = now() - interval '1 hour' WHERE instance='dead'")
        taker._healthy_since -= 10  # connected for longer than a lease
        wait_server_up_for(team_db, 1)

        adopted = lose_commit(proxy, b"UPDATE jobs SET owner", taker.adopt_orphans, 10)
        assert [r.view.job_id for r in adopted] == [orphan] and adopted[0].owner == "taker"
        assert taker.handles(orphan)[0] == {0: HANDLE}  # polled, never sent again

        taken = lose_commit(proxy, b"UPDATE jobs SET owner", taker.take_queued, 5)
        assert [r.view.job_id for r in taken] == [queued]
        assert query(team_db, "SELECT id, owner FROM jobs ORDER BY id") == sorted(
            [(orphan, "taker"), (queued, "taker")])
        assert taker.adopt_orphans(10) == [] and taker.take_queued(5) == []  # nothing handed over twice
    finally:
        for journal in (taker, busy, dead):
            journal.close()
