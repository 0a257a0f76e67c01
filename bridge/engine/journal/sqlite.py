"""The embedded journal: one sqlite file (WAL) in the daemon's state folder, for one workstation.

`sam-bridge status/cancel/retry` open the same file from another process; sqlite's locking makes that safe.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge.common.errors import BridgeError
from bridge.common.stems import disk_full_message
from bridge.engine.journal.base import (
    FINISHED,
    JobJournal,
    JournalDamaged,
    Row,
    SchemaTooNew,
    StateDiskFull,
    Tx,
)
from bridge.engine.journal.guard import GuardedConnection

BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL,
    state TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL, source TEXT NOT NULL, what TEXT NOT NULL, tag TEXT NOT NULL, origin TEXT NOT NULL,
    idempotency_key TEXT, dedupe_key TEXT, result TEXT, error TEXT, flags TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, source_hash TEXT, forgotten_cost REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_idem ON jobs(idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs(dedupe_key, state);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS steps (
    job_id TEXT NOT NULL, step INTEGER NOT NULL, state TEXT NOT NULL, handle TEXT, updated REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS history (
    job_id TEXT NOT NULL, at REAL NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL
);
"""

# columns added before the schema had a version (a journal from then keeps its jobs running)
_UNVERSIONED_COLUMNS = {"source_hash": "TEXT", "forgotten_cost": "REAL NOT NULL DEFAULT 0"}
# version -> statements; version 1 is the schema as it was when versions began
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",),
}
VERSION = max(MIGRATIONS)


class Journal(JobJournal):
    """The sqlite journal. Thread-safe: one connection, serialized by a lock."""

    def __init__(self, path: Path) -> None:
        private_folder(path.parent)
        _create_private(path)  # job messages and requests are the user's business only: 0600
        self.path = path
        self.where = str(path)
        self._lock = threading.RLock()
        # dedupe key -> the job doing that work (see active_leader): one daemon per journal, so memory will do
        self._leaders: dict[str, str] = {}
        raw = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        raw.row_factory = sqlite3.Row
        self._db: sqlite3.Connection | GuardedConnection = raw
        try:
            self._open()  # a file damaged before we start gets the message below
        except sqlite3.OperationalError:  # locked by another process, disk full, …: not a damaged file
            raw.close()
            raise
        except sqlite3.DatabaseError as exc:
            raw.close()
            raise JournalDamaged(
                f"The job journal {path} is damaged or not a sam-bridge journal ({exc}).",
                hint=f"Move it aside (with any {path.name}-wal and {path.name}-shm beside it), e.g. rename it to "
                f"{path.name}.broken: sam-bridge then starts a new, empty journal. The jobs it held are no "
                "longer tracked; check your fal dashboard for requests that were still running.") from None
        except SchemaTooNew:
            raw.close()
            raise
        self._guard = GuardedConnection(raw, self._damage_error)
        self._db = self._guard
        # One descriptor, opened once and closed after sqlite's: closing any other descriptor of this file
        # would drop sqlite's POSIX locks for the whole process (and let another process delete the WAL).
        self._watch_fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._inode = _inode(path)

    def check_file(self) -> None:
        """Is the file on disk still our database? sqlite keeps working on its open file (and its WAL)
        for a while after the file was truncated or replaced, then fails at random: look at the file
        itself (its header, and that it is the same file), cheaply, before taking work."""
        if self._guard.damage == "damaged":
            raise self.damaged_error()
        try:
            same = _inode(self.path) == self._inode
            header = os.pread(self._watch_fd, len(_SQLITE_HEADER), 0) if hasattr(os, "pread") else _SQLITE_HEADER
        except OSError:
            same, header = False, b""
        if header != _SQLITE_HEADER or not same:
            self._guard.damage = "damaged"
            raise self.damaged_error()

    @property
    def damage(self) -> str | None:
        return self._guard.damage

    def _damage_error(self, kind: str, exc: sqlite3.Error) -> BridgeError:
        if kind == "full":
            return StateDiskFull(f"{disk_full_message(self.path.parent, 'the job journal')} ({exc}).",
                                 hint="Free some space there; the job goes on when you retry it.")
        return self.damaged_error()

    def _open(self) -> None:
        """WAL mode, then the migrations this journal has not had yet (in one transaction)."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed request id survives power loss
        with self._tx() as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = tx.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            found = int(row["v"] or 0)
            if found > VERSION:
                raise SchemaTooNew(self.where, found, VERSION)
            if found < 1:
                for statement in filter(str.strip, BASE_SCHEMA.split(";")):
                    tx.execute(statement)
                columns = {r["name"] for r in tx.execute("PRAGMA table_info(jobs)").fetchall()}
                for column, declaration in _UNVERSIONED_COLUMNS.items():
                    if column not in columns:
                        tx.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
            for version in range(max(found, 1) + 1, VERSION + 1):
                for statement in MIGRATIONS[version]:
                    tx.execute(statement)
            if found != VERSION:
                tx.execute("DELETE FROM schema_version")
                tx.execute("INSERT INTO schema_version VALUES (?)", (VERSION,))

    def active_leader(self, job_id: str, key: str) -> str | None:
        """As the team journal: the first job with this dedupe key leads; later ones wait while it is
        unfinished (then reuse its stems) and take the lead when it failed or was cancelled. A double-click
        in the DAW, a request file saved twice or renamed while it ran was paid twice without it."""
        self.set_fields(job_id, dedupe_key=key)
        with self._lock:
            leader = self._leaders.get(key)
            if leader is not None and leader != job_id:
                row = self.get(leader)
                if row is not None and not row.view.state.finished:
                    return leader
            # No live leader known here (none yet, it ended, or a restart emptied this memory): a job already
            # sent for this work leads (one resuming after a restart never asks: it has its requests), else this.
            finished = ",".join("?" * len(FINISHED))
            for other in self._read(f"SELECT id FROM jobs WHERE dedupe_key=? AND id<>? AND state NOT IN ({finished})"
                                    " ORDER BY created", (key, job_id, *FINISHED)):
                if self.handles(other["id"])[0]:
                    self._leaders[key] = other["id"]
                    return str(other["id"])
            self._leaders[key] = job_id
            return None

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db  # type: ignore[misc]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
            with contextlib.suppress(OSError):
                os.close(self._watch_fd)


SqliteJournal = Journal

_SQLITE_HEADER = b"SQLite format 3\x00"


def _inode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def private_folder(folder: Path) -> None:
    """The state folder: created 0700, and tightened if it is open to others (its files name the user's
    audio and hold job errors)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        with contextlib.suppress(OSError):  # not ours to change (a shared mount): the files are still 0600
            if folder.stat().st_mode & 0o077:
                os.chmod(folder, 0o700)


def _create_private(path: Path) -> None:
    """Create the journal 0600 before sqlite opens it (sqlite would use the umask); tighten an old one,
    and its -wal/-shm files, which sqlite creates with the main file's mode."""
    if os.name != "posix":
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            if each.stat().st_mode & 0o077:
                os.chmod(each, 0o600)
