"""The job engine: owns job state (through the journal), the in-flight limit, cancel, resume, dedupe and
the budget; runs every job through the one pipeline. Implements `bridge.jobs.JobSink` for the ways in.

Scheduling: FIFO within each way in (origin); between ways in, a worker takes the one with the fewest jobs
running, then the one served least recently — so a hundred files dropped in a hot folder do not starve
the REAPER user's request behind them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import soundfile as sf

from bridge.audio_source import source_sha256
from bridge.cost import PriceTable
from bridge.dedupe import dedupe_key, reuse_result, written_before
from bridge.errors import (
    BridgeError,
    Cancelled,
    JobFailed,
    ServiceJobFailed,
    ServiceUnavailable,
    SourceError,
    SubmitUncertain,
)
from bridge.fal_client import RequestHandle
from bridge.jobs import JobEvent, JobSink, JobState, JobView, RequestRejected
from bridge.journal import JobRow, Journal
from bridge.pipeline import JobResult, Pipeline, clean_workdir
from bridge.presets import PresetLibrary, Recipe, recipe_for
from bridge.request import SeparationRequest

log = logging.getLogger(__name__)

ACTIVE = (JobState.queued, JobState.waiting, JobState.preparing, JobState.uploading, JobState.submitted,
          JobState.running, JobState.downloading, JobState.conforming)


class ShuttingDown(BaseException):
    """Raised inside a job when the daemon stops: the job keeps its journal state and resumes later."""


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
    local_work: int = 1  # jobs conforming at once: CPU and memory heavy, and no faster in parallel on 2 cores


class JobEngine(JobSink):
    def __init__(self, journal: Journal, pipeline: Pipeline, library: PresetLibrary,
                 settings: EngineSettings) -> None:
        self.journal, self.pipeline, self.library, self.settings = journal, pipeline, library, settings
        self._cond = threading.Condition()
        self._pending: dict[str, _Queued] = {}  # kept in memory: scheduling reads no rows
        self._running: dict[str, str] = {}  # job id -> fairness key (origin)
        self._last_start: dict[str, float] = {}  # origin -> when it last got a worker
        self._cancelled: set[str] = set()
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        # `concurrency` bounds the jobs between start and the end of their service part (upload → download);
        # conforming runs outside it, under its own limit, so the next job is at the service meanwhile.
        self._at_service: set[str] = set()
        self._local_slots = threading.BoundedSemaphore(settings.local_work)
        self._budget_lock = threading.Lock()

    # -- JobSink ----------------------------------------------------------------------------------

    def submit(self, request: SeparationRequest) -> str:
        if self._stopping.is_set():
            raise RequestRejected("sam-bridge is shutting down; send the request again after it restarts.")
        if request.idempotency_key:
            for row in reversed(self.journal.by_idempotency_key(request.idempotency_key)):
                if row.view.state in ACTIVE or row.view.state == JobState.done:
                    return row.view.job_id
        recipe = recipe_for(request, self.library)  # PresetError for unknown/broken presets, right away
        if not request.source.is_file():
            raise SourceError(f"{request.source} does not exist or is not a file.",
                              hint="Check the path; the daemon needs an absolute path.")
        job_id = self.journal.add(request, recipe.name if request.preset else (request.prompt or recipe.name))
        self._emit(job_id, request.tag, JobState.queued, 0.0, "Waiting for a free slot")
        with self._cond:
            self._pending[job_id] = _Queued(request.origin.value, time.time(), 0.0)
            self._cond.notify()
        return job_id

    def cancel(self, job_id: str) -> bool:
        row = self.journal.get(job_id)
        if row is None or row.view.state.finished:
            return False
        self.journal.request_cancel(job_id)
        with self._cond:
            self._cancelled.add(job_id)
            if job_id in self._pending:  # not started: cancelled at once, nothing at the service
                del self._pending[job_id]
                self._finish_cancelled(row)
            self._cond.notify_all()
        self._cancel_at_service(job_id)
        return True

    def _cancel_at_service(self, job_id: str) -> None:
        """Cancel the job's accepted requests; the job's status stream then ends and the job unwinds."""
        for handle in self.journal.handles(job_id)[0].values():
            threading.Thread(target=self.pipeline.client.cancel, args=(handle,), name="cancel",
                             daemon=True).start()

    def get(self, job_id: str) -> JobView | None:
        row = self.journal.get(job_id)
        return row.view if row else None

    def jobs(self, active_only: bool = False) -> list[JobView]:
        return [row.view for row in self.journal.recent(active_only=active_only)]

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def preset_names(self) -> list[str]:
        return self.library.names()

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume unfinished jobs from the journal, then start the workers."""
        for row in self.journal.unfinished():
            if self._submit_was_lost(row):
                self._pending.pop(row.view.job_id, None)
                continue
            log.info("resuming job %s (%s, %d accepted request(s))", row.view.job_id, row.view.state,
                     len(self.journal.handles(row.view.job_id)[0]))
            self._pending[row.view.job_id] = _Queued.of(row)
        for n in range(self.settings.concurrency + self.settings.local_work):
            worker = threading.Thread(target=self._work, name=f"job-worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        watcher = threading.Thread(target=self._watch_journal, name="journal-watch", daemon=True)
        watcher.start()
        self._workers.append(watcher)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop taking work; in-flight jobs unwind at their next checkpoint and resume on the next start."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    @property
    def running_count(self) -> int:
        return len(self._running)

    # -- scheduling -------------------------------------------------------------------------------

    def _next_job(self) -> str | None:
        with self._cond:
            while not self._stopping.is_set():
                job_id = self._pick()
                if job_id is not None:
                    origin = self._pending.pop(job_id).origin
                    self._running[job_id] = origin
                    self._at_service.add(job_id)
                    self._last_start[origin] = time.monotonic()
                    return job_id
                self._cond.wait(timeout=self.settings.rescan_interval)
            return None

    def _pick(self) -> str | None:
        if len(self._at_service) >= self.settings.concurrency:
            return None
        now = time.time()
        ready = [(job_id, queued) for job_id, queued in self._pending.items() if queued.not_before <= now]
        if not ready:
            return None
        busy = Counter(self._running.values())
        return min(ready, key=lambda item: (busy[item[1].origin], self._last_start.get(item[1].origin, 0.0),
                                            item[1].created))[0]

    def _watch_journal(self) -> None:
        """Pick up jobs queued or cancelled by other processes (`sam-bridge retry/cancel`)."""
        while not self._stopping.wait(self.settings.rescan_interval):
            for row in self.journal.unfinished():
                job_id = row.view.job_id
                with self._cond:
                    if row.cancel_requested and job_id not in self._cancelled:
                        self._cancelled.add(job_id)
                        if job_id in self._pending:
                            del self._pending[job_id]
                            self._finish_cancelled(row)
                        else:
                            self._cancel_at_service(job_id)
                    elif (row.view.state in (JobState.queued, JobState.waiting) and job_id not in self._pending
                          and job_id not in self._running):
                        self._cancelled.discard(job_id)  # `sam-bridge retry` of a cancelled job
                        self._pending[job_id] = _Queued.of(row)
                        self._cond.notify()
                    elif row.view.state == JobState.waiting and row.not_before <= time.time():
                        self._cond.notify()

    def _work(self) -> None:
        while True:
            job_id = self._next_job()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except ShuttingDown:
                log.info("job %s paused for shutdown; it resumes on the next start", job_id)
            finally:
                with self._cond:
                    self._running.pop(job_id, None)
                    self._at_service.discard(job_id)
                    self._cond.notify_all()

    # -- one job ----------------------------------------------------------------------------------

    def _run(self, job_id: str) -> None:
        row = self.journal.get(job_id)
        if row is None or row.view.state.finished:
            return
        if row.cancel_requested or job_id in self._cancelled:
            self._finish_cancelled(row)
            return
        if self._submit_was_lost(row):
            return
        hooks = _EngineHooks(self, row)
        workdir = self.settings.workroot / job_id
        try:
            recipe = recipe_for(row.request, self.library)
            accepted, _ = self.journal.handles(job_id)
            hooks.progress(JobState.preparing, 0.0, "Preparing")
            audio_hash = source_sha256(row.request.source)  # read once: dedupe key and manifest share it
            key = dedupe_key(row.request, recipe, audio_hash) if self.settings.dedupe else None
            if key:
                self.journal.set_fields(job_id, dedupe_key=key)
                if not accepted and self._reuse(row, recipe, key):
                    return
            if not accepted:
                self._check_budget(row, recipe)
            elif len(accepted) == len(recipe.steps) and (done := written_before(
                    row.request, recipe, {h.request_id for h in accepted.values()})) is not None:
                log.info("job %s had written its stems before the daemon stopped", job_id)
                self._finish_done(row, replace(done, estimated_cost=row.cost))
                return
            result = self.pipeline.run(row.request, recipe, hooks, workdir, resume=accepted, temp_tag=job_id,
                                       source_hash=audio_hash)
        except ShuttingDown:
            raise
        except Cancelled:
            self._finish_cancelled(row)
            clean_workdir(workdir)
        except _BudgetWait as wait:
            self._wait(row, str(wait), wait.until, count_attempt=False)
        except ServiceUnavailable as exc:
            if self.journal.handles(job_id)[0] or row.attempts < 8:
                self._wait(row, f"{exc.message} Retrying automatically.", None)
            else:
                self._fail(row, exc)
        except ServiceJobFailed as exc:  # the request ended in an error at fal: a retry submits it again
            self.journal.clear_steps(job_id)
            self._fail(row, exc)
            clean_workdir(workdir)
        except BridgeError as exc:
            self._fail(row, exc)
            clean_workdir(workdir)
        except Exception as exc:  # a bug of ours: the job fails, the daemon keeps going
            log.exception("job %s failed unexpectedly", job_id)
            self._fail(row, BridgeError(f"Internal error: {type(exc).__name__}: {exc}",
                                        hint="Please report this with the daemon log."))
        else:
            self._finish_done(row, result)
            clean_workdir(workdir)

    def _submit_was_lost(self, row: JobRow) -> bool:
        """A step marked 'submitting' with no request id: it may have landed. Never resend it blindly."""
        accepted, uncertain = self.journal.handles(row.view.job_id)
        if not [step for step in uncertain if step not in accepted]:
            return False
        self._fail(row, SubmitUncertain(
            "sam-bridge lost the answer while submitting this job, so it cannot tell whether the service "
            "accepted it.", hint=f"Check your fal dashboard; `sam-bridge retry {row.view.job_id}` submits it "
            "again (it may be charged twice if it did land)."))
        return True

    def _reuse(self, row: JobRow, recipe: Recipe, key: str) -> bool:
        for earlier in self.journal.done_with_dedupe_key(key):
            result = reuse_result(row.request, recipe, earlier.view)
            if result is not None:
                log.info("job %s reuses the result of job %s (no new request)", row.view.job_id,
                         earlier.view.job_id)
                self._finish_done(row, result, reused_from=earlier.view.job_id)
                return True
        return False

    def _check_budget(self, row: JobRow, recipe: Recipe) -> None:
        budget = self.settings.daily_budget
        if budget is None:
            return
        try:
            seconds = row.request.length or sf.info(str(row.request.source)).duration
        except (RuntimeError, OSError):
            return  # the pipeline reports the unreadable source properly
        estimate = sum(self.settings.prices.estimate(seconds, s.options.reranking_candidates) for s in recipe.steps)
        midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
        with self._budget_lock:  # check and reserve at once: parallel workers can't all squeeze in
            self._reserve_budget(row, budget, estimate, midnight)

    def _reserve_budget(self, row: JobRow, budget: float, estimate: float, midnight: datetime) -> None:
        spent = self.journal.spent_since(midnight.timestamp(), exclude=row.view.job_id)
        if spent + estimate > budget:
            tomorrow = (midnight + timedelta(days=1)).timestamp()
            raise _BudgetWait(
                f"Daily budget reached: {spent:.2f} of {budget:.2f} {self.settings.prices.currency} spent today, "
                f"this job needs about {estimate:.2f}. It waits until tomorrow, or raise daily_budget in the "
                "config.", until=min(tomorrow, time.time() + 60))
        self.journal.set_fields(row.view.job_id, cost=estimate)

    # -- outcomes ---------------------------------------------------------------------------------

    def _finish_done(self, row: JobRow, result: JobResult, reused_from: str | None = None) -> None:
        stems = {label: str(path) for label, path in result.stems.items()}
        message = "Done" + (f" (reused the result of job {reused_from})" if reused_from else "")
        self.journal.set_state(
            row.view.job_id, JobState.done, 1.0, message,
            result=_json({"stems": stems, "manifest": str(result.manifest)}),
            flags=_json(result.flags), cost=0.0 if reused_from else result.estimated_cost, error=None)
        self._emit(row.view.job_id, row.view.tag, JobState.done, 1.0, message, stems=stems,
                   manifest=str(result.manifest), flags=tuple(result.flags))

    def _finish_cancelled(self, row: JobRow) -> None:
        job_id = row.view.job_id
        self._cancel_at_service(job_id)  # also when it was waiting, or cancelled while the daemon was down
        accepted = self.journal.handles(job_id)[0]
        self.journal.clear_steps(job_id)  # cancelled at fal: a retry must submit again
        self.journal.set_state(job_id, JobState.cancelled, None, "Cancelled",
                               **({} if accepted else {"cost": 0.0}))
        self._emit(row.view.job_id, row.view.tag, JobState.cancelled, self._progress_now(row), "Cancelled",
                   error="Cancelled")

    def _fail(self, row: JobRow, exc: BridgeError) -> None:
        text = str(exc)
        log.warning("job %s failed: %s", row.view.job_id, exc.message)
        paid = bool(self.journal.handles(row.view.job_id)[0]) or isinstance(exc, (SubmitUncertain, JobFailed))
        self.journal.set_state(row.view.job_id, JobState.failed, None, exc.message, error=text,
                               **({} if paid else {"cost": 0.0}))
        self._emit(row.view.job_id, row.view.tag, JobState.failed, self._progress_now(row), exc.message,
                   error=text)

    def _progress_now(self, row: JobRow) -> float:
        """The job's progress as journalled now (`row` may have been read when the job started)."""
        latest = self.journal.get(row.view.job_id)
        return latest.view.progress if latest else row.view.progress

    def _wait(self, row: JobRow, message: str, until: float | None, count_attempt: bool = True) -> None:
        attempts = row.attempts + (1 if count_attempt else 0)
        if until is None:
            until = time.time() + min(self.settings.retry_base * 2 ** max(attempts - 1, 0), self.settings.retry_max)
        self.journal.set_state(row.view.job_id, JobState.waiting, None, message, attempts=attempts,
                               not_before=until)
        self._emit(row.view.job_id, row.view.tag, JobState.waiting, self._progress_now(row), message)
        with self._cond:
            self._pending[row.view.job_id] = _Queued(row.view.origin, row.view.created_at, until)

    def _emit(self, job_id: str, tag: str, state: JobState, progress: float, message: str,
              **extra: object) -> None:
        event = JobEvent(job_id=job_id, tag=tag, state=state, progress=progress, message=message,
                         **extra)  # type: ignore[arg-type]
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a job event listener failed")


@dataclass(frozen=True)
class _Queued:
    """What scheduling needs of a queued job."""

    origin: str
    created: float
    not_before: float

    @classmethod
    def of(cls, row: JobRow) -> _Queued:
        return cls(row.view.origin, row.view.created_at, row.not_before)


class _BudgetWait(Exception):
    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until


class _EngineHooks:
    """The pipeline's view of the engine: journal first, then tell the ways in."""

    def __init__(self, engine: JobEngine, row: JobRow) -> None:
        self.engine, self.row = engine, row
        self.job_id, self.tag = row.view.job_id, row.view.tag
        self._state: JobState | None = None
        self._last_emit = 0.0
        self._last_cancel_check = 0.0

    def progress(self, state: JobState, fraction: float, message: str) -> None:
        now = time.monotonic()
        if state != self._state:
            self._state = state
            self.engine.journal.set_state(self.job_id, state, fraction, message)
        elif now - self._last_emit < 0.2:
            return  # progress events are throttled; state changes never are
        else:
            self.engine.journal.update_progress(self.job_id, fraction, message)
        self._last_emit = now
        self.engine._emit(self.job_id, self.tag, state, fraction, message)

    def submitting(self, step: int) -> None:
        self.engine.journal.mark_submitting(self.job_id, step)

    def not_submitted(self, step: int) -> None:
        self.engine.journal.unmark_submitting(self.job_id, step)

    @contextmanager
    def service_slot(self) -> Iterator[None]:
        """The job took a service slot when it was picked; a later step of a stem set takes one again."""
        engine = self.engine
        with engine._cond:
            while self.job_id not in engine._at_service:
                if len(engine._at_service) < engine.settings.concurrency:
                    engine._at_service.add(self.job_id)
                    break
                engine._cond.wait(0.2)
                if self.cancelled():
                    raise Cancelled("Cancelled.")
        try:
            yield
        finally:
            with engine._cond:
                engine._at_service.discard(self.job_id)
                engine._cond.notify_all()

    @contextmanager
    def local_slot(self) -> Iterator[None]:
        while not self.engine._local_slots.acquire(timeout=0.2):
            if self.cancelled():
                raise Cancelled("Cancelled.")
        try:
            yield
        finally:
            self.engine._local_slots.release()

    def service_log(self, line: str) -> None:
        pass  # the pipeline logs each line; status files and OSC carry the latest in their message

    def submitted(self, step: int, handle: RequestHandle) -> None:
        self.engine.journal.mark_submitted(self.job_id, step, handle)

    def cancelled(self) -> bool:
        if self.engine._stopping.is_set():
            raise ShuttingDown()
        if self.job_id in self.engine._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check > 1.0:  # `sam-bridge cancel` from another process
            self._last_cancel_check = now
            row = self.engine.journal.get(self.job_id)
            if row and row.cancel_requested:
                self.engine._cancelled.add(self.job_id)
                return True
        return False


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)
