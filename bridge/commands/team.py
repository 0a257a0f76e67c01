"""`sam-bridge team check` and `sam-bridge status --team`: a team of workstations sharing one journal on
PostgreSQL (`database:` in the config, or SAM_BRIDGE_DATABASE)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from bridge.common.errors import InputError
from bridge.common.redact import safe_json, say

if TYPE_CHECKING:  # the journal (httpx, pydantic) only when a command reads it: `--help` stays quick
    from bridge.engine.journal import JobJournal

NO_DATABASE = InputError("No team database is configured, so this machine works on its own journal.",
                         hint="Set `database: postgresql://user@host/db` in the config, or SAM_BRIDGE_DATABASE.")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("team", help="team mode: several workstations share one journal on PostgreSQL")
    sub = p.add_subparsers(dest="team_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("check", help="test the connection to the team database, its schema and clock skew")
    c.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    from bridge.common.config import load_config
    from bridge.common.database import database_url

    config = load_config()
    url = database_url(config.database)
    if not url:
        raise NO_DATABASE
    from bridge.engine.journal.team_check import check_team

    findings = check_team(url, config.lease_seconds)
    for finding in findings:
        print(f"{'ok  ' if finding.ok else 'FAIL'}  {finding.text}")
    return 0 if all(f.ok for f in findings) else 1


def show_team(journal: JobJournal, as_json: bool, everything: bool) -> int:
    """Every machine's jobs (owner, state, age) and which daemons are alive."""
    if not journal.team:
        raise NO_DATABASE
    from bridge.common.jobs import JobState
    from bridge.engine.journal.postgres import PostgresJournal  # psycopg: only in team mode

    assert isinstance(journal, PostgresJournal)
    daemons = journal.team_daemons()
    rows = journal.team_jobs(active_only=not everything)
    now = time.time()
    if as_json:
        print(safe_json({
            "daemons": [{"instance": d["instance"], "host": d["host"], "alive": bool(d["alive"]),
                         "silent_seconds": round(float(d["silent"]), 1), "lease_seconds": float(d["lease"])}
                        for d in daemons],
            "jobs": [{"job_id": r.view.job_id, "owner": r.owner, "state": r.view.state.value,
                      "age_seconds": round(now - r.view.created_at, 1), "source": r.view.source,
                      "message": r.view.message} for r in rows],
        }))
        return 0
    say(f"{'DAEMON':<24}  {'HOST':<20}  {'ALIVE':<5}  LAST HEARD")
    for d in daemons:
        say(f"{d['instance'][:24]:<24}  {d['host'][:20]:<20}  {'yes' if d['alive'] else 'no':<5}  "
            f"{_age(float(d['silent']))} ago{' (stopped)' if d['stopped'] else ''}")
    if not rows:
        say("No jobs in flight." if not everything else "No jobs.")
        return 0
    say()
    say(f"{'JOB':<12}  {'DAEMON':<24}  {'STATE':<11}  {'AGE':>4}  SOURCE")
    for r in rows:
        say(f"{r.view.job_id:<12}  {r.owner[:24]:<24}  {r.view.state.value:<11}  "
            f"{_age(now - r.view.created_at):>4}  {r.view.source}")
        if r.view.state in (JobState.failed, JobState.waiting):  # what to do about it, as `status JOB` says
            say(f"{'':<12}  {r.view.message}")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"
