"""The job engine: owns job state (through the journal), the in-flight limit, cancel, resume, dedupe and
the budget; runs every job through the one pipeline. Implements `bridge.common.jobs.JobSink` for the ways in.

Its parts: `engine_queue` (fair scheduling, slots), `engine_hooks` (what the pipeline calls back),
`engine_outcomes` (journalling a job's end), `engine_budget` (daily budget), `engine_events` (listeners).
This module keeps the job's life: submit, cancel, resume, the workers and one job's run; `resume_rules`
decides what an earlier attempt left may be followed, reused or must not be sent again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bridge.audio.intermediates import clean_workdir
from bridge.common.cost import FileEstimate, PriceTable
from bridge.common.errors import (
    AccountLocked,
    BridgeError,
    Cancelled,
    ServiceUnavailable,
    SourceError,
)
from bridge.common.jobs import PAUSED_MESSAGE, JobEvent, JobSink, JobState, JobView, RequestRejected
from bridge.common.request import Origin, SeparationRequest
from bridge.common.stems import DiskFull, confined_folder, disk_error, output_folder
from bridge.engine.budget import BudgetWait, DailyBudget
from bridge.engine.dedupe import dedupe_key, reuse_result, written_before
from bridge.engine.estimate import estimate
from bridge.engine.events import JobEvents
from bridge.engine.hooks import EngineHooks, ShuttingDown, SubmitsInFlight
from bridge.engine.journal import JobJournal, JobRow, JobTakenOver, JournalDamaged, StateDiskFull
from bridge.engine.outcomes import JobOutcomes
from bridge.engine.pipeline import Pipeline
from bridge.engine.queue import FairQueue, QueuedJob
from bridge.engine.resume_rules import REFETCH_FAILED, ResumeRules
from bridge.fal.client import RequestHandle
from bridge.presets.library import PresetLibraries, PresetLibrary
from bridge.presets.recipe import Recipe, recipe_for

__all__ = ["ACTIVE", "EngineSettings", "JobEngine", "ShuttingDown"]

log = logging.getLogger(__name__)

ACTIVE = (JobState.queued, JobState.waiting, JobState.preparing, JobState.uploading, JobState.submitted,
          JobState.running, JobState.downloading, JobState.conforming)


@dataclass
class EngineSettings:
    concurrency: int = 4
    dedupe: bool = True
    daily_budget: float | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    workroot: Path = Path("work")
    retry_base: float = 5.0  # seconds before a job waiting on an unavailable service tries again (doubles)
    retry_max: float = 300.0
    rescan_interval: float = 1.0  # how often the journal is checked for work added by other processes
    confirm_above: float | None = 1.0  # estimates carry it: the DAW sides ask before sending above it
    local_work: int = 1  # jobs conforming at once: CPU and memory heavy, and no faster in parallel on 2 cores


WATCH_PROBLEM_EVERY = 600.0  # seconds between log lines about the same journal-watch problem


def _reachable(row: JobRow) -> bool:
    """This machine sees the job's source and where its stems go (a dead daemon's job on a shared drive)."""
    out = row.request.output_dir or row.request.project_dir
    try:
        return row.request.source.is_file() and (out is None or out.is_dir())
    except OSError:  # EACCES, ESTALE, ENAMETOOLONG…: not from here; a machine that can reach it takes it
        return False


class JobEngine(JobSink):
    def __init__(self, journal: JobJournal, pipeline: Pipeline, library: PresetLibrary,
                 settings: EngineSettings) -> None:
        self.journal, self.pipeline, self.library, self.settings = journal, pipeline, library, settings
        self._libraries = PresetLibraries(library)  # + `<project>/sam-bridge/presets/` per request
        self._queue = FairQueue(settings.concurrency, settings.local_work, settings.rescan_interval)
        self._events = JobEvents()
        self._outcomes = JobOutcomes(journal, self._events, pipeline.client.cancel, settings.retry_base,
                                     settings.retry_max)
        self._rules = ResumeRules(journal, pipeline, self._outcomes, settings.dedupe)
        self._budget = DailyBudget(journal, settings.daily_budget, settings.prices, billed=pipeline.bills())
        self._cancelled: set[str] = set()  # read by the jobs' hooks at every checkpoint
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._sending = SubmitsInFlight()
        self._hurry = False  # a second stop: set from a signal handler, so a plain flag

    # -- JobSink ----------------------------------------------------------------------------------

    def health(self) -> str:
        """One word: `ok`, `journal-damaged` (no new work; the daemon stops) or `state-disk-full`."""
        damage = self.journal.damage
        return {"damaged": "journal-damaged", "full": "state-disk-full"}.get(damage or "", "ok")

    def submit(self, request: SeparationRequest) -> str:
        self.journal.check_file()  # a journal damaged under us: no new work, and the way in says why
        if self._stopping.is_set():
            raise RequestRejected("sam-bridge is shutting down; send the request again after it restarts.")
        if request.idempotency_key:
            for row in reversed(self.journal.by_idempotency_key(request.idempotency_key)):
                # A request file's version is one job for good, even failed or cancelled (its status file
                # says so); only `retry` or a new version makes new work. A hot folder file whose error
                # file was deleted asks for a new job.
                if (row.view.state in ACTIVE or row.view.state == JobState.done
                        or request.origin is Origin.request_file
                        or self.journal.handles(row.view.job_id)[1]):  # a submit that may have landed (a
                    # daemon died sending it): never paid again on its own; its failure says what to do
                    return row.view.job_id
        if request.confined_to is not None:  # an untrusted way in: refused before anything is read
            request.confined_to.source_file(request.source)
            if request.project_dir is not None:  # its presets are read next
                request.confined_to.output_folder(request.project_dir)
        recipe = recipe_for(request, self._libraries.for_project(request.project_dir))  # PresetError now
        if request.confined_to is not None:
            confined_folder(output_folder(request.source, request.project_dir, request.output_dir,
                                          recipe.output.folder), request.confined_to, create=False)
        if not request.source.is_file():
            raise SourceError(f"{request.source} does not exist or is not a file.",
                              hint="Check the path: the file may have been moved or renamed, or not saved yet.")
        what = recipe.name if request.preset else (request.prompt or recipe.name)
        if request.audition is not None:  # its own job, named so beside the full run that may follow it
            what = f"{what} (audition {request.audition:g} s)"
        job_id = self.journal.add(request, what)
        self._events.emit(job_id, request.tag, JobState.queued, 0.0, "Waiting for a free slot")
        self._queue_once(job_id, QueuedJob(request.origin.value, time.time(), 0.0))
        return job_id

    def _queue_once(self, job_id: str, queued: QueuedJob) -> None:
        """Queue a job this engine does not hold yet. The journal watcher may have queued it already (it
        sees every queued job of ours, a new one too) and a worker may be running it: queued again, a second
        worker would run it beside the first, one failing on the other's work files, both paying."""
        with self._queue.lock:
            if not self._queue.holds(job_id):
                self._queue.put(job_id, queued)

    def estimate(self, request: SeparationRequest) -> FileEstimate:
        recipe = recipe_for(request, self._libraries.for_project(request.project_dir))
        if not request.source.is_file():
            raise SourceError(f"{request.source} does not exist or is not a file.",
                              hint="Check the path: the file may have been moved or renamed, or not saved yet.")
        found = estimate(request, recipe, self.settings.prices)
        return found.model_copy(update={"confirm_above": self.settings.confirm_above})

    def cancel(self, job_id: str) -> bool:
        row = self.journal.get(job_id)
        if row is None or row.view.state.finished:
            return False
        self.journal.request_cancel(job_id)
        with self._queue.lock:
            self._cancelled.add(job_id)
            if self._queue.withdraw(job_id):  # not started: cancelled at once, nothing at the service
                self._outcomes.cancelled(row)
            self._queue.wake_all()  # a job waiting for a slot notices the cancel now
        self._outcomes.cancel_at_service(job_id)
        return True

    def get(self, job_id: str) -> JobView | None:
        row = self.journal.get(job_id)
        return row.view if row else None

    def jobs(self, active_only: bool = False) -> list[JobView]:
        return [row.view for row in self.journal.recent(active_only=active_only)]

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        return self._events.subscribe(listener)

    def preset_names(self, project_dir: Path | None = None, include_broken: bool = False) -> list[str]:
        return self._libraries.for_project(project_dir).names(include_broken)

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume unfinished jobs from the journal, then start the workers."""
        for row in self.journal.unfinished():
            self._resume(row)
        for n in range(self.settings.concurrency + self.settings.local_work):
            worker = threading.Thread(target=self._work, name=f"job-worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        watcher = threading.Thread(target=self._watch_journal, name="journal-watch", daemon=True)
        watcher.start()
        self._workers.append(watcher)

    def _resume(self, row: JobRow) -> None:
        if self._rules.submit_was_lost(row):
            self._queue.withdraw(row.view.job_id)
            return
        log.info("resuming job %s (%s, %d accepted request(s))", row.view.job_id, row.view.state,
                 len(self.journal.handles(row.view.job_id)[0]))
        self._queue_once(row.view.job_id, QueuedJob.of(row))

    def stop(self, timeout: float = 3.0) -> None:
        """Stop taking work; in-flight jobs unwind at their next checkpoint and resume on the next start."""
        self._stopping.set()
        held = self._queue.held()
        self._queue.wake_all()
        for job_id in held:  # `sam-bridge status` says so until the next start resumes them
            row = self.journal.get(job_id)
            if row is not None and not row.view.state.finished:
                self.journal.update_progress(job_id, row.view.progress, PAUSED_MESSAGE)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._await_submits()

    def hurry(self) -> None:
        """Asked to stop again: a stop waiting for a submit's answer ends now. Safe in a signal handler."""
        self._hurry = True

    def _await_submits(self) -> None:
        """A submit the service has (it is paid) but whose answer is not here yet: without its request id the
        next start could only fail the job, so the stop waits for the answer, as long as the client would."""
        if not (sending := self._sending.jobs()):
            return
        timeouts = self.pipeline.client.timeouts
        bound = timeouts.connect + timeouts.read
        log.warning("waiting up to %.0f s for the service's answer to the request just sent for job(s) %s, so "
                    "the job is not lost (stop again to quit now)", bound, ", ".join(sorted(sending)))
        until = time.monotonic() + bound
        while (sending := self._sending.jobs()) and not self._hurry and time.monotonic() < until:
            time.sleep(0.1)  # not a blocking wait: a second stop signal is handled at once
        if sending:
            log.warning("stopped without the service's answer for job(s) %s: the next start says how to check "
                        "them", ", ".join(sorted(sending)))
            return
        deadline = time.monotonic() + 1.0  # the answer is recorded; the job's worker pauses it at once
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    @property
    def running_count(self) -> int:
        return self._queue.running_count

    def _watch_journal(self) -> None:
        """Pick up jobs queued or cancelled by other processes (`sam-bridge retry/cancel`)."""
        said: dict[str, float] = {}  # problem -> when it was last logged
        while not self._stopping.wait(self.settings.rescan_interval):
            try:
                self.journal.check_file()
                self._look_at_journal()
            except JournalDamaged:  # the daemon says so once and stops
                return
            except Exception as exc:  # one bad row must not end the watch: orphans would never be adopted
                problem, now = f"{type(exc).__name__}: {exc}", time.monotonic()
                if now - said.get(problem, -WATCH_PROBLEM_EVERY) >= WATCH_PROBLEM_EVERY:
                    if len(said) > 100:  # texts that differ every time: bounded, at worst said again
                        said.clear()
                    said[problem] = now
                    log.error("Could not look at the journal for other processes' work (trying again every "
                              "%g s): %s", self.settings.rescan_interval, problem, exc_info=True)

    def _look_at_journal(self) -> None:
        for row in self.journal.adopt_orphans(self.settings.concurrency, _reachable):  # team: a dead
            self._resume(row)  # daemon's jobs
        if idle := self._queue.idle_slots:  # team: a busy daemon's hot-folder jobs not started yet
            for row in self.journal.take_queued(idle, _reachable):  # (maybe one taken back: still held here)
                self._queue_once(row.view.job_id, QueuedJob.of(row))
        for row in self.journal.unfinished():
            job_id = row.view.job_id
            with self._queue.lock:  # one decision per row: no worker takes the job halfway
                if row.cancel_requested and job_id not in self._cancelled:
                    self._cancelled.add(job_id)
                    if self._queue.withdraw(job_id):
                        self._outcomes.cancelled(row)
                    else:
                        self._outcomes.cancel_at_service(job_id)
                elif row.view.state in (JobState.queued, JobState.waiting) and not self._queue.holds(job_id):
                    self._cancelled.discard(job_id)  # `sam-bridge retry` of a cancelled job
                    self._queue.put(job_id, QueuedJob.of(row))
                elif row.view.state == JobState.waiting and row.not_before <= time.time():
                    self._queue.wake()

    def _work(self) -> None:
        while True:
            job_id = self._queue.take(self._stopping)
            if job_id is None:
                return
            try:
                self._run(job_id)
            except ShuttingDown:
                log.info("job %s paused for shutdown; it resumes on the next start", job_id)
            except JournalDamaged:  # the daemon says so once and stops; the job resumes after a restart
                self._stopping.set()
                self._queue.wake_all()
            except StateDiskFull as exc:  # the job stays as the journal has it: it resumes on the next start
                log.error("job %s: %s %s", job_id, exc.message, exc.hint)
            except JobTakenOver as lost:  # our lease had expired: the other daemon goes on with it
                log.warning("stopped working on %s", lost)
            finally:
                self._sending.end(job_id)  # a submit whose answer never came (SubmitUncertain): no stop waits
                self._queue.release(job_id)

    # -- one job ----------------------------------------------------------------------------------

    def _run(self, job_id: str) -> None:
        row = self.journal.get(job_id)
        if row is None or row.view.state.finished or row.owner != self.journal.owner_name:
            return  # (team: another daemon with a free slot took it before it started here)
        if row.cancel_requested or job_id in self._cancelled:
            self._outcomes.cancelled(row)
            return
        if self._rules.submit_was_lost(row):
            return
        hooks = EngineHooks(row, journal=self.journal, events=self._events, queue=self._queue,
                            cancelled_ids=self._cancelled, stopping=self._stopping, sending=self._sending)
        workdir = self.settings.workroot / job_id
        recipe: Recipe | None = None
        borrowed: dict[int, RequestHandle] = {}
        try:
            recipe = recipe_for(row.request, self._libraries.for_project(row.request.project_dir))
            accepted = self._rules.followable_handles(row, len(recipe.steps))
            hooks.progress(JobState.preparing, 0.0, "Preparing")
            audio_hash, fingerprint = self._rules.source_hash(row, accepted)
            key = dedupe_key(row.request, recipe, audio_hash, self.pipeline.service_name()) \
                if self.settings.dedupe else None
            if key:
                leader = self.journal.active_leader(job_id, key) if not accepted else None
                if leader is not None:  # the same work is under way (in a team: maybe on another machine)
                    self._wait(row, f"Waiting for job {leader} (the same audio, prompts and options): its stems "
                               "are reused, not paid for again.", time.time() + 1.0, count_attempt=False)
                    return
                if accepted:
                    self.journal.set_fields(job_id, dedupe_key=key)
                self._rules.check_still_ours(row)  # the calls above may have waited out a database outage
                if not accepted and self._reuse(row, recipe, key):
                    return
                if not accepted and (borrowed := self._rules.refetch(row, key, len(recipe.steps))):
                    accepted = borrowed  # the earlier job's requests: their results are fetched, not paid
            if not accepted:
                self._budget.reserve(row, recipe)
            elif len(accepted) == len(recipe.steps) and (done := written_before(
                    row.request, recipe, {h.request_id for h in accepted.values()})) is not None:
                log.info("job %s had written its stems before the daemon stopped", job_id)
                self._outcomes.done(row, replace(done, estimated_cost=row.cost))
                return
            result = self.pipeline.run(row.request, recipe, hooks, workdir, resume=accepted, temp_tag=job_id,
                                       source_hash=audio_hash, source_fingerprint=fingerprint)
        except (ShuttingDown, JournalDamaged, JobTakenOver):
            raise
        except Cancelled:
            self._outcomes.cancelled(row)
            clean_workdir(workdir)
        except BudgetWait as wait:
            self._wait(row, str(wait), wait.until, count_attempt=False)
        except AccountLocked as exc:  # every job would fail alike: they wait for the account instead,
            # looking again every minute, without using up the tries a service outage is allowed
            self._wait(row, f"{exc.message} Top up or unlock it at https://fal.ai/dashboard/billing: the job "
                       "goes on by itself then (or cancel it).", time.time() + min(60.0, self.settings.retry_max),
                       count_attempt=False)
        except ServiceUnavailable as exc:
            if self.journal.handles(job_id)[0] or row.attempts < 8:
                self._wait(row, f"{exc.message} Retrying automatically.", None)
            else:
                self._outcomes.failed(row, exc)
        except BridgeError as exc:
            if borrowed and exc.results_unusable:  # the service no longer has them: made anew, once
                log.info("job %s: the earlier results are gone (%s); sending it anew", job_id, exc.message)
                self.journal.clear_steps(job_id, 0, len(recipe.steps) if recipe else 1)
                self.journal.set_fields(job_id, flags=json.dumps([*row.flags, REFETCH_FAILED]))
                self._wait(row, "The earlier identical job's results are gone at the service: sending it anew.",
                           time.time(), count_attempt=False)
                return
            made_requests = bool(self.journal.handles(job_id)[0])  # paid for, even if forgotten just below
            if exc.results_unusable:  # failed at fal, broken, or for other audio: a retry submits anew
                # that step and those after it; the steps before it are fetched again, not paid again
                self.journal.clear_steps(job_id, exc.step or 0, len(recipe.steps) if recipe else 1)
            if isinstance(exc, DiskFull):
                exc.hint = run_again_hint(exc.hint, job_id, sent=made_requests)
            self._outcomes.failed(row, exc, paid=made_requests)
            clean_workdir(workdir)
        except OSError as exc:
            full = self._disk_full(exc, row.request, workdir)
            if full is not None:
                full.hint = run_again_hint(full.hint, job_id, sent=bool(self.journal.handles(job_id)[0]))
            else:
                log.exception("job %s failed unexpectedly", job_id)
                full = BridgeError(f"Internal error: {type(exc).__name__}: {exc}",
                                   hint="Please report this with the daemon log.")
            self._outcomes.failed(row, full)  # requests kept: a retry collects them, at no cost
            clean_workdir(workdir)
        except Exception as exc:  # a bug of ours: the job fails, the daemon keeps going
            log.exception("job %s failed unexpectedly", job_id)
            self._outcomes.failed(row, BridgeError(f"Internal error: {type(exc).__name__}: {exc}",
                                                   hint="Please report this with the daemon log."))
        else:
            self._outcomes.done(row, result)
            clean_workdir(workdir)

    def _disk_full(self, exc: OSError, request: SeparationRequest, workdir: Path) -> BridgeError | None:
        """A full disk (or quota, or read-only disk) anywhere: said in words, naming which folder's disk."""
        where = Path(exc.filename).parent if isinstance(exc.filename, str) else None
        if where is not None and where.is_relative_to(self.settings.workroot.parent):
            return disk_error(exc, self.settings.workroot.parent, "the sam-bridge state folder (work files)")
        if where is None and workdir.exists():  # no file named: the work files are the likeliest
            return disk_error(exc, self.settings.workroot, "the sam-bridge state folder (work files)")
        return disk_error(exc, where or request.source.parent, "the output folder")

    def _wait(self, row: JobRow, message: str, until: float | None, count_attempt: bool = True) -> None:
        until = self._outcomes.waiting(row, message, until, count_attempt)
        self._queue.put(row.view.job_id, QueuedJob(row.view.origin, row.view.created_at, until))

    def _reuse(self, row: JobRow, recipe: Recipe, key: str) -> bool:
        for earlier in self.journal.done_with_dedupe_key(key):
            if earlier.view.job_id == row.view.job_id:
                continue  # its own stems (a daemon that took it over finished it): never copied to itself
            result = reuse_result(row.request, recipe, earlier.view, self.pipeline.service_name())
            if result is not None:
                log.info("job %s reuses the result of job %s (no new request)", row.view.job_id,
                         earlier.view.job_id)
                self._outcomes.done(row, result, reused_from=earlier.view.job_id)
                return True
        return False


def run_again_hint(hint: str, job_id: str, *, sent: bool) -> str:
    """A disk problem's hint (what to fix) completed with how to run the job again, as the facts are: before
    anything was sent a retry runs it again, nothing was paid; once the service had the job, a retry fetches
    its results (or waits for them) without paying again."""
    if sent:
        return (f"{hint} The service already has the job: once that is fixed, `sam-bridge retry {job_id}` "
                "collects its results without paying again.")
    # not "run it again": a request file's or a hot folder's version of a file is one job for good
    return (f"{hint} Nothing had been sent to the service, so nothing was paid: once that is fixed, "
            f"`sam-bridge retry {job_id}` runs it again.")
