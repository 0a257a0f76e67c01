"""`sam-bridge status | cancel JOB | retry JOB`: read and steer the journal, daemon running or not."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.common.errors import BridgeError, InputError
from bridge.common.redact import safe_json, say

if TYPE_CHECKING:  # the journal (pydantic, httpx) is imported once there is one to read
    from bridge.engine.journal import JobJournal, JobRow


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="list jobs (the daemon's journal)")
    p.add_argument("job", nargs="?", help="one job id (or a unique prefix)")
    p.add_argument("--all", action="store_true", help="list up to 1000 jobs (default: the 50 most recent)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--team", action="store_true",
                   help="team mode: every machine's jobs in flight (with --all: recent ones too) and which "
                   "daemons are alive")
    p.set_defaults(func=status)
    c = subparsers.add_parser("cancel", help="cancel a job (also cancels its request at the service)")
    c.add_argument("job", help="job id or unique prefix")
    c.set_defaults(func=cancel)
    r = subparsers.add_parser("retry", help="run a failed or cancelled job again")
    r.add_argument("job", help="job id or unique prefix")
    r.add_argument("--resubmit", action="store_true",
                   help="send it to the service anew (charged again) instead of asking for the results of "
                   "the requests it already made")
    r.set_defaults(func=retry)


def _journal_path() -> Path:
    from bridge.common.config import state_dir

    return state_dir() / "journal.sqlite"


def _team_database() -> str | None:
    """The team database's URL when one is configured (config `database:` or SAM_BRIDGE_DATABASE)."""
    from bridge.common.config import load_config
    from bridge.common.database import database_url

    return database_url(load_config().database)


def _journal() -> JobJournal:
    """The team database when one is configured, else this user's sqlite journal."""
    from bridge.common.config import load_config, state_dir
    from bridge.engine.journal import Journal, open_journal

    if _team_database():
        config = load_config()
        return open_journal(config.database, state_dir(), config.instance_name(state_dir()),
                            lease=config.lease_seconds, pool_size=2)
    path = _journal_path()
    if not path.exists():
        raise InputError("No jobs yet: the daemon has not run for this user.",
                         hint="Start it with `sam-bridge run`.")
    return Journal(path)


def _source_changed_since_sent(journal: JobJournal, row: JobRow) -> bool:
    """Requests were made from audio that is no longer the source's (a re-render after a failure)."""
    from bridge.audio.source import same_audio  # numpy and libsndfile: only when a job is retried

    accepted, _ = journal.handles(row.view.job_id)
    if not accepted or not row.source_hash:
        return False
    try:
        return not same_audio(row.request.source, row.source_hash)
    except OSError:  # gone or unreadable: the job says so in words when it runs
        return False


def _job(prefix: str) -> tuple[JobJournal, str, JobRow | None]:
    """The journal, the job id a prefix names, and its row."""
    journal = _journal()
    job_id = _resolve(journal, prefix)
    return journal, job_id, journal.get(job_id)


def _resolve(journal: JobJournal, prefix: str) -> str:
    matches = journal.find_prefix(prefix)
    if len(matches) != 1:
        raise InputError(f"No job matches {prefix!r}." if not matches else f"{prefix!r} matches several jobs.",
                         hint="Use `sam-bridge status` to see job ids.")
    return matches[0]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_summary(journal: JobJournal, row: JobRow) -> dict[str, Any]:
    """A job as `status --json` prints it: the view, times in ISO 8601, flags, cost and request ids."""
    view = row.view
    accepted, _ = journal.handles(view.job_id)
    return {**view.__dict__, "state": view.state.value, "created_at": iso(view.created_at),
            "updated_at": iso(view.updated_at), "flags": list(row.flags), "estimated_cost": round(row.cost, 4),
            "request_ids": [accepted[step].request_id for step in sorted(accepted)]}


def status(args: argparse.Namespace) -> int:
    try:
        return _status(args)
    except BridgeError as err:
        if args.json:  # machine-readable too (main() still prints it to stderr and sets the exit code)
            print(safe_json({"ok": False, "error": err.kind, "message": err.message, "hint": err.hint}))
        raise


