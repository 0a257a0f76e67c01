"""How a job's end (done, cancelled, failed) or pause (waiting) is journalled, then told to the ways in."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bridge.common.errors import BridgeError, JobFailed, SubmitUncertain
from bridge.common.jobs import JobState
from bridge.engine.events import JobEvents
from bridge.engine.journal import JobJournal, JobRow
from bridge.engine.manifest import part_seconds
from bridge.engine.pipeline_hooks import JobResult
from bridge.fal.client import RequestHandle
from bridge.os_service.macos_privacy import job_error_hint, service_program

log = logging.getLogger(__name__)


class JobOutcomes:
    def __init__(self, journal: JobJournal, events: JobEvents, cancel_request: Callable[[RequestHandle], object],
                 retry_base: float, retry_max: float) -> None:
        self.journal, self.events, self.cancel_request = journal, events, cancel_request
        self.retry_base, self.retry_max = retry_base, retry_max

    def cancel_at_service(self, job_id: str) -> None:
        """Cancel the job's accepted requests; the job's status stream then ends and the job unwinds."""
        for handle in self.journal.handles(job_id)[0].values():
            threading.Thread(target=self.cancel_request, args=(handle,), name="cancel", daemon=True).start()

    def done(self, row: JobRow, result: JobResult, reused_from: str | None = None) -> None:
        stems = {label: str(path) for label, path in result.stems.items()}
        message = "Done" + (f" (reused the result of job {reused_from})" if reused_from else "")
        self.journal.set_state(
            row.view.job_id, JobState.done, 1.0, message,
            result=_json({"stems": stems, "manifest": str(result.manifest)}),
            flags=_json(result.flags), cost=0.0 if reused_from else result.estimated_cost, error=None)
        self.events.emit(row.view.job_id, row.view.tag, JobState.done, 1.0, message, stems=stems,
                         manifest=str(result.manifest), flags=tuple(result.flags), origin=row.view.origin,
                         part=part_seconds(result.manifest))

    def cancelled(self, row: JobRow) -> None:
        job_id = row.view.job_id
        self.cancel_at_service(job_id)  # also when it was waiting, or cancelled while the daemon was down
        accepted = self.journal.handles(job_id)[0]
        self.journal.clear_steps(job_id)  # cancelled at fal: a retry must submit again
        self.journal.set_state(job_id, JobState.cancelled, None, "Cancelled",
                               **({} if accepted else {"cost": 0.0}))
        self.events.emit(row.view.job_id, row.view.tag, JobState.cancelled, self._progress_now(row), "Cancelled",
                         error="Cancelled", origin=row.view.origin)

    def failed(self, row: JobRow, exc: BridgeError, paid: bool = False) -> None:
        """`paid`: requests were made for it (its estimated cost stays counted against the budget)."""
        text = str(exc)
        # macOS refused the service a protected folder: the exact grant, in the job's own error
        if grant := job_error_hint(text, Path.home(), service_program(), sys.platform):
            text = f"{text}\n{grant}"
        log.warning("job %s failed: %s", row.view.job_id, exc.message)
        paid = paid or bool(self.journal.handles(row.view.job_id)[0]) or isinstance(exc, (SubmitUncertain, JobFailed))
        self.journal.set_state(row.view.job_id, JobState.failed, None, exc.message, error=text,
                               **({} if paid else {"cost": 0.0}))
        self.events.emit(row.view.job_id, row.view.tag, JobState.failed, self._progress_now(row), exc.message,
                         error=text, origin=row.view.origin)

    def waiting(self, row: JobRow, message: str, until: float | None, count_attempt: bool = True) -> float:
        """Journal the job as waiting; returns when it may run again (backing off when `until` is None).

        A job with no request at the service gives back its budget reservation while it waits (it reserves
        again when it runs), so it cannot hold other jobs back with money nobody spent."""
        attempts = row.attempts + (1 if count_attempt else 0)
        if until is None:
            until = time.time() + min(self.retry_base * 2 ** max(attempts - 1, 0), self.retry_max)
        unpaid = {} if self.journal.handles(row.view.job_id)[0] else {"cost": 0.0}
        self.journal.set_state(row.view.job_id, JobState.waiting, None, message, attempts=attempts,
                               not_before=until, **unpaid)
        self.events.emit(row.view.job_id, row.view.tag, JobState.waiting, self._progress_now(row), message)
        return until

    def _progress_now(self, row: JobRow) -> float:
        """The job's progress as journalled now (`row` may have been read when the job started)."""
        latest = self.journal.get(row.view.job_id)
        return latest.view.progress if latest else row.view.progress


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)
