"""A database that goes silent (its host lost, a cable pulled, a NAT that dropped the connection's state, a
frozen server) leaves the connection open and never answers: without a bound of its own a daemon would wait
forever, its heartbeat never saying so while the others take its jobs over. A real proxy between psycopg
and a real server freezes (holds every byte, closes nothing); the heartbeat's wait (and `team check`'s) must
end within the statement bound (`bridge.engine.journal.deadline`) as an outage, and carry on after a thaw.
A lock wait is no outage: the pool's statements wait for it, and the heartbeat's is ended by the server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.common.request import SeparationRequest
from bridge.engine.journal.postgres import PostgresJournal
from tests.team.lossy_proxy import LossyProxy
from tests.team.pg_cluster import PgCluster
from tests.team.team_helpers import query

pytestmark = pytest.mark.timeout(60)

# lease 3 s: the bound is 1 s and a heartbeat every second, so an outage is due ~2.5 s after the freeze.
# The limits below are far wider, for a loaded machine: what they tell apart is a bound from none.
LEASE = 3.0
WITHIN = 15.0
UNREACHABLE = "is unreachable"


@pytest.fixture
def proxy(pg_cluster: PgCluster) -> Iterator[LossyProxy]:
    frozen = LossyProxy(pg_cluster.port)
    yield frozen
    frozen.close()


def wait_for(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds until `condition` held; raises when it did not within `seconds`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


def heartbeat(dsn: str, instance: str) -> float:
    """The instance's last renewal (database clock, epoch seconds), read past the proxy."""
    return float(query(dsn, "SELECT EXTRACT(EPOCH FROM heartbeat) FROM daemons WHERE instance=%s", (instance,))[0][0])


