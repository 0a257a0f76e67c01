"""The team journal on PostgreSQL: several daemons (workstations) share jobs, claims, dedupe and the budget.

Each daemon is an *instance* (a name unique in the team) and owns the jobs it added. It heartbeats its
lease in `daemons`, and writes its length there: every daemon, `status --team` and `team check` judge a
daemon by its own lease, whatever theirs is. When a lease expires (the machine died) another daemon adopts
the unfinished jobs with
`FOR UPDATE SKIP LOCKED`, so each goes to exactly one. `mark_submitting` locks the job row and checks the
owner, so of a taker and a late original exactly one submits. Times that decide leases are the database's
own (`now()`), so the machines' clocks may disagree.

While the database is unreachable every journal call waits (and says so once): jobs pause at their next
journal write, nothing new is claimed, and all carry on when it is back. A server that goes silent (its host
lost, the network cut) is unreachable too: the heartbeat's wait for it ends within `statement_bound(lease)`,
and the kernel drops every connection whose peer stopped acknowledging (deadline.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from bridge import __version__
from bridge.common.claims import ClaimBackend
from bridge.common.database import PoolLogMask, mask_password, redact
from bridge.common.errors import BridgeError
from bridge.common.jobs import JobState
from bridge.common.processes import pid_space, process_alive
from bridge.common.request import SeparationRequest
from bridge.engine.journal.base import (
    FINISHED,
    JobJournal,
    JobRow,
    JobTakenOver,
    Row,
    Tx,
    job_row,
    state_columns,
)
from bridge.engine.journal.deadline import (
    POOL_TCP_BOUND,
    BoundedConnection,
    bound_on_server,
    statement_bound,
    tcp_parameters,
)
from bridge.engine.journal.pg_schema import ALIVE, BUDGET_LOCK, LEASE_OF_ROW, migrate

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class InstanceInUse(BridgeError):
    exit_code = 3
    holder_pid = 0  # the process the row names


class _PgTx:
    """Runs the shared `?` SQL on a psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Row], counter: Callable[[int], None]) -> None:
        self.conn, self._count = conn, counter

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Row]:
        self._count(1)
        return self.conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


def _waits_for_database(method: F) -> F:
    """Retry a journal call while the database is unreachable (it restarts, the network drops).

    A retried write may have been committed already (the connection broke after the server committed,
    before its answer came), so every write is idempotent: absolute values, upserts, `ON CONFLICT DO
    NOTHING` on ids made before the first try (a job's id), history rows only on a real state change, the
    budget kept as the job's own reservation, a takeover tagged with an id of its own (`_take`)."""

    @wraps(method)
    def call(self: PostgresJournal, *args: Any, **kwargs: Any) -> Any:
        return self._waiting(lambda: method(self, *args, **kwargs))

    return call  # type: ignore[return-value]


