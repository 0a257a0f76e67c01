"""The journal interface: every state change is committed BEFORE the action it protects is reported, so a
restart (or another daemon taking over) knows exactly what was paid for: a step with a request id is polled,
never submitted again; a step marked `submitting` without one is "may have landed" and needs a person.

The queries are written once, here, in the SQL both backends speak (`?` placeholders; the PostgreSQL
backend turns them into `%s`). A backend supplies the connection (`_tx`, `_read`) and its migrations.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.common.claims import ClaimBackend
from bridge.common.errors import BridgeError, OutputError
from bridge.common.jobs import JobState, JobView
from bridge.common.redact import redact
from bridge.common.request import SeparationRequest
from bridge.fal.client import RequestHandle

Row = Mapping[str, Any]


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One open transaction of a backend."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


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
    owner: str = ""  # the daemon instance running it (team mode; "" in a workstation's own journal)


class JournalDamaged(BridgeError):
    """The journal file is not a (readable) sqlite database."""

    exit_code = 4
    kind = "journal_damaged"


class StateDiskFull(OutputError):
    """The disk holding the state folder (journal, work files) is full."""

    kind = "disk_full"


class SchemaTooNew(BridgeError):
    """The journal was migrated by a newer sam-bridge than this one."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"The job journal {where} has schema version {found}, made by a newer sam-bridge; this one knows "
            f"versions up to {known} and will not touch it.",
            hint="Update sam-bridge on this machine to the version the other machines run.")


class JobTakenOver(Exception):
    """Another daemon took the job over (this one's lease expired): this daemon stops working on it."""


FINISHED = tuple(s.value for s in JobState if s.finished)


