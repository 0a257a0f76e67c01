"""The crash-safe job journal (sqlite, WAL). Every state change is committed BEFORE the action it
protects is reported, so a restart knows exactly what was paid for: a step with a request id is polled,
never submitted again; a step marked `submitting` without one is "may have landed" and needs a person.

`sam-bridge status/cancel/retry` open the same file from another process; sqlite's locking makes that safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.common.errors import BridgeError, OutputError
from bridge.common.jobs import JobState, JobView
from bridge.common.redact import redact
from bridge.common.request import SeparationRequest
from bridge.common.stems import disk_full_message
from bridge.engine.journal_guard import GuardedConnection
from bridge.fal.client import RequestHandle

SCHEMA = """
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

# columns added after the first release, with their declarations
_ADDED_COLUMNS = {"source_hash": "TEXT", "forgotten_cost": "REAL NOT NULL DEFAULT 0"}


@dataclass(frozen=True)
class JobRow:
    view: JobView
    request: SeparationRequest
    idempotency_key: str | None
    dedupe_key: str | None
    attempts: int
    not_before: float
    cost: float
    cancel_requested: bool
    flags: tuple[str, ...]
    source_hash: str | None = None  # sha256 of the audio the job's requests were made from


class JournalDamaged(BridgeError):
    """The journal file is not a (readable) sqlite database."""

    exit_code = 4
    kind = "journal_damaged"


class StateDiskFull(OutputError):
    """The disk holding the state folder (journal, work files) is full."""

    kind = "disk_full"


