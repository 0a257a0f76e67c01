"""The pipeline's view of the engine (`bridge.engine.pipeline.Hooks`): journal first, then tell the ways in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.common.jobs import JobState
from bridge.engine.events import JobEvents
from bridge.engine.journal import JobJournal, JobRow
from bridge.engine.queue import FairQueue
from bridge.fal.client import RequestHandle


class ShuttingDown(BaseException):
    """Raised inside a job when the daemon stops: the job keeps its journal state and resumes later."""


class SubmitsInFlight:
    """The jobs whose submit is sent and whose answer (the request id) is not recorded yet. A stop waits for
    them: the service has the request (it is paid), and without its id the job could only fail."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: set[str] = set()

    def begin(self, job_id: str, stopping: threading.Event) -> bool:
        with self._lock:  # with stop's look at the set: a submit starts before the stop sees it, or not at all
            if stopping.is_set():
                return False
            self._jobs.add(job_id)
            return True

    def end(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)

    def jobs(self) -> set[str]:
        with self._lock:
            return set(self._jobs)


class EngineHooks:
    def __init__(self, row: JobRow, *, journal: JobJournal, events: JobEvents, queue: FairQueue,
                 cancelled_ids: set[str], stopping: threading.Event, sending: SubmitsInFlight) -> None:
        self.row, self.job_id, self.tag = row, row.view.job_id, row.view.tag
        self.journal, self.events, self.queue = journal, events, queue
        self.cancelled_ids, self.stopping = cancelled_ids, stopping  # shared with the engine, not copies
        self.sending = sending
        self._state: JobState | None = None
        self._last_emit = 0.0
        self._last_cancel_check = 0.0

    def progress(self, state: JobState, fraction: float, message: str, eta: float | None = None) -> None:
        if self.stopping.is_set():
            return  # paused: the journal says so until the next start, whatever the job's threads still report
        now = time.monotonic()
        if state != self._state:
            self._state = state
            self.journal.set_state(self.job_id, state, fraction, message)
        elif now - self._last_emit < 0.2:
            return  # progress events are throttled; state changes never are
        else:
            self.journal.update_progress(self.job_id, fraction, message)
        self._last_emit = now
        self.events.emit(self.job_id, self.tag, state, fraction, message, eta=eta)

    def submitting(self, step: int) -> None:
        if not self.sending.begin(self.job_id, self.stopping):  # a stop came first: nothing new is paid for
            raise ShuttingDown()
        self.journal.mark_submitting(self.job_id, step)

    def not_submitted(self, step: int) -> None:
        self.sending.end(self.job_id)
        self.journal.unmark_submitting(self.job_id, step)

    @contextmanager
    def service_slot(self) -> Iterator[None]:
        with self.queue.service_slot(self.job_id, self.cancelled):
            yield

    @contextmanager
    def local_slot(self) -> Iterator[None]:
        with self.queue.local_slot(self.cancelled):
            yield

    def service_log(self, line: str) -> None:
        pass  # the pipeline logs each line; status files and OSC carry the latest in their message

    def submitted(self, step: int, handle: RequestHandle) -> None:
        self.journal.mark_submitted(self.job_id, step, handle)
        self.sending.end(self.job_id)  # its request id is kept: a stop need not wait for it any more

    def cancelled(self) -> bool:
        if self.stopping.is_set():
            raise ShuttingDown()
        if self.job_id in self.cancelled_ids:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check > 1.0:  # `sam-bridge cancel` from another process
            self._last_cancel_check = now
            row = self.journal.get(self.job_id)
            if row and row.cancel_requested:
                self.cancelled_ids.add(self.job_id)
                return True
        return False

    def cancel_requested(self) -> bool:
        row = self.journal.get(self.job_id)
        if row and row.cancel_requested:
            self.cancelled_ids.add(self.job_id)
            return True
        return self.job_id in self.cancelled_ids
