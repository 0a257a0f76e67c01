"""The PostgreSQL journal on a real server: the same behaviour as the sqlite one, migrations, claims that
exactly one daemon wins, leases and takeover, the team's dedupe leader and one daily budget."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from bridge.common.errors import BridgeError
from bridge.common.file_gate import FileSnapshot
from bridge.common.jobs import JobState
from bridge.common.request import SeparationRequest
from bridge.engine.journal import JobJournal, JobTakenOver, Journal, SchemaTooNew, redact
from bridge.engine.journal.pg_schema import MIGRATIONS, VERSION
from bridge.engine.journal.postgres import InstanceInUse, PostgresJournal
from bridge.fal.client import RequestHandle
from tests.team.team_helpers import wait_server_up_for

HANDLE = RequestHandle("req-1", "http://127.0.0.1:9/s", "http://127.0.0.1:9/r", "http://127.0.0.1:9/c")


def query_one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def expire(dsn: str, instance: str) -> None:
    """What a workstation that died looks like: its heartbeat stopped an hour ago (database clock)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE daemons SET heartbeat = now() - interval '1 hour' WHERE instance=%s", (instance,))


@pytest.fixture(params=["sqlite", "postgresql"])
def journal(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        made: JobJournal = Journal(tmp_path / "journal.sqlite")
    else:
        made = PostgresJournal(request.getfixturevalue("team_db"), "studio-a", daemon=True)
    yield made
    made.close()


def test_both_backends_keep_a_job_the_same_way(journal: JobJournal, tmp_path: Path) -> None:
    job = journal.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano", idempotency_key="k1"), "piano")
    journal.mark_submitting(job, 0)
    assert journal.handles(job) == ({}, [0])
    journal.mark_submitted(job, 0, HANDLE)
    assert journal.handles(job) == ({0: HANDLE}, [])
    journal.set_state(job, JobState.running, 0.5, "Separating")
    journal.set_fields(job, cost=0.25, dedupe_key="d1")
    assert [r.view.job_id for r in journal.unfinished()] == [job]
    assert journal.reserve_budget(job, 0.5, 0, limit=0.4) == 0.0  # refused: nothing else spent
    assert journal.reserve_budget(job, 0.3, 0, limit=0.4) is None
    journal.set_state(job, JobState.done, 1.0, "Done", result='{"stems": {"piano": "/x.wav"}}')
    row = journal.get(job)
    assert row is not None and row.view.state is JobState.done and row.view.stems == {"piano": "/x.wav"}
    assert row.cost == pytest.approx(0.3) and journal.spent_since(0) == pytest.approx(0.3)
    assert [r.view.job_id for r in journal.done_with_dedupe_key("d1")] == [job]
    assert [r.view.job_id for r in journal.by_idempotency_key("k1")] == [job]
    assert journal.find_prefix(job[:5]) == [job] and journal.unfinished() == []
    journal.clear_steps(job)
    assert journal.handles(job) == ({}, []) and journal.spent_since(0) == pytest.approx(0.3)


def test_a_state_change_never_writes_the_fal_key_to_the_journal(journal: JobJournal, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An error text quoting the key (a 401's detail) is masked by every backend, so a shared team
    database (and `status --team`) never holds it."""
    monkeypatch.setenv("FAL_KEY", "keyid-12345678:secretpart-ABCDEFGH")
    job = journal.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
    said = "fal said: 401 invalid key keyid-12345678:secretpart-ABCDEFGH"
    journal.set_state(job, JobState.failed, None, said, error=said)
    row = journal.get(job)
    assert row is not None
    kept = f"{row.view.message} {row.view.error}"
    assert "secretpart" not in kept and "keyid-12345678" not in kept and "<redacted>" in row.view.message
    if isinstance(journal, PostgresJournal):
        with psycopg.connect(journal._dsn) as conn:  # the history row too
            assert "secretpart" not in str(conn.execute("SELECT * FROM history").fetchall())


def test_schema_is_versioned_and_an_older_sam_bridge_refuses_a_newer_one(team_db: str) -> None:
    with pytest.raises(BridgeError) as caught:  # `sam-bridge status` never creates or migrates the schema
        PostgresJournal(team_db, "cli")
    assert "no sam-bridge schema yet" in caught.value.message and "Start a sam-bridge daemon" in caught.value.hint
    PostgresJournal(team_db, "a", daemon=True).close()
    PostgresJournal(team_db, "b", daemon=True).close()  # a second daemon finds the schema made: nothing to do
    PostgresJournal(team_db, "cli").close()
    with psycopg.connect(team_db, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(VERSION,)]
        conn.execute("UPDATE schema_version SET version=%s", (VERSION + 1,))
    with pytest.raises(SchemaTooNew) as caught:
        PostgresJournal(team_db, "a", daemon=True)
    assert f"schema version {VERSION + 1}" in caught.value.message and "Update sam-bridge" in caught.value.hint


def test_the_password_is_never_in_a_message(pg_cluster, team_db: str) -> None:
    dsn = team_db.replace("postgres@", "postgres:s3cret-pw@")
    assert "s3cret-pw" not in redact(dsn) and "***" in redact(dsn)
    assert "s3cret-pw" not in redact("host=x password=s3cret-pw dbname=y")
    journal = PostgresJournal(dsn, "a", daemon=True)
    assert "s3cret-pw" not in journal.where
    journal.close()
    wrong = dsn.replace(f":{pg_cluster.port}/", ":1/")
    with pytest.raises(Exception) as caught:
        PostgresJournal(wrong, "a", connect_timeout=2)
    assert "s3cret-pw" not in str(caught.value) and "Cannot reach the team database" in str(caught.value)


def test_a_live_instance_name_is_not_taken_twice(team_db: str) -> None:
    first = PostgresJournal(team_db, "studio-a", daemon=True)
    with psycopg.connect(team_db, autocommit=True) as conn:  # the same name, another machine
        conn.execute("UPDATE daemons SET host='elsewhere' WHERE instance='studio-a'")
    with pytest.raises(InstanceInUse) as caught:
        PostgresJournal(team_db, "studio-a", daemon=True)
    assert "elsewhere" in caught.value.message
    first.close()
    crashed = PostgresJournal(team_db, "studio-b", daemon=True)
    crashed._stop.set()  # killed: no clean stop, its lease still runs
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with psycopg.connect(team_db, autocommit=True) as conn:  # as if that process had been the daemon
        conn.execute("UPDATE daemons SET pid=%s WHERE instance='studio-b'", (ended.pid,))
    PostgresJournal(team_db, "studio-b", daemon=True).close()  # restarted on the same machine: welcome
    crashed.close()


def test_a_live_name_held_by_another_machine_of_the_same_host_name_is_refused(team_db: str) -> None:
    """Cloned Macs, 'ubuntu' VMs, containers: the same host name and state folder give the same default
    instance name. The other machine's pid means nothing here, so it never overrules a live heartbeat:
    otherwise both daemons own the same jobs and both submit them (paid twice)."""
    name = "Studio-iMac.local:/Users/studio/Library/Application Support/sam-bridge"
    other = PostgresJournal(team_db, name, daemon=True, lease=2.0)  # short: an unjudged row's lease is waited out
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with psycopg.connect(team_db, autocommit=True) as conn:  # its row, as the other machine wrote it
        conn.execute("UPDATE daemons SET pid=%s, pid_space='another machine:pid:[4026531836]' WHERE instance=%s",
                     (ended.pid, name))
    with pytest.raises(InstanceInUse) as caught:
        PostgresJournal(team_db, name, daemon=True)
    assert name in caught.value.message and "`instance:`" in caught.value.hint
    with psycopg.connect(team_db, autocommit=True) as conn:  # a row of a daemon older than pid_space: the same
        conn.execute("UPDATE daemons SET pid_space=NULL WHERE instance=%s", (name,))
    with pytest.raises(InstanceInUse):
        PostgresJournal(team_db, name, daemon=True)
    assert query_one(team_db, "SELECT count(*) FROM daemons") == 1
    other._stop.set()  # it died: once its lease ran out the name is free
    expire(team_db, name)
    PostgresJournal(team_db, name, daemon=True).close()
    other.close()


def test_a_crashed_run_without_a_pid_space_is_followed_once_its_lease_runs_out(
        team_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no pid space: a daemon restarted on the same machine after a crash met its own live-looking
    row, exited 3 ("another daemon is running"), and service-run, which does not restart exit 3, gave up for
    good. It now waits the row's lease out once, and only a heartbeat renewed meanwhile refuses the name."""
    import bridge.engine.journal.postgres as postgres

    monkeypatch.setattr(postgres, "pid_space", lambda: None)
    crashed = PostgresJournal(team_db, "studio", daemon=True, lease=2.0)
    crashed._stop.set()  # killed: its heartbeat ends, its row is not marked stopped
    began = time.monotonic()
    again = PostgresJournal(team_db, "studio", daemon=True, lease=2.0)
    assert time.monotonic() - began >= 1.0  # it waited for the lease
    assert query_one(team_db, "SELECT pid FROM daemons WHERE instance='studio'") == os.getpid()
    again.close()
    crashed.close()


def test_a_schema_3_database_migrates_and_its_daemons_rows_keep_working(team_db: str) -> None:
    with psycopg.connect(team_db, autocommit=True) as conn:  # as sam-bridge with schema version 3 left it
        for version in (1, 2, 3):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (3)")
        conn.execute("INSERT INTO daemons (instance, host, pid, version, lease) VALUES ('old', 'x', 1, '0.9', 30)")
    journal = PostgresJournal(team_db, "new", daemon=True)
    assert journal.schema_version() == VERSION
    assert {(d["instance"], d["alive"]) for d in journal.team_daemons()} == {("old", True), ("new", True)}
    with pytest.raises(InstanceInUse):  # its old row (no pid_space) is live: refused, whatever its pid
        PostgresJournal(team_db, "old", daemon=True)
    journal.close()


def test_exactly_one_daemon_wins_a_file_version_and_a_done_one_is_never_taken_again(
        team_db: str, tmp_path: Path) -> None:
    source = tmp_path / "vocals" / "take.wav"
    source.parent.mkdir()
    source.write_bytes(b"x" * 100)
    snapshot = FileSnapshot.of(source)
    assert snapshot is not None
    journals = [PostgresJournal(team_db, f"studio-{n}", daemon=True) for n in range(6)]
    stores = [j.claims(j.instance) for j in journals]
    outcomes: list[object] = []
    barrier = threading.Barrier(len(stores))

    def race(store) -> None:
        barrier.wait()
        outcomes.append(store.try_claim(source, snapshot))

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.claim is not None]
    assert len(winners) == 1
    assert all("studio-" in o.holder for o in outcomes if o.claim is None)
    winner_store = next(s for s in stores if s.refresh(winners[0].claim))
    winner_store.mark_done(winners[0].claim)
    again = stores[0].try_claim(source, snapshot)
    assert again.claim is None and again.done_elsewhere
    for journal in journals:
        journal.close()


def test_a_dead_daemons_claim_and_jobs_go_to_one_other_daemon_and_its_late_submit_is_refused(
        team_db: str, tmp_path: Path) -> None:
    dead = PostgresJournal(team_db, "dead", daemon=True, lease=2)
    taker = PostgresJournal(team_db, "taker", daemon=True, lease=2)
    other = PostgresJournal(team_db, "other", daemon=True, lease=2)
    source = tmp_path / "take.wav"
    source.write_bytes(b"y" * 10)
    snapshot = FileSnapshot.of(source)
    assert snapshot is not None
    claim = dead.claims("dead").try_claim(source, snapshot)
    assert claim.claim is not None
    polled = dead.add(SeparationRequest(source=source, prompt="piano"), "piano")
    dead.mark_submitting(polled, 0)
    dead.mark_submitted(polled, 0, HANDLE)
    dead.set_state(polled, JobState.running, 0.2, "Separating")
    fresh = dead.add(SeparationRequest(source=source, prompt="drums"), "drums")
    assert taker.adopt_orphans(10) == []  # its lease holds
    assert taker.claims("taker").try_claim(source, snapshot).claim is None
    dead._stop.set()  # the machine dies: no more heartbeats
    expire(team_db, "dead")
    for journal in (taker, other):
        journal._healthy_since -= 10  # connected for longer than a lease
    wait_server_up_for(team_db, 2)
    adopted = {r.view.job_id: r for r in taker.adopt_orphans(10)}
    assert set(adopted) == {polled, fresh} and other.adopt_orphans(10) == []
    assert adopted[polled].owner == "taker" and taker.handles(polled)[0] == {0: HANDLE}  # polled, not resent
    with pytest.raises(JobTakenOver):
        dead.mark_submitting(fresh, 0)  # the old owner, back from the dead, never submits it
    with pytest.raises(JobTakenOver):
        dead.set_state(fresh, JobState.failed, None, "late")  # nor ends it
    assert (taker.get(fresh) or adopted[fresh]).view.state is JobState.queued
    assert taker.handles(fresh) == ({}, [])
    assert taker.claims("taker").try_claim(source, snapshot).claim is not None
    for journal in (dead, taker, other):
        journal.close()


def test_the_same_work_on_two_machines_has_one_leader_the_other_waits(team_db: str, tmp_path: Path) -> None:
    a = PostgresJournal(team_db, "a", daemon=True)
    b = PostgresJournal(team_db, "b", daemon=True)
    first = a.add(SeparationRequest(source=tmp_path / "x.wav", prompt="piano"), "piano")
    second = b.add(SeparationRequest(source=tmp_path / "x.wav", prompt="piano"), "piano")
    assert a.active_leader(first, "key") is None
    assert b.active_leader(second, "key") == first  # waits while the first runs
    a.set_state(first, JobState.failed, None, "failed")
    assert b.active_leader(second, "key") is None  # the first failed: the second leads now
    assert a.active_leader(first, "key") == second
    a.close()
    b.close()


def test_a_daily_budget_of_n_jobs_admits_n_across_the_team(team_db: str, tmp_path: Path) -> None:
    journals = [PostgresJournal(team_db, f"s{n}", daemon=True) for n in range(3)]
    jobs = [(j, j.add(SeparationRequest(source=tmp_path / f"{n}.wav", prompt="piano"), "piano"))
            for n, j in enumerate(journals * 4)]
    admitted: list[str] = []
    barrier = threading.Barrier(len(jobs))

    def reserve(journal: PostgresJournal, job: str) -> None:
        barrier.wait()
        if journal.reserve_budget(job, 1.0, 0, limit=5.0) is None:
            admitted.append(job)

    threads = [threading.Thread(target=reserve, args=pair) for pair in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 5 and journals[0].spent_since(0) == pytest.approx(5.0)
    for journal in journals:
        journal.close()


def test_a_dead_daemons_job_this_machine_cannot_reach_waits_for_one_that_can_and_says_so(
        team_db: str, tmp_path: Path) -> None:
    dead = PostgresJournal(team_db, "dead", daemon=True, lease=2)
    taker = PostgresJournal(team_db, "taker", daemon=True, lease=2)
    here = tmp_path / "take.wav"
    here.write_bytes(b"z")
    elsewhere = Path("/Volumes/Studio-only-on-that-mac/take.wav")
    near = dead.add(SeparationRequest(source=here, prompt="piano"), "piano")
    far = dead.add(SeparationRequest(source=elsewhere, prompt="piano"), "piano")
    dead._stop.set()
    expire(team_db, "dead")
    taker._healthy_since -= 10
    wait_server_up_for(team_db, 2)

    def reachable(row) -> bool:
        return row.request.source.is_file()

    assert [r.view.job_id for r in taker.adopt_orphans(10, reachable)] == [near]
    waiting = taker.get(far)
    assert waiting is not None and waiting.owner == "dead"
    assert "Waiting for a sam-bridge that can reach /Volumes/Studio-only-on-that-mac" in waiting.view.message
    dead.close()
    taker.close()


def test_an_idle_daemon_takes_only_hot_folder_jobs_a_busy_one_has_not_started(
        team_db: str, tmp_path: Path) -> None:
    from bridge.common.request import Origin

    busy = PostgresJournal(team_db, "busy", daemon=True)
    idle = PostgresJournal(team_db, "idle", daemon=True)
    waiting = busy.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano", origin=Origin.hot_folder), "p")
    started = busy.add(SeparationRequest(source=tmp_path / "b.wav", prompt="piano", origin=Origin.hot_folder), "p")
    busy.set_state(started, JobState.preparing, 0.0, "Preparing")
    request_file = busy.add(SeparationRequest(source=tmp_path / "c.wav", prompt="piano",
                                              origin=Origin.request_file), "p")
    assert [r.view.job_id for r in idle.take_queued(5)] == [waiting]  # not the started one, nor a request file's
    with pytest.raises(JobTakenOver):
        busy.set_state(waiting, JobState.preparing, 0.0, "Preparing")  # so only one daemon starts it
    idle.set_state(waiting, JobState.preparing, 0.0, "Preparing")
    assert {r.view.job_id for r in busy.unfinished()} == {started, request_file}
    busy.close()
    idle.close()


def test_a_late_progress_report_never_overwrites_a_finished_jobs_last_word(journal: JobJournal,
                                                                          tmp_path: Path) -> None:
    job = journal.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
    journal.set_state(job, JobState.done, 1.0, "Done")
    journal.update_progress(job, 0.9, "Aligning and writing stems")  # from a helper thread, held up
    row = journal.get(job)
    assert row is not None and row.view.message == "Done" and row.view.progress == 1.0


def test_a_database_restart_longer_than_a_lease_takes_no_live_daemons_jobs(pg_cluster, team_db: str,
                                                                           tmp_path: Path) -> None:
    """Every heartbeat stops while the server is down, so every lease looks expired when it is back: a
    daemon that is alive must get its lease back before the others take its jobs (which would make its
    submits "uncertain" and have two daemons write one job's stems)."""
    from tests.test_daemon import make_source

    alive = PostgresJournal(team_db, "studio-a", daemon=True, lease=3.0)
    other = PostgresJournal(team_db, "studio-b", daemon=True, lease=3.0)
    try:
        job = alive.add(SeparationRequest(source=make_source(tmp_path / "a.wav", seconds=0.1), prompt="piano"),
                        "piano")
        alive.set_state(job, JobState.running, 0.5, "Separating")
        pg_cluster.down()
        threading.Event().wait(4.0)  # longer than the lease
        pg_cluster.up()
        taken = []
        for _ in range(25):  # the next 5 s: past one lease after the server is back
            taken += other.adopt_orphans(10)
            threading.Event().wait(0.2)
        assert taken == []
        row = alive.get(job)
        assert row is not None and row.owner == "studio-a"
    finally:
        alive.close()
        other.close()


def test_each_daemon_is_judged_by_its_own_lease_not_by_the_judges(team_db: str, tmp_path: Path) -> None:
    """The lease is each machine's config: a daemon configured shorter must not take a live daemon's jobs
    between its heartbeats, and one configured longer must not wait its own lease for a dead daemon's."""
    slow = PostgresJournal(team_db, "slow-beat", daemon=True, lease=30.0)  # heartbeats every 10 s
    quick = PostgresJournal(team_db, "quick", daemon=True, lease=1.0)
    patient = PostgresJournal(team_db, "patient", daemon=True, lease=60.0)
    try:
        for journal in (quick, patient):
            journal._healthy_since -= 120  # connected for longer than a lease
        wait_server_up_for(team_db, 2.5)  # a dead daemon's lease counts from the server's start too
        source = tmp_path / "claimed.wav"
        source.write_bytes(b"z" * 10)
        snapshot = FileSnapshot.of(source)
        assert snapshot is not None and slow.claims("slow-beat").try_claim(source, snapshot).claim is not None
        job = slow.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
        slow.set_state(job, JobState.running, 0.5, "Separating")
        with psycopg.connect(team_db, autocommit=True) as conn:  # 5 s since its last beat: well inside its lease
            conn.execute("UPDATE daemons SET heartbeat = now() - interval '5 seconds' WHERE instance='slow-beat'")
        assert quick.adopt_orphans(10) == []
        assert {d["instance"]: bool(d["alive"]) for d in quick.team_daemons()}["slow-beat"] is True
        outcome = quick.claims("quick").try_claim(source, snapshot)  # nor its claim on a file
        assert outcome.claim is None and outcome.holder is not None and "slow-beat" in outcome.holder
        assert 20 <= outcome.recheck_after <= 26  # its lease (30 s) less its silence (5 s)
        row = slow.get(job)
        assert row is not None and row.owner == "slow-beat"

        dies = PostgresJournal(team_db, "dies", daemon=True, lease=2.0)
        orphan = dies.add(SeparationRequest(source=tmp_path / "b.wav", prompt="drums"), "drums")
        dies._stop.set()  # killed: no more heartbeats, no clean stop
        with psycopg.connect(team_db, autocommit=True) as conn:  # silent for three of its leases
            conn.execute("UPDATE daemons SET heartbeat = now() - interval '6 seconds' WHERE instance='dies'")
        assert [r.view.job_id for r in patient.adopt_orphans(10)] == [orphan]
        daemons = {d["instance"]: d for d in patient.team_daemons()}
        assert daemons["dies"]["alive"] is False and float(daemons["dies"]["lease"]) == 2.0
        dies.close()
    finally:
        for journal in (slow, quick, patient):
            journal.close()


def test_a_cover_claim_needs_no_free_slot(team_db: str, tmp_path: Path) -> None:
    """A hot-folder job with a sidecar marks the same audio without its sidecar done at once (the cover), so
    that deleting the sidecar while the job runs starts nothing on a sibling daemon. The daemon's claim slots
    (concurrency + 2) are often all held just then, by that very job among others: the cover must not wait
    for a slot, or it is skipped and the sibling pays for the file with the folder's preset."""
    from bridge.common.file_gate import FileSnapshot
    from bridge.engine.journal.claims_pg import DatabaseClaims

    journal = PostgresJournal(team_db, "studio-a", daemon=True, lease=30.0)
    try:
        claims = DatabaseClaims(journal, "studio-a", limit=2)
        snapshot = FileSnapshot(1000, 1)
        assert claims.try_claim(tmp_path / "other.wav", snapshot).claim is not None
        assert claims.try_claim(tmp_path / "Song.wav", snapshot, "sidecar-digest").claim is not None
        assert claims.try_claim(tmp_path / "third.wav", snapshot).claim is None  # the slots are full
        cover = claims.try_claim(tmp_path / "Song.wav", snapshot, slot=False)
        assert cover.claim is not None
        claims.mark_done(cover.claim)
        sibling = DatabaseClaims(journal, "studio-b")
        assert sibling.try_claim(tmp_path / "Song.wav", snapshot).done_elsewhere
    finally:
        journal.close()