class Journal:
    def __init__(self, path: Path) -> None:
        private_folder(path.parent)
        _create_private(path)  # job messages and requests are the user's business only: 0600
        self.path = path
        self._lock = threading.RLock()
        raw = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        raw.row_factory = sqlite3.Row
        try:
            self._open(raw)  # a file damaged before we start gets the message below
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
        self._db = GuardedConnection(raw, self._damage_error)
        # One descriptor, opened once and closed after sqlite's: closing any other descriptor of this file
        # would drop sqlite's POSIX locks for the whole process (and let another process delete the WAL).
        self._watch_fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._inode = _inode(path)

    def check_file(self) -> None:
        """Is the file on disk still our database? sqlite keeps working on its open file (and its WAL)
        for a while after the file was truncated or replaced, then fails at random: look at the file
        itself (its header, and that it is the same file), cheaply, before taking work."""
        if self._db.damage == "damaged":
            raise self.damaged_error()
        try:
            same = _inode(self.path) == self._inode
            header = os.pread(self._watch_fd, len(_SQLITE_HEADER), 0) if hasattr(os, "pread") else _SQLITE_HEADER
        except OSError:
            same, header = False, b""
        if header != _SQLITE_HEADER or not same:
            self._db.damage = "damaged"
            raise self.damaged_error()

    @property
    def damage(self) -> str | None:
        """None while healthy; 'damaged' (the file broke while we ran) or 'full' (its disk is full)."""
        return self._db.damage

    def damaged_error(self) -> JournalDamaged:
        return JournalDamaged(
            f"The job journal {self.path} was damaged while sam-bridge ran: it takes no new work and stops.",
            hint="Start sam-bridge again (a service manager does so by itself): it then says how to move the "
            "damaged journal aside.")

    def _damage_error(self, kind: str, exc: sqlite3.Error) -> BridgeError:
        if kind == "full":
            return StateDiskFull(f"{disk_full_message(self.path.parent, 'the job journal')} ({exc}).",
                                 hint="Free some space there; the job goes on when you retry it.")
        return self.damaged_error()

    @staticmethod
    def _open(db: sqlite3.Connection) -> None:
        """WAL mode, the schema, and the columns added since the first release."""
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed request id survives power loss
        db.executescript(SCHEMA)
        columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        for column, declaration in _ADDED_COLUMNS.items():  # a journal from before them (jobs keep running)
            if column not in columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")

    @contextmanager
    def _tx(self) -> Iterator[GuardedConnection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            with contextlib.suppress(OSError):
                os.close(self._watch_fd)

    # -- writes -----------------------------------------------------------------------------------

    def add(self, request: SeparationRequest, what: str) -> str:
        job_id = uuid.uuid4().hex[:12]
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, created, updated, state, message, request, source, what, tag, origin,"
                " idempotency_key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, now, now, JobState.queued.value, "Waiting for a free slot",
                 request.model_dump_json(), str(request.source), what, request.tag, request.origin.value,
                 request.idempotency_key),
            )
            db.execute("INSERT INTO history VALUES (?,?,?,?)", (job_id, now, JobState.queued.value, "queued"))
        return job_id

    def set_state(self, job_id: str, state: JobState, progress: float | None = None, message: str = "",
                  **fields: Any) -> None:
        now = time.time()
        message = redact(message)  # last guard: an error text quoting the key never reaches the file
        columns = {"state": state.value, "updated": now, "message": message, **_redacted(fields)}
        if progress is not None:
            columns["progress"] = progress
        assignments = ", ".join(f"{name}=?" for name in columns)
        with self._tx() as db:
            previous = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*columns.values(), job_id))
            if previous is None or previous["state"] != state.value:
                db.execute("INSERT INTO history VALUES (?,?,?,?)", (job_id, now, state.value, message))

    def update_progress(self, job_id: str, progress: float, message: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET progress=?, message=?, updated=? WHERE id=?",
                       (progress, redact(message), time.time(), job_id))

    def set_fields(self, job_id: str, **fields: Any) -> None:
        fields = _redacted(fields)
        assignments = ", ".join(f"{name}=?" for name in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*fields.values(), job_id))

    def mark_submitting(self, job_id: str, step: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?)",
                       (job_id, step, "submitting", None, time.time()))

    def mark_submitted(self, job_id: str, step: int, handle: RequestHandle) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?)",
                       (job_id, step, "submitted", json.dumps(handle.to_dict()), time.time()))

    def clear_steps(self, job_id: str, from_step: int = 0, step_count: int = 1) -> None:
        """Forget the job's requests from `from_step` on (they failed or were cancelled at the service, or
        their results belong to audio that changed); earlier steps' requests are fetched again, not paid
        again. What forgotten requests cost stays counted against the daily budget."""
        with self._tx() as db:
            paid = db.execute("SELECT COUNT(*) FROM steps WHERE job_id=? AND step>=? AND handle IS NOT NULL",
                              (job_id, from_step)).fetchone()[0]
            if paid and from_step == 0:  # the next attempt reserves its own cost; this one's was spent
                db.execute("UPDATE jobs SET forgotten_cost = forgotten_cost + cost, cost = 0 WHERE id=?",
                           (job_id,))
            elif paid:  # the job keeps its reservation, which covers the steps sent again; their first
                # requests' share of it was spent on top
                db.execute("UPDATE jobs SET forgotten_cost = forgotten_cost + cost * ? / ? WHERE id=?",
                           (paid, max(step_count, 1), job_id))
            db.execute("DELETE FROM steps WHERE job_id=? AND step>=?", (job_id, from_step))

    def unmark_submitting(self, job_id: str, step: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM steps WHERE job_id=? AND step=? AND handle IS NULL", (job_id, step))

    def clear_uncertain(self, job_id: str) -> None:
        """Forget submits whose answer was lost (a person chose to retry); accepted requests stay, so a
        retry fetches their results instead of paying again."""
        with self._tx() as db:
            db.execute("DELETE FROM steps WHERE job_id=? AND handle IS NULL", (job_id,))

    def request_cancel(self, job_id: str) -> None:
        self.set_fields(job_id, cancel_requested=1)

    # -- reads ------------------------------------------------------------------------------------

    def handles(self, job_id: str) -> tuple[dict[int, RequestHandle], list[int]]:
        """(step -> handle of steps fal accepted, steps whose submit may or may not have landed)."""
        with self._lock:
            rows = self._db.execute("SELECT step, state, handle FROM steps WHERE job_id=?", (job_id,)).fetchall()
        accepted = {r["step"]: RequestHandle.from_dict(json.loads(r["handle"])) for r in rows if r["handle"]}
        uncertain = [r["step"] for r in rows if r["state"] == "submitting"]
        return accepted, uncertain

    def get(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _row(row) if row else None

    def find_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE id LIKE ?", (prefix + "%",)).fetchall()
        return [r["id"] for r in rows]

    def by_idempotency_key(self, key: str) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE idempotency_key=? ORDER BY created",
                                    (key,)).fetchall()
        return [_row(r) for r in rows]

    def done_with_dedupe_key(self, key: str) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE dedupe_key=? AND state=? ORDER BY updated DESC",
                                    (key, JobState.done.value)).fetchall()
        return [_row(r) for r in rows]

    def unfinished(self) -> list[JobRow]:
        finished = tuple(s.value for s in JobState if s.finished)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE state NOT IN ({','.join('?' * len(finished))}) ORDER BY created",
                finished).fetchall()
        return [_row(r) for r in rows]

    def recent(self, limit: int = 200, active_only: bool = False) -> list[JobRow]:
        if active_only:
            return self.unfinished()
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_row(r) for r in rows]

    def spent_since(self, since: float, exclude: str = "") -> float:
        """Estimated cost of the jobs created since `since` that reached (or may reach) the service, with the
        requests they made and forgot; `exclude`'s current reservation is left out (not what it spent)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(CASE WHEN id=? THEN 0 ELSE cost END + forgotten_cost), 0) AS total "
                "FROM jobs WHERE created>=?", (exclude, since)).fetchone()
        return float(row["total"])


_SQLITE_HEADER = b"SQLite format 3\x00"


def _inode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def _redacted(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: redact(value) if isinstance(value, str) else value for name, value in fields.items()}


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


def _row(row: sqlite3.Row) -> JobRow:
    result = json.loads(row["result"]) if row["result"] else {}
    view = JobView(
        job_id=row["id"], tag=row["tag"], source=row["source"], what=row["what"], state=JobState(row["state"]),
        progress=row["progress"], message=row["message"], created_at=row["created"], updated_at=row["updated"],
        origin=row["origin"], stems=result.get("stems", {}), manifest=result.get("manifest"), error=row["error"],
    )
    return JobRow(
        view=view, request=SeparationRequest.model_validate_json(row["request"]),
        idempotency_key=row["idempotency_key"], dedupe_key=row["dedupe_key"], attempts=row["attempts"],
        not_before=row["not_before"], cost=row["cost"], cancel_requested=bool(row["cancel_requested"]),
        flags=tuple(json.loads(row["flags"])), source_hash=row["source_hash"],
    )
