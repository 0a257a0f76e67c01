"""Progress that moves while the service works: from its chunk log lines ("… chunk 3/11") and, between
them, from the time a chunk is expected to take; plus the ETA and the upload's size and speed.

The service splits long audio into chunks and logs each as it starts. Before the second chunk line the
time per chunk is a prior (`PRIOR_SERVICE_RATE` seconds of service per second of audio, plus a fixed
start); after it, the measured mean time between chunk lines. Inside a chunk the fraction creeps towards
that chunk's end but never reaches it, so the bar never runs ahead of what the service has said.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.common.jobs import JobState
from bridge.fal.client import QueueStatus

log = logging.getLogger(__name__)

CHUNK_LINE = re.compile(r"\bchunk\s+(\d+)\s*(?:/|of)\s*(\d+)", re.I)
PRIOR_SERVICE_RATE = 0.5  # seconds of service per second of audio before any chunk has been timed
PRIOR_SERVICE_START = 5.0  # seconds the service takes before its first chunk (loading the model, audio)
CREEP_LIMIT = 0.95  # share of the current chunk the bar may reach before the next chunk line


FAL_CHUNK_SECONDS, FAL_CHUNK_OVERLAP = 60.0, 5.0  # the service's defaults (its schema)


@dataclass
class ServiceClock:
    """How far the service is, 0..1, and the seconds it should still take, for one request."""

    audio_seconds: float
    # max_chunk_duration and chunk_overlap as sent; None (not sent) means fal's own defaults, 60 s and 5 s
    chunk_seconds: float | None = None
    overlap: float | None = None
    now: float = field(default_factory=time.monotonic)
    chunk: int = 0  # the chunk the service said it started (1-based); 0 before the first line
    chunks: int = 0
    chunk_started: float = 0.0
    first_chunk_at: float | None = None

    def __post_init__(self) -> None:
        self.began = self.now
        self.chunk_seconds = FAL_CHUNK_SECONDS if self.chunk_seconds is None else self.chunk_seconds
        self.overlap = FAL_CHUNK_OVERLAP if self.overlap is None else self.overlap
        step = max(self.chunk_seconds - self.overlap, 1e-3)
        longer = self.audio_seconds - self.chunk_seconds
        self.chunks = 1 if longer <= 0 else 1 + math.ceil(longer / step)

    def saw_line(self, line: str, now: float | None = None) -> None:
        match = CHUNK_LINE.search(line)
        if match is None:
            return
        now = time.monotonic() if now is None else now
        index, total = int(match.group(1)), int(match.group(2))
        if total <= 0 or (index <= self.chunk and total == self.chunks):
            return
        self.chunk, self.chunks, self.chunk_started = min(index, total), total, now
        if self.first_chunk_at is None:
            self.first_chunk_at = now

    def per_chunk(self, now: float) -> float:
        """Seconds one chunk takes: measured once two chunk lines were seen, else the prior."""
        if self.first_chunk_at is not None and self.chunk > 1:
            return max((self.chunk_started - self.first_chunk_at) / (self.chunk - 1), 0.05)
        return max(PRIOR_SERVICE_RATE * self.audio_seconds / self.chunks, 0.05)

    def fraction(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self.chunk == 0:  # loading: creep towards the first chunk's start, a small share
            start = min((now - self.began) / PRIOR_SERVICE_START, 1.0) * CREEP_LIMIT
            return 0.05 * start
        done = (self.chunk - 1) / self.chunks
        within = min((now - self.chunk_started) / self.per_chunk(now), 1.0) * CREEP_LIMIT
        return 0.05 + 0.95 * (done + within / self.chunks)

    def eta(self, now: float | None = None) -> float:
        """Seconds the service should still take."""
        now = time.monotonic() if now is None else now
        per_chunk = self.per_chunk(now)
        if self.chunk == 0:
            return max(PRIOR_SERVICE_START - (now - self.began), 0.0) + per_chunk * self.chunks
        in_chunk = max(per_chunk - (now - self.chunk_started), 0.0)
        return in_chunk + per_chunk * (self.chunks - self.chunk)


@dataclass
class Transfer:
    """Bytes moved so far, for "12.3 of 45.6 MB at 3.2 MB/s" and the time left."""

    began: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def speed(self, now: float | None = None) -> float:
        elapsed = (time.monotonic() if now is None else now) - self.began
        return self.done / elapsed if elapsed > 0.05 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        speed = self.speed(now)
        return (self.total - self.done) / speed if speed > 0 else None

    def describe(self, verb: str) -> str:
        speed = self.speed()
        rate = f" at {speed / 1e6:.1f} MB/s" if speed > 0 else ""
        return f"{verb} {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB{rate}"


class ServiceTicker:
    """While the service works (`running` set), calls `tick` every `interval` seconds from a thread of its
    own, so the bar and the ETA move between the service's log lines. Whatever `tick` raises (a cancel, a
    stop signal) is left to the job's own thread, which sees it at its next check."""

    def __init__(self, running: threading.Event, tick: Callable[[], None], interval: float = 0.5) -> None:
        self.running, self.tick, self.interval = running, tick, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-ticker", daemon=True)

    def __enter__(self) -> ServiceTicker:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.running.is_set():
                try:
                    self.tick()
                except BaseException:
                    log.debug("progress tick failed", exc_info=True)


class StatusFollower:
    """Turns the service's status answers into progress: its log lines (kept in `logs`, each passed to
    `on_line` once), the queue position, and while it works the chunk it is at, with the ETA. `tick` is
    also the ticker's: it measures and reports under `lock`, so the bar never steps back."""

    def __init__(self, clock: ServiceClock, logs: list[str],
                 report: Callable[..., None], lock: threading.RLock, on_line: Callable[[str], None]) -> None:
        self.clock, self.logs, self.report, self.lock, self.on_line = clock, logs, report, lock, on_line
        self.running = threading.Event()

    def on_status(self, status: QueueStatus) -> None:
        for line in status.logs[len(self.logs):]:
            self.logs.append(line.message)
            self.clock.saw_line(line.message)
            self.on_line(line.message)
        if status.state == "IN_QUEUE":
            position = status.queue_position
            self.report(JobState.running, 0.0, f"In the service's queue (position {position})"
                        if position is not None else "In the service's queue")
        elif status.state == "IN_PROGRESS":
            self.running.set()
            self.tick()

    def tick(self) -> None:
        with self.lock:
            clock = self.clock
            # the chunk first: a long prompt in the service's line would push it out of a narrow bar
            message = (f"Separating chunk {clock.chunk}/{clock.chunks}" if clock.chunk
                       else self.logs[-1] if self.logs else "Separating")
            self.report(JobState.running, clock.fraction(), message, eta=clock.eta())
