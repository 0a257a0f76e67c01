"""`sam-bridge team check`: can this machine join the team? The connection, the schema, the clock and the
daemons, each a line that says what is wrong and what to do. Reads only: the schema is made by a daemon."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bridge.common.database import mask_password, redact
from bridge.engine.journal.deadline import BoundedConnection, bound_on_server, tcp_parameters
from bridge.engine.journal.pg_schema import ALIVE, TABLES, VERSION

SKEW_WARN = 2.0  # seconds: job ages and the budget's midnight use this machine's clock


@dataclass(frozen=True)
class Finding:
    ok: bool
    text: str


def check_team(dsn: str, lease: float, timeout: float = 5.0) -> list[Finding]:
    """`timeout` bounds the connecting and each answer (a silent server: deadline.py)."""
    where = redact(dsn)
    try:
        conn = BoundedConnection.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True,
                                         row_factory=dict_row, **tcp_parameters(dsn, timeout))
    except psycopg.Error as exc:
        text = mask_password((str(exc).strip().splitlines() or [type(exc).__name__])[0], dsn)  # libpq quotes it
        return [Finding(False, f"Cannot connect to {where}: {text}. Check the address, user and password "
                               "(SAM_BRIDGE_DATABASE or `database:` in the config), and that the server accepts "
                               "connections from this machine (pg_hba.conf, firewall).")]
    findings: list[Finding] = []
    conn.bound = timeout
    with conn:
        try:
            bound_on_server(conn, timeout)  # a read behind another session's lock ends as an error, not a hang
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
    rights = conn.execute(
        "SELECT current_user AS role, current_schema() AS schema, has_schema_privilege(current_schema(), 'CREATE') "
        "AS can_create, (SELECT COALESCE(bool_and(pg_has_role(relowner, 'USAGE')), false) FROM pg_class WHERE oid "
        "IN (to_regclass('jobs'), to_regclass('daemons'), to_regclass('schema_version'))) AS owns").fetchone()
    role, schema = (rights["role"], rights["schema"]) if rights else ("?", "public")
    admin = (f"start it with a role that may (the database's owner), or have an administrator do so "
             f"(GRANT CREATE ON SCHEMA {schema} TO {role})")
    if found > VERSION:
        findings.append(Finding(False, f"Schema version {found} was made by a newer sam-bridge; this one knows "
                                       f"up to {VERSION}. Update sam-bridge on this machine."))
    elif found == 0 and not (rights and rights["can_create"]):
        findings.append(Finding(False, f"No sam-bridge schema yet, and role {role} may not create tables: the "
                                       f"first daemon makes the schema, so {admin}."))
    elif found == 0:
        findings.append(Finding(True, "No sam-bridge schema yet: the first daemon started creates it."))
    elif found < VERSION and not (rights and rights["owns"]):
        findings.append(Finding(False, f"Schema version {found}: the next daemon started migrates it to "
                                       f"{VERSION}, and role {role} may not create or alter sam-bridge's tables "
                                       "(only their owner may): start that daemon with the role that made them."))
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
        row = conn.execute(
            "SELECT string_agg(t, ', ' ORDER BY t) AS lacking FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT "
            "NULL AND NOT (has_table_privilege(to_regclass(t), 'SELECT') AND has_table_privilege(to_regclass(t), "
            "'INSERT') AND has_table_privilege(to_regclass(t), 'UPDATE') AND has_table_privilege(to_regclass(t), "
            "'DELETE'))", (list(TABLES),)).fetchone()
        if row and row["lacking"]:
            findings.append(Finding(False, f"Role {role} may not read and write sam-bridge's tables "
                                           f"{row['lacking']}: have an administrator run GRANT SELECT, INSERT, "
                                           f"UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}."))
            return  # the daemons query below would be refused too
    if found:
        # before version 3 a daemon's row had no lease of its own: it is judged by this machine's
        alive, lease_of_row = (ALIVE, "COALESCE(lease, %s)") if found >= 3 else (
            "SELECT instance FROM daemons WHERE NOT stopped AND heartbeat >= now() - make_interval(secs => %s)",
            "%s::float8")
        rows = conn.execute(f"SELECT instance, host, {lease_of_row} AS lease, instance IN ({alive}) AS alive "
                            "FROM daemons ORDER BY instance", (lease, lease)).fetchall()
        names = [f"{r['instance']} ({r['host']}, lease {float(r['lease']):g} s)" for r in rows if r["alive"]]
        findings.append(Finding(True, f"Daemons alive: {', '.join(names) if names else 'none'}."))
