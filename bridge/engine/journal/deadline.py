"""A bound on the heartbeat's wait for the team database: a silent server becomes an ordinary connection error.

A peer that stops answering while the kernel keeps the connection open (the server's host lost, a cable
pulled, a NAT that dropped the connection's state, a frozen server) leaves libpq waiting for an answer
forever: psycopg has no client-side statement timeout, and the server's `statement_timeout` cannot help
when the server never sees the statement. What is bounded, and how:

- Every connection (the pool's after POOL_TCP_BOUND, the heartbeat's, `team check`'s), by the kernel, for
  real network loss:
  libpq's connection parameters `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_count`
  (seconds) and `tcp_user_timeout` (milliseconds, libpq 12 and later; Linux only) make the OS drop a
  connection whose peer stopped acknowledging (PostgreSQL docs, libpq, "Parameter Key Words"). Only those
  this libpq knows (`psycopg.pq.Conninfo.get_defaults()`) and the address does not set are added. They never
  fire while the peer's kernel still acknowledges (a frozen server process).
- The heartbeat and `team check`, whatever the kernel does: psycopg runs every exchange with the server
  through `Connection.wait` (psycopg/connection.py), whose own `timeout` (a select with a deadline,
  psycopg/waiting.py: every platform) `BoundedConnection` sets to the bound. A wait that outlasts it closes
  the connection and raises `NoAnswer` (a psycopg.OperationalError): the heartbeat says the database is
  unreachable and connects anew. Before that, the server ends a statement of theirs that waits for a lock
  itself (`bound_on_server`).
- Not the pool's statements: those of jobs wait for locks legitimately (another daemon's transaction, a
  migration, a report), and a statement cut on the client goes on running on the server (it would be
  applied after the caller was told it failed, and each retry would leave one more server process).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

import psycopg
from psycopg import errors, pq
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict

RV = TypeVar("RV")

MIN_BOUND = 1.0  # the shortest lease there is; shorter, a busy machine's pause would pass for an outage
POOL_TCP_BOUND = 30.0  # the kernel's bound on the pool: a Wi-Fi drop of a few seconds cuts no job's statement
MAX_BOUND = 10.0  # every statement sam-bridge sends takes milliseconds, or waits briefly for another daemon's lock


def statement_bound(lease: float) -> float:
    """A third of the lease, within 1–10 s. The heartbeat renews every third of the lease: a renewal that
    hangs is given up at two thirds, and the next try (on a new connection) still comes before the lease
    runs out (leases of 3 s and more), so a daemon whose path to the database came back keeps its jobs, and
    one whose path did not says so (and pauses) before the others take its jobs over."""
    return min(MAX_BOUND, max(MIN_BOUND, lease / 3))


def tcp_parameters(dsn: str, bound: float) -> dict[str, Any]:
    """libpq's TCP settings for `bound`: an idle connection is probed after `bound` s, then every third of
    it, and dropped after 3 lost probes; data unacknowledged for `bound` s drops it too."""
    seconds = max(1, round(bound))
    wanted = {"keepalives": 1, "keepalives_idle": seconds, "keepalives_interval": max(1, seconds // 3),
              "keepalives_count": 3, "tcp_user_timeout": int(bound * 1000)}
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error:  # not an address libpq can read: connecting says so, in its words
        return {}
    known = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
    return {name: value for name, value in wanted.items() if name in known and name not in given}


def bound_on_server(conn: psycopg.Connection[Any], bound: float) -> None:
    """The first line, on the server: a statement of `conn` that waits (for a lock: a migration, another
    daemon's transaction) is ended by the server itself before the client's bound, as an ordinary error
    (QueryCanceled), rolled back, so nothing runs on after the client gave up and connections do not pile up
    (PostgreSQL docs, "Client Connection Defaults": statement_timeout). The client's bound is left for a
    server that does not answer at all. A SET, not a startup option: poolers such as PgBouncer refuse `options`."""
    conn.execute(f"SET statement_timeout = {max(100, int(bound * 800))}")  # 0.8 × the bound, in ms


# psycopg's timed wait (`Connection.wait(timeout=)`, raising `errors._WaitTimeout`) is recent: without it a
# wait stays unbounded (the kernel's line only), never an error on every statement
_WAIT_TIMEOUT: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(errors, "_WaitTimeout", None),) if isinstance(error, type))


@functools.cache
def timed_wait() -> bool:
    return bool(_WAIT_TIMEOUT) and "timeout" in inspect.signature(psycopg.Connection.wait).parameters


class NoAnswer(psycopg.OperationalError):
    """The server did not answer within the bound: its connection was closed."""


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends within `bound` seconds (None: unbounded),
    as a `NoAnswer`; the connection is closed then (its exchange with the server was left half-way)."""

    bound: float | None = None

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        if self.bound is None or not timed_wait() or len(args) > 1 or "timeout" in kwargs:  # a caller's own stands
            return super().wait(gen, *args, **kwargs)
        try:
            return super().wait(gen, *args, **{**kwargs, "timeout": self.bound})
        except _WAIT_TIMEOUT:  # psycopg's own timed wait (waiting.py): select with a deadline
            self.pgconn.finish()
            raise NoAnswer(f"no answer from the server within {self.bound:g} s") from None
