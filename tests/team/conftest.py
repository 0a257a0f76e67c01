"""Team tests run against a real PostgreSQL server: one throwaway cluster per test session (per xdist
worker), a fresh database per test. Without PostgreSQL's binaries they skip and say why (CI installs them)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.team.pg_cluster import PgCluster, find_bin_dir


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): install Debian's "
                    "`postgresql` package to run the team tests")
    cluster = PgCluster(bin_dir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def team_db(pg_cluster: PgCluster) -> str:
    """The DSN of an empty database of this test's own."""
    return pg_cluster.new_database()


ALICE_PASSWORD = "S3cretPw-alice"


@pytest.fixture(scope="session")
def alice(pg_cluster: PgCluster) -> str:
    """A role with a password the server checks (the others log in by trust) and no more rights than
    PostgreSQL gives any role: on 15 and later, no CREATE on schema public. Returns its name."""
    hba = pg_cluster.data / "pg_hba.conf"
    hba.write_text("host all alice 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE alice LOGIN PASSWORD '{ALICE_PASSWORD}'")
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the reload takes effect at once, but asynchronously
        try:
            psycopg.connect(pg_cluster.dsn(user="alice", password="not-it"), connect_timeout=2).close()
        except psycopg.OperationalError:
            break
        time.sleep(0.05)
    return "alice"
