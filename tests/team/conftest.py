"""Team tests run against a real PostgreSQL server: one throwaway cluster per test session (per xdist
worker), a fresh database per test. Without PostgreSQL's binaries they skip and say why (CI installs them)."""

from __future__ import annotations

from collections.abc import Iterator

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