class PostgresJournal(JobJournal):
    team = True

    def __init__(self, dsn: str, instance: str = "", *, lease: float = 30.0, daemon: bool = False,
                 pool_size: int = 8, connect_timeout: float = 5.0) -> None:
        self.where = redact(dsn)
        self._dsn, self._connect_timeout = dsn, max(1, int(connect_timeout))
        self.instance = instance
        self.lease = lease
        self.daemon = daemon  # heartbeats and owns jobs; the CLI (status, retry) only reads and steers
        self.statements = 0  # sent to the server (BEGIN and COMMIT included): the benchmark's round trips
        self._count_lock = threading.Lock()
        self._closed = False
        self._down_since: float | None = None
        self._healthy_since = time.monotonic()
        self._outage_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.statement_bound = statement_bound(lease)  # every wait for the server ends within it
        self._tcp = tcp_parameters(dsn, self.statement_bound)
        PoolLogMask.guard(dsn)
        # The pool's statements are not bounded: a lock wait (another daemon's transaction, a
        # migration, a report) is no outage, and a cut statement would go on running on the server.
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(connect_timeout)),
                    "application_name": f"sam-bridge {instance}"[:63],
                    **tcp_parameters(dsn, max(self.statement_bound, POOL_TCP_BOUND))},
            name="sam-bridge-journal", reconnect_timeout=0)
        try:
            self._setup()
        except BaseException as exc:
            self._pool.close()
            if isinstance(exc, psycopg.Error):
                raise self._refused(exc) from None
            raise
        if daemon:
            self._heartbeat = threading.Thread(target=self._beat, name="journal-heartbeat", daemon=True)
            self._heartbeat.start()

    # -- connection ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        try:
            self._connect_once()  # a wrong password or DSN fails at once, in libpq's words (masked)
        except psycopg.ProgrammingError as exc:  # libpq could not parse the DSN: nothing reached the server
            raise BridgeError(f"The team database address {self.where} is not valid: {self._reason(exc)}",
                              hint="Check `database:` in the config (or SAM_BRIDGE_DATABASE); a password with "
                              "%, @, : or / in a postgresql:// URL needs them percent-encoded (%25, %40, %3A, "
                              "%2F).") from None
        self._pool.open(wait=True, timeout=self._connect_timeout)
        self._migrate()
        if self.daemon:
            self._register()

    def _refused(self, exc: psycopg.Error) -> BridgeError:
        """A database error as words: unreachable, a right this role lacks, or what the server said."""
        if isinstance(exc, psycopg.OperationalError):
            return BridgeError(f"Cannot reach the team database {self.where}: {self._reason(exc)}",
                               hint="Check `database:` in the config (or SAM_BRIDGE_DATABASE) and that the "
                               "server runs; `sam-bridge team check` tests the connection.")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return BridgeError(f"The team database {self.where} refused this role: {self._reason(exc)}.",
                               hint="Have an administrator grant it the rights on sam-bridge's tables: GRANT "
                               "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO <role>; "
                               "`sam-bridge team check` names what it lacks.")
        return BridgeError(f"The team database {self.where} refused: {self._reason(exc)}",
                           hint="`sam-bridge team check` tests the connection, the schema and this role's rights.")

    def _connect_once(self) -> None:
        psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout).close()

    def _reason(self, exc: Exception) -> str:
        """What went wrong, in libpq's words with the password masked: a pool that timed out says only
        that it did ('couldn't get a connection after 5.0 sec'), so one direct connection tells why."""
        if isinstance(exc, PoolTimeout):
            try:
                self._connect_once()
            except psycopg.Error as direct:
                exc = direct
        return mask_password(_first_line(exc), self._dsn)

    def _counted(self, n: int) -> None:
        with self._count_lock:
            self.statements += n

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction():
            self._counted(2)  # BEGIN, COMMIT
            yield _PgTx(conn, self._counted)  # type: ignore[misc]

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._pool.connection() as conn:
            return list(_PgTx(conn, self._counted).execute(sql, params).fetchall())

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._pool.connection() as conn:
            _PgTx(conn, self._counted).execute(sql, params)

    def _waiting(self, attempt: Callable[[], T]) -> T:
        while True:
            try:
                result = attempt()
            except psycopg.errors.InsufficientPrivilege as exc:  # a right taken away: words, not a traceback
                raise self._refused(exc) from None
            except psycopg.OperationalError as exc:
                if self._closed:
                    raise
                if not self.daemon:  # `sam-bridge status`, `retry`…: say so now rather than wait
                    raise BridgeError(f"The team database {self.where} is unreachable: {self._reason(exc)}",
                                      hint="`sam-bridge team check` tests the connection.") from None
                self._outage(exc)
                continue
            self._back()
            return result

    def _outage(self, exc: Exception) -> None:
        with self._outage_lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("The team database %s is unreachable (%s): pausing, no new work is taken until it "
                            "is back", self.where, mask_password(_first_line(exc), self._dsn))
        time.sleep(0.5)

    def _back(self) -> None:
        if self._down_since is None:
            return
        with self._outage_lock:
            if self._down_since is not None:
                log.warning("The team database is back after %.0f s: carrying on",
                            time.monotonic() - self._down_since)
                self._down_since = None
                self._healthy_since = time.monotonic()

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
        if self.daemon:
            try:  # a clean stop: the others may take this daemon's unfinished jobs at once
                self._write("UPDATE daemons SET stopped=true WHERE instance=%s", (self.instance,))
            except psycopg.Error as exc:
                log.info("could not mark this daemon stopped in the team database: %s",
                         mask_password(_first_line(exc), self._dsn))
        self._closed = True
        self._pool.close()

    # -- schema -------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        migrate(self._tx, self.where, may_migrate=self.daemon, reason=self._reason)

    def schema_version(self) -> int:
        return int(self._read("SELECT MAX(version) AS v FROM schema_version")[0]["v"] or 0)

    # -- leases -------------------------------------------------------------------------------------

    def _register(self) -> None:
        """Take this instance's row; refuse while a live daemon that is not provably ended holds the name.
        A live row of this host whose pid cannot be judged here (no pid space: Windows, or written by an
        older version) may be this machine's own run that crashed a moment ago (a service restarting it):
        its lease is waited out once, and only a heartbeat renewed meanwhile refuses the name."""
        waited = False
        while True:
            refused = self._register_once()
            if refused is None:
                return
            error, silent, lease, maybe_ours = refused
            if waited or not maybe_ours:
                raise error
            wait = max(0.0, lease - silent) + 1.0
            log.warning("instance %s: its row was renewed %.0f s ago by process %s of this host, which cannot be "
                        "told apart from this machine's own crashed run; waiting %.0f s for its lease to run out",
                        self.instance, silent, error.holder_pid, wait)
            time.sleep(wait)
            waited = True

    def _register_once(self) -> tuple[InstanceInUse, float, float, bool] | None:
        """None when the row is taken; else the refusal, the row's silence and lease, and whether it may be
        this host's own crashed run (see _register)."""
        host, pid, space = socket.gethostname(), os.getpid(), pid_space()
        with self._tx() as tx:
            row = tx.execute(
                "SELECT host, pid, pid_space, EXTRACT(EPOCH FROM now() - heartbeat) AS silent, "
                "COALESCE(lease, ?) AS lease, NOT stopped AND heartbeat >= now() - "
                "make_interval(secs => COALESCE(lease, ?)) AS alive FROM daemons WHERE instance=? FOR UPDATE",
                (self.lease, self.lease, self.instance)).fetchone()
            # a pid is judged only in its own pid space (this boot, this pid namespace): a restart after a
            # crash here is welcome at once; another machine's row waits out its lease, whatever its host name
            ours = space is not None and row is not None and row["pid_space"] == space and row["host"] == host
            if row and row["alive"] and not (ours and (row["pid"] == pid or not process_alive(row["pid"]))):
                unjudged = row["host"] == host and (space is None or row["pid_space"] is None)
                error = InstanceInUse(
                    f"Another sam-bridge runs as instance “{self.instance}” on {row['host']} (process "
                    f"{row['pid']}, heard from {float(row['silent']):.0f} s ago); each daemon of a team needs a "
                    "name of its own.",
                    hint="Set a distinct `instance:` in this machine's config (machines with the same host name "
                         "and state folder get the same default name), or stop the other daemon. If it ended "
                         f"without stopping, the name is free once its lease ({float(row['lease']):g} s) runs out.")
                error.holder_pid = int(row["pid"])
                return error, float(row["silent"]), float(row["lease"]), unjudged
            tx.execute(
                "INSERT INTO daemons (instance, host, pid, version, lease, pid_space) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT (instance) DO UPDATE SET host=excluded.host, pid=excluded.pid, "
                "version=excluded.version, started=now(), heartbeat=now(), stopped=false, lease=excluded.lease, "
                "pid_space=excluded.pid_space",
                (self.instance, host, pid, __version__, self.lease, space))
        return None

    def _beat(self) -> None:
        """Renew the lease on a connection of its own: after a database outage the pool may hand out
        connections only seconds later (a caller waits its timeout), longer than a lease, and the others
        would take this live daemon's jobs meanwhile. A renewal the server does not answer within the
        statement bound is an outage too (said, its connection dropped); after a failed one the next try
        comes after the outage's pause rather than a full interval, so it may still renew in time."""
        interval = max(0.2, self.lease / 3)
        pause = interval
        conn: BoundedConnection | None = None
        try:
            while not self._stop.wait(pause):
                try:
                    if conn is None or conn.closed:
                        conn = BoundedConnection.connect(
                            self._dsn, autocommit=True, connect_timeout=self._connect_timeout,
                            application_name=f"sam-bridge {self.instance} heartbeat"[:63], **self._tcp)
                        conn.bound = self.statement_bound  # (the SET below is bounded too)
                        bound_on_server(conn, self.statement_bound)
                    self._counted(1)
                    conn.execute("UPDATE daemons SET heartbeat=now(), stopped=false WHERE instance=%s",
                                 (self.instance,))
                except psycopg.OperationalError as exc:
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._outage(exc)  # (it pauses 0.5 s)
                    pause = 0.0
                    continue
                except Exception as exc:  # never a silent end of the heartbeat: the others would take its jobs
                    log.error("Team heartbeat of %s failed: %s", self.instance, exc, exc_info=True)
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                pause = interval
                self._back()
        finally:
            if conn is not None:
                conn.close()

    def _owner(self) -> str:
        return self.instance

    def _check_owner(self, job_id: str, row: Row | None) -> None:
        if self.daemon and row is not None and row["owner"] != self.instance:
            raise JobTakenOver(f"job {job_id} was taken over by {row['owner']}")

    def set_state(self, job_id: str, state: JobState, progress: float | None = None, message: str = "",
                  **fields: Any) -> None:
        """The base class's read, update and history row as one statement: one round trip, not five."""
        now = time.time()
        columns = state_columns(state, now, progress, message, fields)
        message = columns["message"]
        assignments = ", ".join(f"{name}=%s" for name in columns)
        rows = self._read(
            "WITH prev AS (SELECT state, owner FROM jobs WHERE id=%s FOR UPDATE), "
            f"upd AS (UPDATE jobs SET {assignments} WHERE id=%s AND (NOT %s OR owner=%s) RETURNING 1), "
            "hist AS (INSERT INTO history SELECT %s, %s, %s, %s FROM prev "
            "WHERE prev.state <> %s AND EXISTS (SELECT 1 FROM upd)) SELECT owner FROM prev",
            (job_id, *columns.values(), job_id, self.daemon, self.instance, job_id, now, state.value, message,
             state.value))
        if rows:
            self._check_owner(job_id, rows[0])

    def _lock_job_sql(self) -> str:
        return "SELECT state, owner FROM jobs WHERE id=? FOR UPDATE"

    def mark_submitting(self, job_id: str, step: int) -> None:
        """The base class's lock, owner check and upsert as one statement (one round trip, not four, right
        before the submit): the row lock orders it against a takeover, so exactly one daemon submits."""
        rows = self._read(
            "WITH prev AS (SELECT owner FROM jobs WHERE id=? FOR UPDATE), "
            "ins AS (INSERT INTO steps (job_id, step, state, handle, updated) SELECT ?, ?, 'submitting', NULL, ? "
            "FROM prev WHERE NOT ? OR prev.owner = ? ON CONFLICT (job_id, step) DO UPDATE SET "
            "state=excluded.state, handle=excluded.handle, updated=excluded.updated RETURNING 1) "
            "SELECT owner FROM prev",
            (job_id, job_id, step, time.time(), self.daemon, self.instance))
        if rows:
            self._check_owner(job_id, rows[0])

    def _insert_job(self, job_id: str, request: SeparationRequest, what: str, now: float) -> None:
        """The job and its first history row in one statement; a retry whose first try was committed (its
        answer lost) finds the id taken and adds neither again."""
        self._write(
            "WITH job AS (INSERT INTO jobs (id, created, updated, state, message, request, source, what, tag, "
            "origin, idempotency_key, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING "
            "RETURNING id) INSERT INTO history SELECT id, ?, ?, ? FROM job",
            (job_id, now, now, JobState.queued.value, "Waiting for a free slot", request.model_dump_json(),
             str(request.source), what, request.tag, request.origin.value, request.idempotency_key, self.instance,
             now, JobState.queued.value, "queued"))

    def adopt_orphans(self, limit: int, reachable: Callable[[JobRow], bool] | None = None) -> list[JobRow]:
        """Unfinished jobs of daemons whose lease expired become this one's, each daemon judged by its own
        lease. Every heartbeat stops while the database is unreachable, so a daemon first gets one lease of
        its own to renew after the server (re)started and after this daemon's own outage ended (its view of
        the outage may have missed a restart: its calls waited for the pool instead). A job whose folders
        this machine cannot reach (`reachable`) is left for a daemon that can, and its message says so."""
        healthy_for = time.monotonic() - self._healthy_since
        if not self.daemon or healthy_for < 1.0:  # 1 s: the shortest lease there is
            return []
        finished = ",".join(["?"] * len(FINISHED))
        lease = LEASE_OF_ROW.replace("%s", "?")
        may_renew = (f"SELECT instance FROM daemons WHERE NOT stopped AND (heartbeat >= now() - {lease} OR "
                     f"pg_postmaster_start_time() >= now() - {lease} OR COALESCE(lease, ?) > ?)")
        return self._take(f"state NOT IN ({finished}) AND owner NOT IN ({may_renew})",
                          (*FINISHED, self.lease, self.lease, self.lease, healthy_for), limit, reachable,
                          "whose lease expired")

    def take_queued(self, limit: int, reachable: Callable[[JobRow], bool] | None = None) -> list[JobRow]:
        """The oldest hot-folder jobs other daemons claimed ahead of a free slot and have not started: the
        first state change of a job checks its owner under the row lock, so a job is started by exactly one
        daemon. (A request file's job stays with the daemon that writes its status file.)"""
        if not self.daemon:
            return []
        return self._take("state = 'queued' AND origin = 'hot-folder' AND cancel_requested = 0 AND NOT EXISTS "
                          "(SELECT 1 FROM steps s WHERE s.job_id = jobs.id)", (), limit, reachable, "")

    def _take(self, where: str, params: tuple[Any, ...], limit: int, reachable: Callable[[JobRow], bool] | None,
              why: str) -> list[JobRow]:
        """Jobs matching `where` become this daemon's, tagged with this takeover's own id: when the database
        answer to its COMMIT is lost, the retry hands over the jobs it took rather than none."""
        take_id, tries = uuid.uuid4().hex, itertools.count()
        return self._waiting(lambda: self._take_once(where, params, limit, reachable, why, take_id,
                                                     retried=next(tries) > 0))

    def _take_once(self, where: str, params: tuple[Any, ...], limit: int,
                   reachable: Callable[[JobRow], bool] | None, why: str, take_id: str, retried: bool) -> list[JobRow]:
        taken: list[JobRow] = []
        with self._tx() as tx:
            if retried and (done := tx.execute("SELECT * FROM jobs WHERE owner=? AND take_id=?",
                                               (self.instance, take_id)).fetchall()):
                log.info("The takeover of %d job(s) was committed before the database connection broke",
                         len(done))
                return [job_row(row) for row in done]
            rows = tx.execute(f"SELECT * FROM jobs WHERE {where} AND owner <> ? ORDER BY created LIMIT ? "
                              "FOR UPDATE SKIP LOCKED", (*params, self.instance, limit)).fetchall()
            for row in rows:
                job = job_row(row)
                if reachable is not None and not reachable(job):
                    if why:  # a dead daemon's job: say why it waits
                        text = (f"Waiting for a sam-bridge that can reach {job.request.source.parent} "
                                f"({self.instance} cannot)")
                        if row["message"] != text:
                            log.warning("Job %s: %s", job.view.job_id, text)
                            tx.execute("UPDATE jobs SET message=? WHERE id=?", (text, job.view.job_id))
                    continue
                if why:
                    log.warning("Taking over job %s (%s) from %s, %s", job.view.job_id, job.view.state.value,
                                job.owner, why)
                else:
                    log.info("Taking job %s from %s, which has not started it (this daemon has a free slot)",
                             job.view.job_id, job.owner)
                taken.append(job_row({**row, "owner": self.instance}))
            if taken:  # one statement for all of them
                tx.execute("UPDATE jobs SET owner=?, take_id=? WHERE id = ANY(?)",
                           (self.instance, take_id, [job.view.job_id for job in taken]))
        return taken

    # -- team-wide dedupe and budget ----------------------------------------------------------------

    def active_leader(self, job_id: str, key: str) -> str | None:
        """The first job with this dedupe key leads; later ones wait while it is unfinished (they reuse
        its stems then), and take the lead when it failed or was cancelled."""
        with self._tx() as tx:
            tx.execute("UPDATE jobs SET dedupe_key=? WHERE id=?", (key, job_id))
            tx.execute("INSERT INTO dedupe_leaders (key, job_id) VALUES (?,?) ON CONFLICT (key) DO NOTHING",
                       (key, job_id))
            row = tx.execute("SELECT l.job_id, j.state FROM dedupe_leaders l LEFT JOIN jobs j ON j.id=l.job_id "
                             "WHERE l.key=? FOR UPDATE OF l", (key,)).fetchone()
            if row["job_id"] == job_id:
                return None
            if row["state"] is not None and row["state"] not in FINISHED:
                return str(row["job_id"])
            tx.execute("UPDATE dedupe_leaders SET job_id=? WHERE key=?", (job_id, key))
        return None

    @contextmanager
    def _budget_tx(self) -> Iterator[Tx]:
        with self._tx() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (BUDGET_LOCK,))  # one reservation at a time, team-wide
            yield tx

    def claims(self, instance_id: str, limit: int | None = None) -> ClaimBackend | None:
        from bridge.engine.journal.claims_pg import DatabaseClaims

        return DatabaseClaims(self, self.instance or instance_id, limit)

    def read_waiting(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._read(sql, params)

    def write_waiting(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._write(sql, params)

    # -- the team's view (`sam-bridge status --team`, `team check`) ---------------------------------

    def team_daemons(self) -> list[Row]:
        return self._read(
            "SELECT instance, host, pid, version, stopped, EXTRACT(EPOCH FROM now() - heartbeat) AS silent, "
            "COALESCE(lease, ?) AS lease, "
            f"instance IN ({ALIVE}) AS alive FROM daemons ORDER BY instance", (self.lease, self.lease))

    def team_jobs(self, active_only: bool, limit: int = 200) -> list[JobRow]:
        if active_only:
            finished = ",".join("?" * len(FINISHED))
            rows = self._read(f"SELECT * FROM jobs WHERE state NOT IN ({finished}) ORDER BY created", FINISHED)
        else:
            rows = self._read("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
        return [job_row(row) for row in rows]

    def clock_skew(self) -> float:
        """This machine's clock minus the database's, in seconds (round trip halved)."""
        before = time.time()
        server = float(self._read("SELECT EXTRACT(EPOCH FROM clock_timestamp()) AS t")[0]["t"])
        after = time.time()
        return (before + after) / 2 - server


for _name in ("_insert_job", "set_state", "update_progress", "set_fields", "mark_submitting", "mark_submitted",
              "clear_steps", "unmark_submitting", "clear_uncertain", "reserve_budget", "handles", "get",
              "find_prefix", "by_idempotency_key", "done_with_dedupe_key", "unfinished", "recent", "spent_since",
              "active_leader", "read_waiting", "write_waiting", "schema_version", "team_daemons", "team_jobs",
              "clock_skew"):
    setattr(PostgresJournal, _name, _waits_for_database(getattr(PostgresJournal, _name)))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