class Call:
    """A journal call in a thread of its own: a test that hangs says so instead of hanging."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._call = call
        self.started = time.monotonic()
        threading.Thread(target=self._run, name="journal-call", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def outages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if UNREACHABLE in r.getMessage()]


def test_a_heartbeat_on_a_silent_database_reports_the_outage_and_renews_after_it(
        proxy: LossyProxy, team_db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.engine.journal.postgres")
    journal = PostgresJournal(proxy.dsn(team_db), "studio-a", daemon=True, lease=LEASE)
    try:
        first = heartbeat(team_db, "studio-a")
        wait_for(lambda: heartbeat(team_db, "studio-a") > first, WITHIN)  # it beats through the proxy
        proxy.freeze()
        wait_for(lambda: not journal.reachable and bool(outages(caplog)), WITHIN)  # (it logs right after)

        proxy.thaw()  # the server answers again: the next beat (on a new connection) renews the lease
        before = heartbeat(team_db, "studio-a")
        wait_for(lambda: journal.reachable and heartbeat(team_db, "studio-a") > before, WITHIN)
        assert any("is back after" in r.getMessage() for r in caplog.records)
    finally:
        proxy.thaw()
        journal.close()


def test_a_job_statement_waiting_for_a_lock_is_not_cut_and_runs_once(
        team_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A lock held longer than the bound (another daemon's transaction, a report, a migration) is no outage:
    the pool's statement waits for it and runs once. Cutting it on the client left it running on the
    server (applied after the caller was told it failed) and every retry added a server process."""
    import psycopg

    from bridge.common.jobs import JobState

    caplog.set_level(logging.WARNING, logger="bridge.engine.journal.postgres")
    journal = PostgresJournal(team_db, "studio-a", daemon=True, lease=LEASE)
    try:
        job = journal.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
        with psycopg.connect(team_db) as holder:  # a transaction holding the job's row, 3 bounds long
            holder.execute("SELECT 1 FROM jobs WHERE id=%s FOR UPDATE", (job,))
            call = Call(lambda: journal.set_state(job, JobState.uploading))
            time.sleep(3 * journal.statement_bound)
            waiting = query(team_db, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type='Lock'")[0][0]
            assert not call.done.is_set() and waiting == 1, (call.error, waiting)
        assert call.done.wait(WITHIN) and call.error is None, call.error
        assert journal.get(job).view.state is JobState.uploading
        assert not outages(caplog)
    finally:
        journal.close()


def test_a_heartbeat_behind_a_lock_is_ended_by_the_server_not_piled_up(
        team_db: str, caplog: pytest.LogCaptureFixture) -> None:
    """The heartbeat's own statement waiting for a lock is ended by the server before the client's bound
    (statement_timeout), so no abandoned renewal keeps waiting there, one more per try."""
    import psycopg

    caplog.set_level(logging.WARNING, logger="bridge.engine.journal.postgres")
    journal = PostgresJournal(team_db, "studio-a", daemon=True, lease=LEASE)
    try:
        with psycopg.connect(team_db) as holder:
            holder.execute("SELECT 1 FROM daemons WHERE instance='studio-a' FOR UPDATE")
            wait_for(lambda: bool(outages(caplog)), WITHIN)
            most = 0
            for _ in range(int(4 * journal.statement_bound / 0.1)):
                most = max(most, query(team_db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                                "wait_event_type='Lock' AND query LIKE 'UPDATE daemons%%'")[0][0])
                time.sleep(0.1)
            assert most <= 1, f"{most} renewals waiting on the server at once"
        before = heartbeat(team_db, "studio-a")
        wait_for(lambda: journal.reachable and heartbeat(team_db, "studio-a") > before, WITHIN)
    finally:
        journal.close()


def test_team_check_on_a_server_that_goes_silent_says_so_instead_of_hanging(
        proxy: LossyProxy, team_db: str) -> None:
    """`sam-bridge team check` is what one runs when the database seems gone: connected, it asks for the
    server's version, and the server answers nothing more."""
    from bridge.engine.journal.team_check import check_team

    proxy.freeze_at(b"server_version")
    try:
        call = Call(lambda: check_team(proxy.dsn(team_db), LEASE, timeout=2))
        assert call.done.wait(WITHIN), "team check hangs on the silent database"
        assert call.error is None and [f.ok for f in call.result] == [False]
        assert "no answer from the server within 2 s" in call.result[0].text
    finally:
        proxy.thaw()

def test_the_kernel_is_asked_to_drop_a_silent_server_too(team_db: str) -> None:
    """Real network loss is also the kernel's to notice (it cannot be made on loopback): the heartbeat's and
    the pool's connections carry libpq's keepalive and TCP user timeout settings for the bound, and a
    setting the address makes itself is kept."""
    journal = PostgresJournal(f"{team_db}?keepalives_count=7", "studio-a", daemon=True, lease=LEASE)
    try:
        with journal._pool.connection() as conn:
            settings = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
        assert journal.statement_bound == 1.0
        # the pool's: 30 s at least (a short Wi-Fi drop must not cut a job's statement); the heartbeat's: the bound
        assert {name: settings[name] for name in ("keepalives", "keepalives_idle", "tcp_user_timeout",
                                                 "keepalives_count")} == {
            "keepalives": "1", "keepalives_idle": "30", "tcp_user_timeout": "30000", "keepalives_count": "7"}
        assert journal._tcp["tcp_user_timeout"] == 1000 and journal._tcp["keepalives_idle"] == 1
    finally:
        journal.close()


def test_the_bound_is_a_third_of_the_lease_within_one_to_ten_seconds() -> None:
    """A renewal hanging from a third of the lease is given up by two thirds: the next try still comes in time."""
    from bridge.engine.journal.deadline import statement_bound

    assert [statement_bound(lease) for lease in (1, 3, 6, 30, 3600)] == [1.0, 1.0, 2.0, 10.0, 10.0]


def test_the_heartbeat_lives_on_a_psycopg_without_timed_waits(
        team_db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """psycopg before its timed `Connection.wait(gen, interval, timeout)` (3.2 has `wait(gen, interval)`) is
    allowed by the requirements: the heartbeat then waits unbounded (the kernel's line only) instead of failing
    on every renewal, its thread ended and its jobs taken over by the others while it still ran them."""
    import psycopg

    from bridge.engine.journal import deadline

    original = psycopg.Connection.wait

    def old_wait(self: psycopg.Connection[Any], gen: Any, interval: float = 0.1) -> Any:
        return original(self, gen, interval)

    monkeypatch.setattr(psycopg.Connection, "wait", old_wait)
    deadline.timed_wait.cache_clear()
    caplog.set_level(logging.WARNING, logger="bridge.engine.journal.postgres")
    journal = PostgresJournal(team_db, "studio-a", daemon=True, lease=LEASE)
    try:
        first = heartbeat(team_db, "studio-a")
        wait_for(lambda: heartbeat(team_db, "studio-a") > first, WITHIN)
        later = heartbeat(team_db, "studio-a")
        wait_for(lambda: heartbeat(team_db, "studio-a") > later, WITHIN)
        assert journal.reachable and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        journal.close()
        deadline.timed_wait.cache_clear()
