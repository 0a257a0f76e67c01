"""`sam-bridge team check`: can this machine join the team? The connection, the schema, the clock and the
daemons, each a line that says what is wrong and what to do. Reads only: the schema is made by a daemon."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bridge.common.database import mask_password, redact
from bridge.engine.journal.postgres import ALIVE, VERSION

SKEW_WARN = 2.0  # seconds: job ages and the budget's midnight use this machine's clock


@dataclass(frozen=True)
class Finding:
    ok: bool
    text: str


def check_team(dsn: str, lease: float, timeout: float = 5.0) -> list[Finding]:
    where = redact(dsn)
    try:
        conn = psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True, row_factory=dict_row)
    except psycopg.Error as exc:
        text = mask_password((str(exc).strip().splitlines() or [type(exc).__name__])[0], dsn)  # libpq quotes it
        return [Finding(False, f"Cannot connect to {where}: {text}. Check the address, user and password "
                               "(SAM_BRIDGE_DATABASE or `database:` in the config), and that the server accepts "
                               "connections from this machine (pg_hba.conf, firewall).")]
    findings: list[Finding] = []
    with conn:
        try:
            _check(conn, where, lease, findings)
        except psycopg.Error as exc:  # a query refused or broken: a line that says so, never a traceback
            text = mask_password((str(exc).strip().splitlines() or [type(exc).__name__])[0], dsn)
            findings.append(Finding(False, f"Could not read {where}: {text}."))
    return findings


def _check(conn: psycopg.Connection[Any], where: str, lease: float, findings: list[Finding]) -> None:
    server = conn.execute("SELECT current_setting('server_version') AS v").fetchone()
    findings.append(Finding(True, f"Connected to {where} (PostgreSQL {server['v'] if server else '?'})."))
    has_table = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL AS t").fetchone()
    found = 0
    if has_table and has_table["t"]:
        row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        found = int(row["v"] or 0) if row else 0
    if found > VERSION:
        findings.append(Finding(False, f"Schema version {found} was made by a newer sam-bridge; this one knows "
                                       f"up to {VERSION}. Update sam-bridge on this machine."))
    elif found == 0:
        findings.append(Finding(True, "No sam-bridge schema yet: the first daemon started creates it."))
    elif found < VERSION:
        findings.append(Finding(True, f"Schema version {found}: the next daemon started migrates it to "
                                      f"{VERSION}."))
    else:
        findings.append(Finding(True, f"Schema version {found} (current)."))
    before = time.time()
    stamp = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp()) AS t").fetchone()
    skew = (before + time.time()) / 2 - float(stamp["t"] if stamp else 0.0)
    if abs(skew) > SKEW_WARN:
        findings.append(Finding(False, f"This machine's clock is {skew:+.1f} s off the database server's. "
                                       "Leases use the server's clock, but job ages and the budget's day use "
                                       "this one: turn on automatic time (NTP) on both."))
    else:
        findings.append(Finding(True, f"Clock skew to the server: {skew:+.2f} s."))
    if found:
        # before version 3 a daemon's row had no lease of its own: it is judged by this machine's
        alive, lease_of_row = (ALIVE, "COALESCE(lease, %s)") if found >= 3 else (
            "SELECT instance FROM daemons WHERE NOT stopped AND heartbeat >= now() - make_interval(secs => %s)",
            "%s::float8")
        rows = conn.execute(f"SELECT instance, host, {lease_of_row} AS lease, instance IN ({alive}) AS alive "
                            "FROM daemons ORDER BY instance", (lease, lease)).fetchall()
        names = [f"{r['instance']} ({r['host']}, lease {float(r['lease']):g} s)" for r in rows if r["alive"]]
        findings.append(Finding(True, f"Daemons alive: {', '.join(names) if names else 'none'}."))
