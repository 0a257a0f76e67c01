"""The team database's schema: its migrations, run by a starting daemon under an advisory lock, and the
statements and names the other team modules share (the lease rule, sam-bridge's tables)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg

from bridge.common.errors import BridgeError
from bridge.engine.journal.base import SchemaTooNew, Tx

log = logging.getLogger(__name__)

# version -> statements (run in one transaction, under an advisory lock: daemons starting together wait)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL, progress DOUBLE PRECISION NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
            request TEXT NOT NULL, source TEXT NOT NULL, what TEXT NOT NULL, tag TEXT NOT NULL,
            origin TEXT NOT NULL, idempotency_key TEXT, dedupe_key TEXT, result TEXT, error TEXT,
            flags TEXT NOT NULL DEFAULT '[]', attempts INTEGER NOT NULL DEFAULT 0,
            not_before DOUBLE PRECISION NOT NULL DEFAULT 0, cost DOUBLE PRECISION NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0, source_hash TEXT,
            forgotten_cost DOUBLE PRECISION NOT NULL DEFAULT 0, owner TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX jobs_idem ON jobs(idempotency_key)",
        "CREATE INDEX jobs_dedupe ON jobs(dedupe_key, state)",
        "CREATE INDEX jobs_owner_state ON jobs(owner, state)",
        "CREATE INDEX jobs_created ON jobs(created)",
        """CREATE TABLE steps (job_id TEXT NOT NULL, step INTEGER NOT NULL, state TEXT NOT NULL, handle TEXT,
            updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, step))""",
        """CREATE TABLE history (job_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL,
            message TEXT NOT NULL)""",
        """CREATE TABLE daemons (instance TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            version TEXT NOT NULL, started TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(), stopped BOOLEAN NOT NULL DEFAULT false)""",
        """CREATE TABLE claims (key TEXT PRIMARY KEY, source TEXT NOT NULL, owner TEXT NOT NULL,
            host TEXT NOT NULL, state TEXT NOT NULL, generation INTEGER NOT NULL,
            claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(), changed_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        "CREATE TABLE dedupe_leaders (key TEXT PRIMARY KEY, job_id TEXT NOT NULL)",
    ),
    # which takeover made a job this daemon's: a takeover retried after its COMMIT's answer was lost finds
    # the jobs it took already, instead of none (they would stay unfinished under a live daemon)
    2: ("ALTER TABLE jobs ADD COLUMN take_id TEXT",),
    # each daemon's own lease: the others judge it by that, not by theirs (a machine configured with a
    # shorter lease took a live daemon's jobs between its heartbeats; one with a longer lease waited for a dead one)
    3: ("ALTER TABLE daemons ADD COLUMN lease DOUBLE PRECISION",),
    # where a daemon's pid means something (processes.pid_space): a live name was taken over when its row's
    # host name matched and its pid was not alive HERE, so a second machine of the same host name (cloned
    # Macs, VMs) ran as the same instance and submitted the same jobs again
    4: ("ALTER TABLE daemons ADD COLUMN pid_space TEXT",),
}
VERSION = max(MIGRATIONS)
TABLES = ("claims", "daemons", "dedupe_leaders", "history", "jobs", "schema_version", "steps")  # sam-bridge's own
MIGRATION_LOCK = 0x5A3B_0001  # advisory lock ids (any constants unique to sam-bridge)
BUDGET_LOCK = 0x5A3B_0002
# a daemon's lease holds while its heartbeat is younger than its own lease (database clock); the parameter
# is the lease of a daemon that did not say (rows written before schema version 3)
LEASE_OF_ROW = "make_interval(secs => COALESCE(lease, %s))"
ALIVE = f"SELECT instance FROM daemons WHERE NOT stopped AND heartbeat >= now() - {LEASE_OF_ROW}"


def migrate(open_tx: Callable[[], AbstractContextManager[Tx]], where: str, *, may_migrate: bool,
            reason: Callable[[Exception], str]) -> None:
    """Look first, change only what needs it: an ordinary role (PostgreSQL 15 gives none CREATE on schema
    public) runs on a schema its administrator made, so DDL runs only when a migration is due. Only a starting
    daemon (`may_migrate`) migrates; `status`, `retry`… on an older schema are refused."""
    with open_tx() as tx:
        found = found_version(tx, where, may_migrate)
    if found == VERSION:
        return
    try:
        with open_tx() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            found = found_version(tx, where, may_migrate)  # another daemon may have migrated it meanwhile
            if found == VERSION:
                return
            if not found:
                tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            for version in range(found + 1, VERSION + 1):
                for statement in MIGRATIONS[version]:
                    tx.execute(statement)
                log.info("team database %s migrated to schema version %d", where, version)
            tx.execute("DELETE FROM schema_version")
            tx.execute("INSERT INTO schema_version VALUES (?)", (VERSION,))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise BridgeError(
            f"The team database {where} needs " + (f"migrating from schema version {found} to {VERSION}"
                                                   if found else "its sam-bridge schema") +
            f", and this role may not do that: {reason(exc)}.",
            hint="Start one sam-bridge daemon of this version with a role that may (the database's owner: "
                 "CREATE on its schema, and owner of sam-bridge's tables); the others then need only SELECT, "
                 "INSERT, UPDATE, DELETE on the tables.") from None


def found_version(tx: Tx, where: str, may_migrate: bool) -> int:
    """The schema version in the database (0: none yet); raises where this version may not go on."""
    if not tx.execute("SELECT to_regclass('schema_version') IS NOT NULL AS t").fetchone()["t"]:
        found = 0
    else:
        found = int(tx.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()["v"] or 0)
    if found > VERSION:
        raise SchemaTooNew(where, found, VERSION)
    if found < VERSION and not may_migrate:
        raise BridgeError(
            f"The team database {where} has " + (f"schema version {found}" if found else
                                                 "no sam-bridge schema yet") + ".",
            hint="Start a sam-bridge daemon of this version with it: the daemon creates or migrates it.")
    return found
