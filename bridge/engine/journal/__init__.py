"""The crash-safe job journal: one interface (`JobJournal`), two backends: sqlite for one workstation
(the default, nothing to set up) and PostgreSQL for a team of workstations sharing jobs, claims, dedupe and
the daily budget. The engine does not know which one it has."""

from __future__ import annotations

from pathlib import Path

from bridge.common.database import ENV_VAR, database_url, redact
from bridge.engine.journal.base import JobJournal, JobRow, JobTakenOver, JournalDamaged, SchemaTooNew, StateDiskFull
from bridge.engine.journal.sqlite import Journal, SqliteJournal

__all__ = ["ENV_VAR", "JobJournal", "JobRow", "JobTakenOver", "Journal", "JournalDamaged", "SchemaTooNew",
           "SqliteJournal", "StateDiskFull", "database_url", "open_journal", "redact"]


def open_journal(database: str | None, state: Path, instance: str = "", *, lease: float = 30.0,
                 daemon: bool = False, pool_size: int = 8) -> JobJournal:
    """The team database when one is configured, else the workstation's sqlite file in `state`."""
    url = database_url(database)
    if not url:
        return Journal(state / "journal.sqlite")
    from bridge.engine.journal.postgres import PostgresJournal  # psycopg only where a team uses it

    return PostgresJournal(url, instance, lease=lease, daemon=daemon, pool_size=pool_size)
