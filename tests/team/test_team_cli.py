"""`sam-bridge team check` and `sam-bridge status --team` as a user runs them (real subprocesses, a real
server): what is fine, what is wrong in words, and never the password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import psycopg
import pytest

from bridge.common.request import SeparationRequest
from bridge.engine.journal.pg_schema import VERSION
from bridge.engine.journal.postgres import PostgresJournal
from tests.team.conftest import ALICE_PASSWORD


def sam_bridge(tmp_path: Path, *args: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "SAM_BRIDGE_STATE_DIR": str(tmp_path / "state"),
           "SAM_BRIDGE_CONFIG": str(tmp_path / "config.yaml")}
    env.pop("SAM_BRIDGE_DATABASE", None)
    if database:
        env["SAM_BRIDGE_DATABASE"] = database
    return subprocess.run([sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_team_check_says_what_is_fine_and_what_is_wrong(pg_cluster, team_db: str, tmp_path: Path) -> None:
    fresh = sam_bridge(tmp_path, "team", "check", database=team_db)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "No sam-bridge schema yet" in fresh.stdout and "Clock skew" in fresh.stdout
    daemon = PostgresJournal(team_db, "studio-a", daemon=True)
    made = sam_bridge(tmp_path, "team", "check", database=team_db)
    assert f"Schema version {VERSION} (current)" in made.stdout and "studio-a" in made.stdout
    daemon.close()
    with psycopg.connect(team_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version=%s", (VERSION + 1,))
    newer = sam_bridge(tmp_path, "team", "check", database=team_db)
    assert newer.returncode == 1 and "Update sam-bridge on this machine" in newer.stdout
    wrong = team_db.replace("postgres@", "postgres:hunter2-pw@").replace(f":{pg_cluster.port}/", ":1/")
    unreachable = sam_bridge(tmp_path, "team", "check", database=wrong)
    assert unreachable.returncode == 1 and "FAIL  Cannot connect" in unreachable.stdout
    assert "hunter2-pw" not in unreachable.stdout + unreachable.stderr and "***" in unreachable.stdout


def test_team_commands_without_a_database_say_how_to_set_one(tmp_path: Path) -> None:
    for args in (("team", "check"), ("status", "--team")):
        result = sam_bridge(tmp_path, *args)
        assert result.returncode != 0 and "SAM_BRIDGE_DATABASE" in result.stderr
        assert "Traceback" not in result.stderr


def test_status_team_shows_every_machines_jobs_and_who_is_alive(team_db: str, tmp_path: Path) -> None:
    alive = PostgresJournal(team_db, "studio-a", daemon=True)
    gone = PostgresJournal(team_db, "studio-b", daemon=True)
    jobs = [j.add(SeparationRequest(source=tmp_path / f"{j.instance}.wav", prompt="piano"), "piano")
            for j in (alive, gone)]
    gone.close()  # stopped cleanly: not alive
    result = sam_bridge(tmp_path, "status", "--team", "--json", database=team_db)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert {(d["instance"], d["alive"]) for d in shown["daemons"]} == {("studio-a", True), ("studio-b", False)}
    assert {(j["job_id"], j["owner"], j["state"]) for j in shown["jobs"]} == {
        (jobs[0], "studio-a", "queued"), (jobs[1], "studio-b", "queued")}
    table = sam_bridge(tmp_path, "status", "--team", database=team_db).stdout
    assert "studio-a" in table and "yes" in table and jobs[1] in table
    alive.close()


def test_config_show_never_prints_the_database_password(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("database: postgresql://sam:hunter2-pw@nas.local/sam_bridge\n")
    shown = sam_bridge(tmp_path, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "hunter2-pw" not in shown.stdout and "postgresql://sam:***@nas.local/sam_bridge" in shown.stdout
    from_env = sam_bridge(tmp_path, "config", "show", database="postgresql://sam:env-pw@db/x")
    assert "env-pw" not in from_env.stdout and "SAM_BRIDGE_DATABASE: postgresql://sam:***@db/x" in from_env.stdout


def test_status_while_the_team_database_is_down_says_so_at_once(pg_cluster, team_db: str, tmp_path: Path) -> None:
    PostgresJournal(team_db, "studio-a", daemon=True).close()
    pg_cluster.down()
    try:
        result = sam_bridge(tmp_path, "status", "--team", database=team_db)
    finally:
        pg_cluster.up()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Cannot reach the team database" in result.stderr or "unreachable" in result.stderr


def test_a_wrong_or_unreadable_password_is_said_at_once_and_never_shown(pg_cluster, alice: str, team_db: str,
                                                                        tmp_path: Path) -> None:
    """libpq quotes a token it cannot parse, password and all, and psycopg.pool logs that on every try; a
    wrong password was reported as 'pool initialization incomplete after 5.0 sec'."""
    database = team_db.rsplit("/", 1)[1]
    for password, reason in (("WrongPw99", "password authentication failed"),
                             ("50%off-Secret", "percent-encoded"), ("Wr%6Fng%21Pw", "password authentication failed")):
        dsn = pg_cluster.dsn(database, user=alice, password=password)
        check = sam_bridge(tmp_path, "team", "check", database=dsn)
        status = sam_bridge(tmp_path, "status", "--team", database=dsn)
        run = sam_bridge(tmp_path, "run", "--local", "--no-osc", "--no-hot-folder", database=dsn)
        log = tmp_path / "state" / "logs" / "daemon.log"
        shown = "\n".join([check.stdout, check.stderr, status.stdout, status.stderr, run.stdout, run.stderr,
                           log.read_text() if log.exists() else ""])
        for secret in (password, unquote(password), "off-Secret", "Wrong!Pw"):
            assert secret not in shown, f"{secret!r} shown:\n{shown}"
        assert check.returncode == 1 and "FAIL  Cannot connect" in check.stdout and reason in check.stdout
        for result in (status, run):
            assert result.returncode != 0 and reason in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and "pool initialization" not in result.stderr


def test_psycopg_pools_own_log_lines_never_show_the_password(caplog) -> None:
    """The pool logs libpq's error on every reconnection try (after the server went away and came back with
    the password changed, say): its logger masks every form of a journal's password."""
    import logging

    from bridge.common.database import PoolLogMask

    PoolLogMask.guard("postgresql://alice:50%25off%2FSecret@db.local/team")
    logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "pool", 'bad "50%off/Secret"')
    assert "off/Secret" not in caplog.text and "off%2FSecret" not in caplog.text and '"***"' in caplog.text


