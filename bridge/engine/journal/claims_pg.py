"""Claims in the team database: a hot-folder file version or a request-file version is taken by exactly
one daemon, through one `INSERT … ON CONFLICT DO UPDATE … WHERE` on its claim row (no marker files).

A claim row is free when it was released, or when its holder's lease expired (the database's clock
decides, so the workstations' clocks may disagree). A file version is named by its folder's name, its own
name, size and modification time, so machines that mount the share at different paths agree on it.
A daemon holds at most `limit` claims at once (its concurrency): files it could not start now are left to
daemons with a free slot.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from bridge.common.claims import Claim, ClaimOutcome
from bridge.common.file_gate import FileSnapshot
from bridge.engine.journal.base import Row
from bridge.engine.journal.pg_schema import ALIVE


class TeamDatabase(Protocol):
    """What the claims need of the team journal (`PostgresJournal`): statements that wait out an outage."""

    lease: float

    def read_waiting(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def write_waiting(self, sql: str, params: Sequence[Any] = ()) -> None: ...

_TRY = f"""
INSERT INTO claims AS c (key, source, owner, host, state, generation) VALUES (%s, %s, %s, %s, 'active', 1)
ON CONFLICT (key) DO UPDATE SET owner=excluded.owner, host=excluded.host, state='active',
    generation=c.generation + 1, claimed_at=now(), changed_at=now()
WHERE c.state = 'released' OR (c.state = 'active' AND (c.owner = excluded.owner OR c.owner NOT IN ({ALIVE})))
RETURNING generation
"""


class DatabaseClaims:
    """`bridge.common.claims.ClaimBackend` on the team database."""

    def __init__(self, journal: TeamDatabase, instance_id: str, limit: int | None = None) -> None:
        self.journal, self.instance_id, self.limit = journal, instance_id, limit
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def busy(self) -> bool:
        with self._lock:
            return self.limit is not None and len(self._held) >= self.limit

    def try_claim(self, source: Path, snapshot: FileSnapshot, variant: str = "", *, slot: bool = True) -> ClaimOutcome:
        if slot and self.busy():  # a cover (slot=False) is marked done at once: it holds no slot
            return ClaimOutcome(None, holder="this sam-bridge (all its slots busy)", recheck_after=0.05)
        key = db_claim_key(source, snapshot, variant)
        host = self.journal_host()
        rows = self.journal.read_waiting(_TRY, (key, source.name, self.instance_id, host, self.journal.lease))
        if rows:
            with self._lock:
                self._held.add(key)
            return ClaimOutcome(Claim(source, source, int(rows[0]["generation"]), key=key))
        held = self.journal.read_waiting(
            "SELECT c.owner, c.host, c.state, EXTRACT(EPOCH FROM now() - d.heartbeat) AS silent, "
            "COALESCE(d.lease, %s) AS lease FROM claims c LEFT JOIN daemons d ON d.instance = c.owner WHERE c.key=%s",
            (self.journal.lease, key))
        if not held:  # removed between the two statements (moved to done/): look again
            return ClaimOutcome(None, holder="another sam-bridge", recheck_after=0.05)
        row = held[0]
        if row["state"] == "done":
            return ClaimOutcome(None, done_elsewhere=True, done_by=str(row["owner"]))
        remaining = float(row["lease"]) - float(row["silent"] or 0.0)  # the holder's own lease
        return ClaimOutcome(None, holder=f"{row['owner']} on {row['host']}", recheck_after=max(0.5, remaining))

    @staticmethod
    def journal_host() -> str:
        import socket

        return socket.gethostname()

    def refresh(self, claim: Claim) -> bool:
        """The daemon's lease keeps its claims alive; False when another daemon took this one over."""
        rows = self.journal.read_waiting("SELECT owner, generation FROM claims WHERE key=%s", (claim.key,))
        return bool(rows) and rows[0]["owner"] == self.instance_id and rows[0]["generation"] == claim.generation

    def mark_done(self, claim: Claim) -> None:
        self._set_state(claim, "done")

    def release(self, claim: Claim) -> None:
        self._set_state(claim, "released")

    def _set_state(self, claim: Claim, state: str) -> None:
        self.journal.write_waiting("UPDATE claims SET state=%s, changed_at=now() WHERE key=%s AND owner=%s",
                            (state, claim.key, self.instance_id))
        with self._lock:
            self._held.discard(claim.key)

    def forget_done(self, source: Path, snapshot: FileSnapshot, variant: str = "") -> None:
        """The file moved to done/: its row stays "done" (a copy put back later with the same name, size and
        time is the same version, as with marker files until they are pruned)."""

    def prune(self, folder: Path) -> int:
        return 0  # rows are small; `done` rows must outlive the files' stay in the folder


def db_claim_key(source: Path, snapshot: FileSnapshot, variant: str = "") -> str:
    """As `bridge.common.claims.claim_key`: no variant, the key it always was."""
    text = f"{source.parent.name}\0{source.name}\0{snapshot.size}\0{snapshot.mtime_ns}" + \
        (f"\0{variant}" if variant else "")
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]
