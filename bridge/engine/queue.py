"""The engine's scheduling queue: jobs waiting for a worker, and the slots running jobs hold.

FIFO within each way in (origin); between ways in, a worker takes the one with the fewest jobs running,
then the one served least recently — so a hundred files dropped in a hot folder do not starve the REAPER
user's request behind them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bridge.common.errors import Cancelled
from bridge.engine.journal import JobRow


@dataclass(frozen=True)
class QueuedJob:
    """What scheduling needs of a queued job."""

    origin: str
    created: float
    not_before: float

    @classmethod
    def of(cls, row: JobRow) -> QueuedJob:
        return cls(row.view.origin, row.view.created_at, row.not_before)


class FairQueue:
    """Queued jobs (kept in memory: scheduling reads no rows), running jobs and their slots.

    `concurrency` bounds the jobs between start and the end of their service part (upload → download);
    conforming runs outside it, under its own limit (`local_work`), so the next job is at the service
    meanwhile.
    """

    def __init__(self, concurrency: int, local_work: int, rescan_interval: float) -> None:
        self.concurrency, self.rescan_interval = concurrency, rescan_interval
        # Reentrant: the engine holds it across several calls below to make one decision at once.
        self.lock = threading.Condition(threading.RLock())
        self._pending: dict[str, QueuedJob] = {}
        self._running: dict[str, str] = {}  # job id -> fairness key (origin)
        self._last_start: dict[str, float] = {}  # origin -> when it last got a worker
        self._at_service: set[str] = set()
        self._local_slots = threading.BoundedSemaphore(local_work)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def held(self) -> list[str]:
        """Ids of the jobs this engine has, waiting or running."""
        with self.lock:
            return [*self._pending, *self._running]

    @property
    def idle_slots(self) -> int:
        """Service slots no job here is using or waiting for (a team daemon takes queued work then)."""
        with self.lock:
            return max(0, self.concurrency - len(self._at_service) - len(self._pending))

    def put(self, job_id: str, queued: QueuedJob) -> None:
        with self.lock:
            self._pending[job_id] = queued
            self.lock.notify()

    def withdraw(self, job_id: str) -> bool:
        """Take a job out of the queue before a worker got it; False when it was not queued."""
        with self.lock:
            return self._pending.pop(job_id, None) is not None

    def holds(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self._pending or job_id in self._running

    def wake(self) -> None:
        with self.lock:
            self.lock.notify()

    def wake_all(self) -> None:
        with self.lock:
            self.lock.notify_all()

    def take(self, stopping: threading.Event) -> str | None:
        """Block until a job may start (it then holds a service slot); None once `stopping` is set."""
        with self.lock:
            while not stopping.is_set():
                job_id = self._pick()
                if job_id is not None:
                    origin = self._pending.pop(job_id).origin
                    self._running[job_id] = origin
                    self._at_service.add(job_id)
                    self._last_start[origin] = time.monotonic()
                    return job_id
                self.lock.wait(timeout=self.rescan_interval)
            return None

    def _pick(self) -> str | None:
        if len(self._at_service) >= self.concurrency:
            return None
        now = time.time()
        ready = [(job_id, queued) for job_id, queued in self._pending.items() if queued.not_before <= now]
        if not ready:
            return None
        busy = Counter(self._running.values())
        return min(ready, key=lambda item: (busy[item[1].origin], self._last_start.get(item[1].origin, 0.0),
                                            item[1].created))[0]

    def release(self, job_id: str) -> None:
        """The worker is done with the job (finished, failed, waiting or paused)."""
        with self.lock:
            self._running.pop(job_id, None)
            self._at_service.discard(job_id)
            self.lock.notify_all()

    @contextmanager
    def service_slot(self, job_id: str, cancelled: Callable[[], bool]) -> Iterator[None]:
        """The job took a service slot when it was picked; a later step of a stem set takes one again."""
        with self.lock:
            while job_id not in self._at_service:
                if len(self._at_service) < self.concurrency:
                    self._at_service.add(job_id)
                    break
                self.lock.wait(0.2)
                if cancelled():
                    raise Cancelled("Cancelled.")
        try:
            yield
        finally:
            with self.lock:
                self._at_service.discard(job_id)
                self.lock.notify_all()

    @contextmanager
    def local_slot(self, cancelled: Callable[[], bool]) -> Iterator[None]:
        while not self._local_slots.acquire(timeout=0.2):
            if cancelled():
                raise Cancelled("Cancelled.")
        try:
            yield
        finally:
            self._local_slots.release()