def test_team_check_reads_a_schema_an_older_sam_bridge_made(team_db: str, tmp_path: Path) -> None:
    """Versions 1 and 2 had no `lease` column: exactly the database `team check` is run on before an update."""
    from bridge.engine.journal.pg_schema import MIGRATIONS

    with psycopg.connect(team_db, autocommit=True) as conn:
        for version in (1, 2):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (2)")
        conn.execute("INSERT INTO daemons (instance, host, pid, version) VALUES ('old-a', 'hostA', 1, '0.9')")
    result = sam_bridge(tmp_path, "team", "check", database=team_db)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert f"Schema version 2: the next daemon started migrates it to {VERSION}" in result.stdout
    assert "Daemons alive: old-a (hostA, lease 30 s)" in result.stdout


def test_a_role_with_ordinary_rights_runs_on_a_schema_an_administrator_made(pg_cluster, alice: str, team_db: str,
                                                                             tmp_path: Path) -> None:
    """PostgreSQL 15 gives an ordinary role no CREATE on schema public: with the tables made (and granted) by
    an administrator a daemon and `status --team` need none. What it lacks is named, never a traceback."""
    from bridge.common.errors import BridgeError

    as_alice = pg_cluster.dsn(team_db.rsplit("/", 1)[1], user=alice, password=ALICE_PASSWORD)
    with pytest.raises(BridgeError) as caught:  # an empty database: alice cannot create the schema
        PostgresJournal(as_alice, "studio-a", daemon=True)
    assert "CREATE" in caught.value.message + caught.value.hint and "permission denied" in caught.value.message
    empty = sam_bridge(tmp_path, "team", "check", database=as_alice)
    assert empty.returncode == 1 and "may not create" in empty.stdout, empty.stdout
    PostgresJournal(team_db, "admin", daemon=True).close()  # the administrator starts one daemon first
    with psycopg.connect(team_db, autocommit=True) as conn:
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO alice")
    daemon = PostgresJournal(as_alice, "studio-a", daemon=True)
    job = daemon.add(SeparationRequest(source=tmp_path / "a.wav", prompt="piano"), "piano")
    status = sam_bridge(tmp_path, "status", "--team", database=as_alice)
    assert status.returncode == 0 and job in status.stdout, status.stdout + status.stderr
    check = sam_bridge(tmp_path, "team", "check", database=as_alice)
    assert check.returncode == 0 and "FAIL" not in check.stdout, check.stdout
    daemon.close()
    with psycopg.connect(team_db, autocommit=True) as conn:
        conn.execute("REVOKE ALL ON jobs, history FROM alice")
    refused = sam_bridge(tmp_path, "status", "--team", database=as_alice)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "permission denied for table" in refused.stderr and "GRANT" in refused.stderr
    lacking = sam_bridge(tmp_path, "team", "check", database=as_alice)
    assert lacking.returncode == 1 and "FAIL" in lacking.stdout and "history, jobs" in lacking.stdout, lacking.stdout
