"""A bound on the heartbeat's wait for the team database: a silent server becomes an ordinary connection error.

A peer that stops answering while the kernel keeps the connection open (the server's host lost, a cable
pulled, a NAT that dropped the connection's state, a frozen server) leaves libpq waiting for an answer
forever: psycopg has no client-side statement timeout, and the server's `statement_timeout` cannot help
when the server never sees the statement. What is bounded, and how:

- Every connection (the pool's, the heartbeat's, `team check`'s), by the kernel, for real network loss:
  libpq's connection parameters `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_count`
  (seconds) and `tcp_user_timeout` (milliseconds, libpq 12 and later; Linux only) make the OS drop a
  connection whose peer stopped acknowledging (PostgreSQL docs, libpq, "Parameter Key Words"). Only those
  this libpq knows (`psycopg.pq.Conninfo.get_defaults()`) and the address does not set are added. They never
  fire while the peer's kernel still acknowledges (a frozen server process).
- The heartbeat and `team check`, whatever the kernel does: psycopg runs every exchange with the server
  through `Connection.wait` (psycopg/connection.py), which `BoundedConnection` times; a `Watchdog` thread
  shuts the connection's socket (`pgconn.socket`, psycopg.pq's documented file descriptor) down when a wait
  outlasts the bound. The blocked wait wakes at end of file, libpq fails, and the caller gets `NoAnswer` (a
  psycopg.OperationalError): the heartbeat says the database is unreachable and connects anew. Before that,
  the server ends a statement of theirs that waits for a lock itself (`bound_on_server`).
- Not the pool's statements: those of jobs wait for locks legitimately (another daemon's transaction, a
  migration, a report), and a statement cut on the client goes on running on the server (it would be
  applied after the caller was told it failed, and each retry would leave one more server process).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict

RV = TypeVar("RV")

MIN_BOUND = 1.0  # the shortest lease there is; shorter, a busy machine's pause would pass for an outage
MAX_BOUND = 10.0  # every statement sam-bridge sends takes milliseconds, or waits briefly for another daemon's lock
TICK = 0.25  # how often the watchdog looks: a silent server is cut within bound + TICK


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
    daemon's transaction) is ended by the server itself before the watchdog's bound, as an ordinary error
    (QueryCanceled), rolled back, so nothing runs on after the client gave up and connections do not pile up
    (PostgreSQL docs, "Client Connection Defaults": statement_timeout). The watchdog is left for a server
    that does not answer at all. A SET, not a startup option: poolers such as PgBouncer refuse `options`."""
    conn.execute(f"SET statement_timeout = {max(100, int(bound * 800))}")  # 0.8 × the bound, in ms


class NoAnswer(psycopg.OperationalError):
    """The server did not answer within the bound: its connection was closed."""


class Watchdog:
    """Shuts down the socket of a connection whose wait for the server has lasted `bound` seconds."""

    def __init__(self, bound: float, name: str = "journal-watchdog") -> None:
        self.bound = bound
        self._waits: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._cut: set[int] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._thread.start()

    def watch(self, conn: psycopg.Connection[Any]) -> None:
        """Bound every wait of `conn` (a BoundedConnection)."""
        if isinstance(conn, BoundedConnection):
            conn.watchdog = self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def start(self, conn: psycopg.Connection[Any]) -> int:
        key = next(self._ids)
        with self._lock:
            self._waits[key] = (time.monotonic() + self.bound, conn)
        return key

    def end(self, key: int) -> bool:
        """The wait `key` is over; True when it was cut."""
        with self._lock:
            self._waits.pop(key, None)
            if key in self._cut:
                self._cut.discard(key)
                return True
            return False

    def _watch(self) -> None:
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:  # held while cutting: a wait still listed has not ended, so its socket is its own
                for key in [key for key, (deadline, _) in self._waits.items() if deadline <= now]:
                    _, conn = self._waits.pop(key)
                    self._cut.add(key)
                    _shut_down(conn)


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Both directions of the socket end: a blocked wait on it wakes with end of file (Linux, macOS,
    Windows). The socket object only borrows libpq's descriptor (detached, never closed here)."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends within its watchdog's bound (none set:
    unbounded), as a `NoAnswer`."""

    watchdog: Watchdog | None = None

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        watchdog = self.watchdog
        if watchdog is None:
            return super().wait(gen, *args, **kwargs)
        key = watchdog.start(self)
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError as exc:
            if watchdog.end(key):
                raise NoAnswer(f"no answer from the server within {watchdog.bound:g} s") from exc
            raise
        finally:
            watchdog.end(key)