class JobJournal:
    """The journal as the engine sees it; `Journal` (sqlite) and `PostgresJournal` implement it."""

    where = ""  # the journal's location, for messages (never a password)
    team = False  # True when several daemons share it

    # -- what a backend supplies --------------------------------------------------------------------

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._tx() as tx:
            return list(tx.execute(sql, params).fetchall())

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement, committed on its own."""
        with self._tx() as tx:
            tx.execute(sql, params)

    def close(self) -> None:
        raise NotImplementedError

    # -- health: is the journal still usable (a file damaged or a disk filled while the daemon runs) --

    @property
    def damage(self) -> str | None:
        """None while healthy; 'damaged' (its file broke while we ran) or 'full' (its disk is full)."""
        return None

    def check_file(self) -> None:
        """Raise `JournalDamaged` when the journal can no longer be trusted (cheap: called before work)."""

    def damaged_error(self) -> JournalDamaged:
        return JournalDamaged(
            f"The job journal {self.where} was damaged while sam-bridge ran: it takes no new work and stops.",
            hint="Start sam-bridge again (`sam-bridge run`, or restart the service: it does not restart this exit "
            "by itself): it then says how to move the damaged journal aside.")

    # -- team mode (a workstation's own journal has no team: these do nothing) ----------------------

    def claims(self, instance_id: str, limit: int | None = None) -> ClaimBackend | None:
        """A claim store in the database for the ways in; None: they keep their marker files."""
        return None

    def adopt_orphans(self, limit: int, reachable: Callable[[JobRow], bool] | None = None) -> list[JobRow]:
        """Unfinished jobs of daemons whose lease expired, now this one's (with a request id: polled); those
        `reachable` refuses (this machine cannot reach their folders) are left for another daemon."""
        return []

    def take_queued(self, limit: int, reachable: Callable[[JobRow], bool] | None = None) -> list[JobRow]:
        """Hot-folder jobs a busy live daemon queued but has not started, now this idle one's."""
        return []

    def active_leader(self, job_id: str, key: str) -> str | None:
        """Set the job's dedupe key; return an earlier unfinished job with the same key, if any."""
        self.set_fields(job_id, dedupe_key=key)
        return None

    # -- writes -------------------------------------------------------------------------------------

    def add(self, request: SeparationRequest, what: str) -> str:
        job_id = uuid.uuid4().hex[:12]  # made once, before any retry: a retried insert finds its own job
        self._insert_job(job_id, request, what, time.time())
        return job_id

    def _insert_job(self, job_id: str, request: SeparationRequest, what: str, now: float) -> None:
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO jobs (id, created, updated, state, message, request, source, what, tag, origin,"
                " idempotency_key, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, now, now, JobState.queued.value, "Waiting for a free slot",
                 request.model_dump_json(), str(request.source), what, request.tag, request.origin.value,
                 request.idempotency_key, self._owner()),
            )
            tx.execute("INSERT INTO history VALUES (?,?,?,?)", (job_id, now, JobState.queued.value, "queued"))

    def _owner(self) -> str:
        return ""

    @property
    def owner_name(self) -> str:
        """This daemon's name on the jobs it owns ("" in a workstation's own journal)."""
        return self._owner()

    def set_state(self, job_id: str, state: JobState, progress: float | None = None, message: str = "",
                  **fields: Any) -> None:
        now = time.time()
        columns = state_columns(state, now, progress, message, fields)
        message = columns["message"]
        assignments = ", ".join(f"{name}=?" for name in columns)
        with self._tx() as tx:
            previous = tx.execute("SELECT state, owner FROM jobs WHERE id=?", (job_id,)).fetchone()
            self._check_owner(job_id, previous)
            tx.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*columns.values(), job_id))
            if previous is None or previous["state"] != state.value:
                tx.execute("INSERT INTO history VALUES (?,?,?,?)", (job_id, now, state.value, message))

    def _check_owner(self, job_id: str, row: Row | None) -> None:
        """Raise JobTakenOver when the job is no longer this daemon's (team mode only)."""

    def update_progress(self, job_id: str, progress: float, message: str) -> None:
        # never over a finished job's last word: a late progress report from a helper thread (held up
        # while the team database was unreachable, say) lands after the job ended
        self._write(f"UPDATE jobs SET progress=?, message=?, updated=? WHERE id=? AND state NOT IN "
                    f"({','.join('?' * len(FINISHED))})", (progress, redact(message), time.time(), job_id, *FINISHED))

    def set_fields(self, job_id: str, **fields: Any) -> None:
        fields = _redacted(fields)
        assignments = ", ".join(f"{name}=?" for name in fields)
        self._write(f"UPDATE jobs SET {assignments} WHERE id=?", (*fields.values(), job_id))

    def mark_submitting(self, job_id: str, step: int) -> None:
        with self._tx() as tx:
            # in team mode the row lock orders this against a takeover: exactly one daemon submits
            self._check_owner(job_id, tx.execute(self._lock_job_sql(), (job_id,)).fetchone())
            tx.execute(_UPSERT_STEP, (job_id, step, "submitting", None, time.time()))

    def _lock_job_sql(self) -> str:
        return "SELECT state, owner FROM jobs WHERE id=?"

    def mark_submitted(self, job_id: str, step: int, handle: RequestHandle) -> None:
        self._write(_UPSERT_STEP, (job_id, step, "submitted", json.dumps(handle.to_dict()), time.time()))

    def clear_steps(self, job_id: str, from_step: int = 0, step_count: int = 1) -> None:
        """Forget the job's requests from `from_step` on (they failed or were cancelled at the service, or
        their results belong to audio that changed); earlier steps' requests are fetched again, not paid
        again. What forgotten requests cost stays counted against the daily budget."""
        with self._tx() as tx:
            paid = tx.execute(
                "SELECT COUNT(*) AS n FROM steps WHERE job_id=? AND step>=? AND handle IS NOT NULL",
                (job_id, from_step)).fetchone()["n"]
            if paid and from_step == 0:  # the next attempt reserves its own cost; this one's was spent
                tx.execute("UPDATE jobs SET forgotten_cost = forgotten_cost + cost, cost = 0 WHERE id=?",
                           (job_id,))
            elif paid:  # the job keeps its reservation, which covers the steps sent again; their first
                # requests' share of it was spent on top
                tx.execute("UPDATE jobs SET forgotten_cost = forgotten_cost + cost * ? / ? WHERE id=?",
                           (paid, max(step_count, 1), job_id))
            tx.execute("DELETE FROM steps WHERE job_id=? AND step>=?", (job_id, from_step))

    def unmark_submitting(self, job_id: str, step: int) -> None:
        self._write("DELETE FROM steps WHERE job_id=? AND step=? AND handle IS NULL", (job_id, step))

    def clear_uncertain(self, job_id: str) -> None:
        """Forget submits whose answer was lost (a person chose to retry); accepted requests stay, so a
        retry fetches their results instead of paying again."""
        self._write("DELETE FROM steps WHERE job_id=? AND handle IS NULL", (job_id,))

    def request_cancel(self, job_id: str) -> None:
        self.set_fields(job_id, cancel_requested=1)

    def reserve_budget(self, job_id: str, estimate: float, since: float, limit: float) -> float | None:
        """Reserve `estimate` for the job unless the spending since `since` would pass `limit`, in one
        transaction (every daemon sharing the journal sees one budget). Returns None when reserved, else
        what was spent."""
        with self._budget_tx() as tx:
            spent = float(tx.execute(_SPENT, (job_id, since)).fetchone()["total"])
            if spent + estimate > limit:
                return spent
            tx.execute("UPDATE jobs SET cost=? WHERE id=?", (estimate, job_id))
        return None

    def _budget_tx(self) -> AbstractContextManager[Tx]:
        return self._tx()

    # -- reads --------------------------------------------------------------------------------------

    def handles(self, job_id: str) -> tuple[dict[int, RequestHandle], list[int]]:
        """(step -> handle of steps fal accepted, steps whose submit may or may not have landed)."""
        rows = self._read("SELECT step, state, handle FROM steps WHERE job_id=?", (job_id,))
        accepted = {r["step"]: RequestHandle.from_dict(json.loads(r["handle"])) for r in rows if r["handle"]}
        uncertain = [r["step"] for r in rows if r["state"] == "submitting"]
        return accepted, uncertain

    def get(self, job_id: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        return job_row(rows[0]) if rows else None

    def find_prefix(self, prefix: str) -> list[str]:
        return [r["id"] for r in self._read("SELECT id FROM jobs WHERE id LIKE ?", (prefix + "%",))]

    def by_idempotency_key(self, key: str) -> list[JobRow]:
        rows = self._read("SELECT * FROM jobs WHERE idempotency_key=? ORDER BY created", (key,))
        return [job_row(r) for r in rows]

    def done_with_dedupe_key(self, key: str) -> list[JobRow]:
        rows = self._read("SELECT * FROM jobs WHERE dedupe_key=? AND state=? ORDER BY updated DESC",
                          (key, JobState.done.value))
        return [job_row(r) for r in rows]

    def unfinished(self) -> list[JobRow]:
        """This daemon's unfinished jobs (in a team journal, only those it owns)."""
        rows = self._read(
            f"SELECT * FROM jobs WHERE state NOT IN ({','.join('?' * len(FINISHED))}) AND owner=? "
            "ORDER BY created", (*FINISHED, self._owner()))
        return [job_row(r) for r in rows]

    def recent(self, limit: int = 200, active_only: bool = False) -> list[JobRow]:
        if active_only:
            return self.unfinished()
        rows = self._read("SELECT * FROM jobs WHERE owner=? ORDER BY created DESC LIMIT ?", (self._owner(), limit))
        return [job_row(r) for r in rows]

    def spent_since(self, since: float, exclude: str = "") -> float:
        """Estimated cost of the jobs created since `since` that reached (or may reach) the service, with the
        requests they made and forgot; `exclude`'s current reservation is left out (not what it spent)."""
        return float(self._read(_SPENT, (exclude, since))[0]["total"])


_UPSERT_STEP = ("INSERT INTO steps (job_id, step, state, handle, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT (job_id, step) DO UPDATE SET state=excluded.state, handle=excluded.handle, "
                "updated=excluded.updated")
_SPENT = ("SELECT COALESCE(SUM(CASE WHEN id=? THEN 0 ELSE cost END + forgotten_cost), 0) AS total "
          "FROM jobs WHERE created>=?")


def job_row(row: Row) -> JobRow:
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
        flags=tuple(json.loads(row["flags"])), source_hash=row["source_hash"], owner=row["owner"] or "",
    )


def state_columns(state: JobState, now: float, progress: float | None, message: str,
                  fields: dict[str, Any]) -> dict[str, Any]:
    """The columns a state change writes, in every backend's `set_state`; the last guard for the key is
    here so no backend's own statement can skip it: an error text quoting it never reaches the journal."""
    columns = {"state": state.value, "updated": now, "message": redact(message), **_redacted(fields)}
    if progress is not None:
        columns["progress"] = progress
    return columns


def _redacted(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: redact(value) if isinstance(value, str) else value for name, value in fields.items()}
