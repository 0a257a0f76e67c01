"""Jobs and workers with fal's queue semantics: IN_QUEUE (with positions), IN_PROGRESS (with logs),
COMPLETED (with a result, or an error and error_type).

How a finished job answers `GET .../requests/{id}` (the result):
  success                          200  model output
  input unreadable (fetch/decode)  422  {"detail": [{"loc": ["body", "audio_url"], "msg", "type"}]}
  fail_job fault / internal error  500  {"detail": message}
  cancelled (client_cancelled)     499  {"detail": "Request was cancelled"} + X-Fal-Error-Type
  start timeout (request_timeout)  504  {"detail": "Request timed out", ...}
                                        + X-Fal-Error-Type, X-Fal-Request-Timeout-Type: user
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.local_service.faults import Faults
from bridge.local_service.inputs import AudioSource, ModelInput, SpanSeparateInput
from bridge.local_service.separator import (
    SAMPLE_RATE,
    AudioDecodeError,
    SeparationSpec,
    chunk_starts,
    probe,
    separate,
)
from bridge.local_service.storage import FileStore, StoredFile

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
APP_PATH = "fal-ai/sam-audio"
CANCELLED = "Request was cancelled"


class JobStopped(Exception):
    """The job was cancelled, or the service is stopping."""


@dataclass
class Job:
    request_id: str
    endpoint: str
    model_input: ModelInput
    source: AudioSource
    order: tuple[int, int]  # (priority: 0 normal / 1 low, submit sequence)
    start_deadline: float | None
    state: str = QUEUED
    logs: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None
    result_status: int = 200
    result_body: Any = None
    result_headers: dict[str, str] = field(default_factory=dict)
    version: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class QueueSettings:
    processing_delay: float = 0.0  # service seconds per second of input audio
    job_time: float = 0.0  # fixed extra seconds per job
    concurrency: int = 2


class JobQueue:
    def __init__(self, store: FileStore, faults: Faults, settings: QueueSettings) -> None:
        if settings.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._store = store
        self._faults = faults
        self._settings = settings
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._pending: list[Job] = []
        self._stopping = False
        self._sequence = 0
        self._workers: list[threading.Thread] = []
        self._counts: Counter[str] = Counter()
        self._by_audio: Counter[str] = Counter()
        self._running = 0
        self._max_running = 0

    def start(self) -> None:
        for number in range(self._settings.concurrency):
            worker = threading.Thread(target=self._work, name=f"local-fal-worker-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.set()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)
        self._workers.clear()

    # -- calls from the HTTP side -----------------------------------------------------------------

    def submit(self, endpoint: str, model_input: ModelInput, source: AudioSource, *,
               low_priority: bool = False, start_timeout: float | None = None) -> tuple[Job, int]:
        """Queue a job; returns it with its queue position (0 = next to start)."""
        with self._cond:
            self._sequence += 1
            deadline = time.monotonic() + start_timeout if start_timeout and start_timeout > 0 else None
            job = Job(uuid.uuid4().hex, endpoint, model_input, source, (int(low_priority), self._sequence),
                      deadline)
            self._jobs[job.request_id] = job
            bisect.insort(self._pending, job, key=lambda queued: queued.order)
            self._counts["submits"] += 1
            self._counts["submits_low" if low_priority else "submits_normal"] += 1
            self._by_audio[source.sha256] += 1
            position = self._pending.index(job)
            self._cond.notify_all()
        log.info("local fal: accepted %s request %s", endpoint, job.request_id)
        return job, position

    def find(self, request_id: str) -> Job | None:
        with self._cond:
            self._expire_overdue()
            return self._jobs.get(request_id)

    def urls(self, request_id: str) -> dict[str, str]:
        base = f"{self._store.base_url}/{APP_PATH}/requests/{request_id}"
        return {"request_id": request_id, "response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    def status(self, job: Job, with_logs: bool) -> tuple[int, dict[str, Any], int]:
        """(HTTP status, status body, the job's version for `wait_for_change`)."""
        with self._cond:
            self._expire_overdue()
            body: dict[str, Any] = {"status": job.state, **self.urls(job.request_id)}
            body["logs"] = list(job.logs) if with_logs else None
            if job.state == QUEUED:
                body["queue_position"] = self._pending.index(job)
                return 202, body, job.version
            if job.state == RUNNING:
                return 202, body, job.version
            body["metrics"] = {"inference_time": job.inference_time} if job.inference_time is not None else {}
            if job.error is not None:
                body["error"] = job.error
                body["error_type"] = job.error_type
            return 200, body, job.version

    def wait_for_change(self, job: Job, seen_version: int, timeout: float) -> bool:
        """Wait until the job changes; False on timeout or when the service is stopping. Wakes at the
        nearest start deadline too, so a request fal would drop is dropped on time for a stream as well."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                self._expire_overdue()
                now = time.monotonic()
                if job.version != seen_version or self._stopping or now >= end:
                    return job.version != seen_version
                deadlines = [j.start_deadline for j in self._pending if j.start_deadline is not None]
                self._cond.wait(min([end - now, *(max(0.01, d - now) for d in deadlines)]))

    def result(self, job: Job) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            if job.state != DONE:
                return 400, {"detail": "Request is still in progress"}, {}
            return job.result_status, job.result_body, dict(job.result_headers)

    def cancel(self, request_id: str) -> tuple[int, dict[str, str]]:
        with self._cond:
            self._expire_overdue()
            job = self._jobs.get(request_id)
            if job is None:
                return 404, {"status": "NOT_FOUND"}
            if job.state == DONE:
                return 400, {"status": "ALREADY_COMPLETED"}
            if not job.cancel.is_set():
                self._counts["cancels"] += 1
                job.cancel.set()
            if job.state == QUEUED:
                self._pending.remove(job)
                self._finish_cancelled(job)
            return 202, {"status": "CANCELLATION_REQUESTED"}

    def counters(self) -> dict[str, Any]:
        with self._cond:
            return {
                "submits": self._counts["submits"],
                "submits_by_audio": dict(self._by_audio),
                "submits_by_priority": {"normal": self._counts["submits_normal"], "low": self._counts["submits_low"]},
                "running": self._running,
                "max_running": self._max_running,
                "queued": len(self._pending),
                "cancels": self._counts["cancels"],
                "completed": self._counts["completed"],
                "failed": self._counts["failed"],
                "started": self._counts["started"],
                "start_timeouts": self._counts["start_timeouts"],
            }

    # -- the workers ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._pending))
                if self._stopping:
                    return
                self._expire_overdue()
                if not self._pending:
                    continue
                job = self._pending.pop(0)
                job.state = RUNNING
                self._counts["started"] += 1  # a request that ran: what fal bills
                self._running += 1
                self._max_running = max(self._max_running, self._running)
                self._changed(job)
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running -= 1

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        outputs: list[Path] = []
        try:
            self._separate(job, started, outputs)
        except JobStopped:
            with self._cond:
                self._finish_cancelled(job)
        except AudioDecodeError as exc:
            self._fail_input(job, str(exc), "audio_decode_error")
        except Exception as exc:
            log.exception("local fal: request %s failed", job.request_id)
            self._fail(job, f"Internal error in the local service: {exc}", "runner_error", 500)
        finally:
            for path in outputs:
                path.unlink(missing_ok=True)  # results that were not published

    def _separate(self, job: Job, started: float, outputs: list[Path]) -> None:
        source, options = job.source, job.model_input
        if source.problem or source.path is None:
            self._fail_input(job, source.problem or "No audio", "file_download_error")
            return
        if source.stored is not None and source.stored.expired:
            self._fail_input(job, "Could not download the file at audio_url: 404 Not Found (the file "
                             "link has expired)", "file_download_error")
            return
        info = probe(source.path)
        duration = info.frames / info.samplerate
        self._log(job, f"Loading audio ({duration:.1f} s, {info.channels} ch, {info.samplerate} Hz)")
        spans = tuple((s.start, s.end, s.include) for s in options.spans) \
            if isinstance(options, SpanSeparateInput) else ()
        self._log(job, f"Options: acceleration={options.acceleration}, reranking_candidates="
                  f"{options.reranking_candidates}, predict_spans={options.predict_spans}, "
                  f"output_format={options.output_format}" + (f", spans={len(spans)}" if spans else ""))
        budget = self._settings.job_time + self._settings.processing_delay * duration
        expected_frames = max(1.0, duration * SAMPLE_RATE)
        starts = chunk_starts(duration, options.max_chunk_duration, options.chunk_overlap)
        paced = [0.0]
        logged = [0]
        failure = self._faults.take_job_failure()
        label = options.prompt or "spans"

        def on_block(start: int, count: int) -> None:
            while logged[0] < len(starts) and starts[logged[0]] * SAMPLE_RATE < start + count:
                logged[0] += 1
                self._log(job, f"Separating '{label}' chunk {logged[0]}/{len(starts)}")
                if failure is not None:
                    raise _InjectedFailure(failure.message, failure.error_type)
            step = min(budget * count / expected_frames, budget - paced[0])
            paced[0] += step
            self._pause(job, step)

        spec = SeparationSpec(
            prompt=options.prompt, output_format=options.output_format, spans=spans,
            shift=self._faults.shift_samples, drift_ppm=self._faults.drift_ppm,
            noise_seed=int(job.request_id[:8], 16) if self._faults.take_unrelated() else None,
        )
        extension = options.output_format
        target_path = self._store.work_path(f".{extension}")
        residual_path = self._store.work_path(f".{extension}")
        outputs.extend([target_path, residual_path])
        try:
            out = separate(source.path, spec, target_path, residual_path, on_block)
        except _InjectedFailure as injected:
            self._log(job, injected.message, level="ERROR")
            self._fail(job, injected.message, injected.error_type, 500, time.monotonic() - started)
            return
        self._pause(job, budget - paced[0])
        content_type = "audio/wav" if extension == "wav" else "audio/mpeg"
        target = self._store.adopt(target_path, f"target.{extension}", content_type)
        residual = self._store.adopt(residual_path, f"residual.{extension}", content_type)
        self._store.link_request([source.stored] if source.stored is not None else [], [target, residual])
        self._log(job, "Done")
        result = {"target": self._file_json(target), "residual": self._file_json(residual),
                  "duration": out.duration, "sample_rate": SAMPLE_RATE}
        with self._cond:
            job.inference_time = round(time.monotonic() - started, 3)
            job.result_body = result
            self._done(job, "completed")

    # -- helpers (callers hold no lock unless said) -----------------------------------------------

    def _pause(self, job: Job, seconds: float) -> None:
        if job.cancel.wait(seconds) if seconds > 0 else job.cancel.is_set():
            raise JobStopped()

    def _log(self, job: Job, message: str, level: str = "INFO") -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._cond:
            job.logs.append({"timestamp": stamp, "level": level, "source": "user", "message": message})
            self._changed(job)

    def _file_json(self, record: StoredFile) -> dict[str, Any]:
        return {"url": self._store.url_for(record), "content_type": record.content_type,
                "file_name": record.name, "file_size": record.size}

    def _fail_input(self, job: Job, message: str, error_type: str) -> None:
        self._log(job, message, level="ERROR")
        with self._cond:
            job.error, job.error_type = message, "bad_request"
            job.result_status = 422
            job.result_body = {"detail": [{"loc": ["body", "audio_url"], "msg": message, "type": error_type}]}
            self._done(job, "failed")

    def _fail(self, job: Job, message: str, error_type: str, status: int,
              elapsed: float | None = None) -> None:
        with self._cond:
            job.error, job.error_type, job.inference_time = message, error_type, elapsed
            job.result_status, job.result_body = status, {"detail": message}
            self._done(job, "failed")

    def _finish_cancelled(self, job: Job) -> None:
        """Lock held."""
        job.error, job.error_type = CANCELLED, "client_cancelled"
        job.result_status, job.result_body = 499, {"detail": CANCELLED}
        job.result_headers = {"X-Fal-Error-Type": "client_cancelled"}
        self._done(job, "failed")

    def _expire_overdue(self) -> None:
        """Lock held. Queued jobs past their X-Fal-Request-Timeout never start: 504, like fal."""
        now = time.monotonic()
        for job in [j for j in self._pending if j.start_deadline is not None and j.start_deadline < now]:
            self._pending.remove(job)
            job.error, job.error_type = "Request timed out", "request_timeout"
            job.result_status = 504
            job.result_body = {"detail": "Request timed out", "error_type": "request_timeout"}
            job.result_headers = {"X-Fal-Error-Type": "request_timeout", "X-Fal-Request-Timeout-Type": "user"}
            self._counts["start_timeouts"] += 1  # dropped before it ran: nothing billed
            self._done(job, "failed")

    def _done(self, job: Job, outcome: str) -> None:
        """Lock held."""
        job.state = DONE
        if job.source.temporary and job.source.path:
            job.source.path.unlink(missing_ok=True)  # a decoded data URI is not needed any more
        self._counts[outcome] += 1
        self._changed(job)

    def _changed(self, job: Job) -> None:
        """Lock held."""
        job.version += 1
        self._cond.notify_all()


class _InjectedFailure(Exception):
    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