def _status(args: argparse.Namespace) -> int:
    if args.team:
        from bridge.commands.team import NO_DATABASE, show_team

        if not _team_database():
            raise NO_DATABASE
        journal = _journal()
        try:
            return show_team(journal, args.json, args.all)
        finally:
            journal.close()
    if not _journal_path().exists() and not args.job and not _team_database():  # no jobs yet: not an error
        print("[]" if args.json else "No jobs yet: the daemon has not run for this user.")
        return 0
    from bridge.common.jobs import PAUSED_MESSAGE, JobState

    journal = _journal()
    rows = [journal.get(_resolve(journal, args.job))] if args.job else journal.recent(1000 if args.all else 50)
    found = [r for r in rows if r is not None]
    if args.job and not found:  # removed between finding its id and reading it
        raise InputError(f"No job matches {args.job!r}.", hint="Use `sam-bridge status` to see job ids.")
    if args.json:  # one job asked for: that job's object, as the text shows it; else the list
        summaries = [job_summary(journal, r) for r in found]
        print(safe_json(summaries[0] if args.job else summaries))
        return 0
    if not found:
        say("No jobs.")
        return 0
    if args.job:
        _print_job(job_summary(journal, found[0]))
        return 0
    now = time.time()
    say(f"{'JOB':<12}  {'STATE':<11}  {'PROGRESS':>8}  {'AGE':>4}  {'PRESET/PROMPT':<20}  SOURCE")
    for row in found:
        v = row.view
        say(f"{v.job_id:<12}  {v.state.value:<11}  {v.progress * 100:>7.0f}%  {_age(now - v.created_at):>4}  "
            f"{v.what[:20]:<20}  {v.source}")
        # a job the daemon stopped keeps the state it was in: its message says it is paused
        paused = not v.state.finished and v.message == PAUSED_MESSAGE
        if v.state in (JobState.failed, JobState.waiting) or paused or row.flags:
            # not splitlines: a \r from outside is no line end
            text = v.message if paused else (v.error or v.message).split("\n", 1)[0]
            say(f"{'':<14}{text}{'  flags: ' + ', '.join(row.flags) if row.flags else ''}")
    return 0


def _print_job(job: dict[str, Any]) -> None:
    """One job in full: what a user needs to find its stems, judge them, and know what it cost."""
    from bridge.common.cost import money
    from bridge.common.flags import describe_flag, flag_kind

    say(f"job {job['job_id']}: {job['state']} ({job['progress'] * 100:.0f}%) - {job['message']}")
    say(f"  source:   {job['source']}")
    say(f"  what:     {job['what']}" + (f"  (tag {job['tag']})" if job["tag"] else ""))
    say(f"  created:  {job['created_at']}   updated: {job['updated_at']}")
    for label, path in job["stems"].items():
        say(f"  {label + ':':<9} {path}")
    if job["manifest"]:
        say(f"  manifest: {job['manifest']}")
    for flag in job["flags"]:
        say(f"  {flag_kind(flag)}: {describe_flag(flag)}")
    say(f"  cost:     {money(job['estimated_cost'])} (estimated)")
    if job["request_ids"]:
        say(f"  requests: {', '.join(job['request_ids'])}")
    if job["error"]:
        say(f"  error:    {job['error']}".replace("\n", "\n            "), keep_newlines=True)


def cancel(args: argparse.Namespace) -> int:
    journal, job_id, row = _job(args.job)
    if row is None or row.view.state.finished:
        say(f"Job {job_id} has already finished ({row.view.state.value if row else 'unknown'}).")
        return 1
    journal.request_cancel(job_id)
    say(f"Cancel requested for job {job_id}; the daemon stops it and cancels its service request.")
    return 0


def retry(args: argparse.Namespace) -> int:
    from bridge.common.jobs import JobState

    journal, job_id, row = _job(args.job)
    if row is None or row.view.state not in (JobState.failed, JobState.cancelled):
        say(f"Job {job_id} is {row.view.state.value if row else 'unknown'}; only failed or cancelled jobs "
            "can be retried.")
        return 1
    journal.clear_uncertain(job_id)  # requests fal accepted are polled again, not paid again
    if args.resubmit and journal.handles(job_id)[0]:
        journal.clear_steps(job_id, step_count=1)
        say("It is sent to the service anew (charged again).")
    elif _source_changed_since_sent(journal, row):
        journal.clear_steps(job_id)
        say(f"{row.request.source.name} changed since it was sent, so its new audio is sent again "
            "(charged again).")
    elif journal.handles(job_id)[0]:
        say("The results of the requests it already made are asked for again, at no cost; if the service "
            f"no longer has them, `sam-bridge retry --resubmit {job_id}` sends it anew.")
    journal.set_state(job_id, JobState.queued, 0.0, "Queued again (retry)", error=None, attempts=0,
                      not_before=0, cancel_requested=0)
    say(f"Job {job_id} is queued again; a running daemon picks it up within seconds.")
    return 0
