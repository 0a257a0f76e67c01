"""The journal's sqlite connection, watched: a file damaged (or a disk filled) while the daemon runs is
told apart from a bug, once, so the daemon can stop taking work and say so instead of failing every job
with "internal error"."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

# what sqlite says when the file under it is no longer a database (truncated, overwritten, a bad disk)
_DAMAGE = ("malformed", "not a database", "disk i/o error", "database disk image", "file is encrypted",
           "no such table")
_FULL = ("database or disk is full", "disk is full")


def damage_of(exc: sqlite3.Error) -> str | None:
    """'damaged' or 'full' when `exc` is about the file, not about our SQL; None otherwise."""
    text = str(exc).lower()
    if any(word in text for word in _FULL):
        return "full"
    if isinstance(exc, sqlite3.DatabaseError) and any(word in text for word in _DAMAGE):
        return "damaged"
    return None


class GuardedCursor:
    def __init__(self, cursor: sqlite3.Cursor, guard: GuardedConnection) -> None:
        self._cursor, self._guard = cursor, guard

    def fetchone(self) -> Any:
        return self._guard.call(self._cursor.fetchone)

    def fetchall(self) -> list[Any]:
        return list(self._guard.call(self._cursor.fetchall))

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class GuardedConnection:
    """Every call through `call`: a damage error is remembered (`damage`) and handed to `on_damage`."""

    def __init__(self, db: sqlite3.Connection, on_damage: Callable[[str, sqlite3.Error], Exception]) -> None:
        self.db = db
        self._on_damage = on_damage
        self.damage: str | None = None
        self._lock = threading.Lock()

    def call(self, what: Callable[..., Any], *args: Any) -> Any:
        try:
            result = what(*args)
        except sqlite3.Error as exc:
            kind = damage_of(exc)
            if kind is None:
                raise
            with self._lock:
                if self.damage != "damaged":  # damaged wins over full: it does not heal by itself
                    self.damage = kind
            raise self._on_damage(kind, exc) from None
        if self.damage == "full":  # room again: a full disk heals, a damaged file does not
            self.damage = None
        return result

    def execute(self, sql: str, parameters: Any = ()) -> GuardedCursor:
        return GuardedCursor(self.call(self.db.execute, sql, parameters), self)

    def executescript(self, script: str) -> None:
        self.call(self.db.executescript, script)

    def close(self) -> None:
        self.db.close()
