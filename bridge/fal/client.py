"""fal queue client: submit, follow, fetch, cancel, download. Knows HTTP and fal's protocol, not folders.

Protocol: ../shared/fal-protocol.md. Every call has a read timeout; idempotent calls retry transport
errors, 408/429 and 502/503/504 with backoff; a submit is repeated only when it provably never reached
the queue (connection refused, or an ingress error with no request id), since a second submit can start
a second paid job.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bridge import __version__
from bridge.common.errors import (
    Cancelled,
    JobFailed,
    RequestGone,
    ServiceError,
    ServiceJobFailed,
    SubmitUncertain,
    TimedOut,
)
from bridge.fal.auth import ApiKey
from bridge.fal.errors import (
    RESEND_HINT,
    error_for_response,
    never_reached_queue,
    service_job_failed,
    unreachable,
)
from bridge.fal.retry import RetryPolicy, Sleeper, default_sleep, parse_retry_after
from bridge.fal.storage import FalStorage

log = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
APP = "fal-ai/sam-audio"
RETRYABLE_STATUS = frozenset({408, 409, 429, 502, 503, 504})
# Never-sent errors: safe to repeat even for a submit.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RequestHandle:
    """A request fal accepted; persisted in the journal so a restart polls instead of resubmitting."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestHandle:
        return cls(**{k: str(data[k]) for k in ("request_id", "status_url", "response_url", "cancel_url")})


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str = "INFO"
    timestamp: str = ""


@dataclass(frozen=True)
class QueueStatus:
    state: str  # IN_QUEUE | IN_PROGRESS | COMPLETED
    queue_position: int | None = None
    logs: tuple[LogLine, ...] = ()
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueStatus:
        logs = tuple(
            LogLine(str(item.get("message", "")), str(item.get("level", "INFO")), str(item.get("timestamp", "")))
            for item in (data.get("logs") or [])
            if isinstance(item, dict)
        )
        position = data.get("queue_position")
        return cls(
            state=str(data.get("status", "")),
            queue_position=position if isinstance(position, int) else None,
            logs=logs,
            error=data.get("error"),
            error_type=data.get("error_type"),
            metrics=data.get("metrics") or {},
        )


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 60.0
    status_read: float = 120.0  # a stalled read once hung fal's own clients forever
    write: float = 120.0


class FalClient:
    """One instance per service; thread-safe (httpx.Client is)."""

    def __init__(
        self,
        key: ApiKey,
        *,
        queue_url: str = DEFAULT_QUEUE_URL,
        rest_url: str = DEFAULT_REST_URL,
        app: str = APP,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        data_uri_limit: int = 1 << 20,
        sleep: Sleeper = default_sleep,
    ) -> None:
        self._key = key
        self.queue_url = queue_url.rstrip("/")
        self.app = app
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self._sleep = sleep
        t = self.timeouts
        self._http = httpx.Client(
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect),
            headers={"User-Agent": f"sam-bridge/{__version__}"},
            follow_redirects=True,
        )
        self.storage = FalStorage(self, rest_url=rest_url.rstrip("/"), data_uri_limit=data_uri_limit)

    # -- plumbing shared with FalStorage -------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self._key.authorization()}

    @property
    def http(self) -> httpx.Client:
        return self._http

    def call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        idempotent: bool = True,
        auth: bool = True,
        ok: tuple[int, ...] = (200, 201, 202),
        read_timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP call with the retry rules; raises a typed, musician-readable ServiceError."""
        headers = {**(self.auth_headers() if auth else {}), **kwargs.pop("headers", {})}
        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(
                connect=self.timeouts.connect, read=read_timeout, write=self.timeouts.write,
                pool=self.timeouts.connect,
            )
        attempt = 0
        while True:
            attempt += 1
            request_kwargs = dict(kwargs)
            if callable(request_kwargs.get("content")):  # a body stream made afresh for each try
                request_kwargs["content"] = request_kwargs["content"]()
            try:
                response = self._http.request(method, url, headers=headers, **request_kwargs)
            except httpx.TransportError as exc:
                may_have_landed = not isinstance(exc, NOT_SENT_ERRORS)
                if not idempotent and may_have_landed:
                    raise SubmitUncertain(
                        f"The connection to the service broke while sending the {what} "
                        f"({type(exc).__name__}); it may or may not have been accepted.",
                        hint="sam-bridge will not send it again on its own, so you are never charged "
                        "twice. Check your fal dashboard, then retry the job if it is not there.",
                    ) from None
                if attempt >= self.retry.attempts:
                    raise unreachable(what, exc, attempt, url) from None
                delay = self.retry.delay(attempt)
                log.info("%s: %s, retrying in %.1f s (try %d/%d)", what, type(exc).__name__, delay,
                         attempt + 1, self.retry.attempts)
                self._sleep(delay)
                continue
            if response.status_code in ok:
                return response
            retryable = response.status_code in RETRYABLE_STATUS and (
                idempotent or never_reached_queue(response)
            )
            server_side = response.status_code >= 500 or response.status_code == 408
            if not idempotent and server_side and not never_reached_queue(response):
                # the queue saw it (it answered with a request id): it may be running, and be paid for
                raise SubmitUncertain(
                    f"The service answered HTTP {response.status_code} to the {what} after it reached the queue, "
                    "so the job may or may not be running.",
                    hint="sam-bridge will not send it again on its own, so you are never charged twice. "
                    "Check your fal dashboard, then retry the job if it is not there.")
            if retryable and attempt < self.retry.attempts:
                delay = self.retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
                log.info("%s: HTTP %d, retrying in %.1f s (try %d/%d)", what, response.status_code, delay,
                         attempt + 1, self.retry.attempts)
                response.close()
                self._sleep(delay)
                continue
            raise error_for_response(response, what, attempts=attempt)

    # -- the queue protocol --------------------------------------------------------------------------

    def submit(self, endpoint: str, payload: dict[str, Any], *, priority: str | None = None) -> RequestHandle:
        headers = {"X-Fal-Queue-Priority": priority} if priority else {}
        response = self.call("POST", f"{self.queue_url}/{self.app}/{endpoint}", "submit", idempotent=False,
                             json=payload, headers=headers)
        data = response.json()
        log.info("submitted %s/%s: request %s", self.app, endpoint, data.get("request_id"))
        return RequestHandle(
            request_id=data["request_id"],
            status_url=data.get("status_url") or self._request_url(data["request_id"], "/status"),
            response_url=data.get("response_url") or self._request_url(data["request_id"]),
            cancel_url=data.get("cancel_url") or self._request_url(data["request_id"], "/cancel"),
        )

    def handle_for(self, request_id: str) -> RequestHandle:
        return RequestHandle(request_id, self._request_url(request_id, "/status"),
                             self._request_url(request_id), self._request_url(request_id, "/cancel"))

    def status(self, handle: RequestHandle, *, logs: bool = True) -> QueueStatus:
        response = self.call("GET", handle.status_url, "status check", params={"logs": int(logs)},
                             read_timeout=self.timeouts.status_read)
        return QueueStatus.from_json(response.json())

    def stream_status(self, handle: RequestHandle) -> Iterator[QueueStatus]:
        """Server-sent status events until COMPLETED; raises httpx errors for the caller to fall back."""
        timeout = httpx.Timeout(connect=self.timeouts.connect, read=self.timeouts.status_read,
                                write=self.timeouts.write, pool=self.timeouts.connect)
        with self._http.stream("GET", f"{handle.status_url}/stream", params={"logs": 1},
                               headers={**self.auth_headers(), "Accept": "text/event-stream"},
                               timeout=timeout) as response:
            if response.status_code not in (200, 202):
                response.read()
                raise error_for_response(response, "status stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    yield QueueStatus.from_json(json.loads(line[5:].strip()))

    def wait(
        self,
        handle: RequestHandle,
        *,
        on_status: Callable[[QueueStatus], None] = lambda _s: None,
        cancelled: Callable[[], bool] = lambda: False,
        poll_interval: float = 0.5,
        timeout: float | None = None,
        use_stream: bool = True,
    ) -> QueueStatus:
        """Follow a request to COMPLETED; JobFailed if it ended with an error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status: QueueStatus | None = None
        if use_stream:
            try:
                for status in self.stream_status(handle):
                    on_status(status)
                    if status.completed or cancelled():
                        break
            except (httpx.HTTPError, ValueError, ServiceError) as exc:
                log.info("status stream unavailable (%s); polling instead", type(exc).__name__)
                status = None
        while status is None or not status.completed:
            if cancelled():
                raise Cancelled("Cancelled while the service was working on it.")
            if deadline is not None and time.monotonic() > deadline:
                raise TimedOut(f"The service did not finish within {timeout:.0f} s.",
                               hint="The request keeps running at fal; retry later to pick it up.")
            if status is not None:
                self._sleep(poll_interval)
            status = self.status(handle)
            on_status(status)
        if status.error:
            raise job_failed(status)
        return status

    def result(self, handle: RequestHandle) -> dict[str, Any]:
        data = self.call("GET", handle.response_url, "result fetch").json()
        if not isinstance(data, dict):
            raise JobFailed("The service returned a result sam-bridge cannot read.")
        return data

    def cancel(self, handle: RequestHandle) -> str:
        """Ask the service to cancel; returns its answer (CANCELLATION_REQUESTED, ALREADY_COMPLETED, …)."""
        try:
            response = self.call("PUT", handle.cancel_url, "cancel", ok=(200, 202, 400, 404))
            return str(response.json().get("status", response.status_code))
        except ServiceError as exc:
            log.warning("could not cancel request %s: %s", handle.request_id, exc.message)
            return "UNKNOWN"

    def download(self, url: str, dest: Path, progress: Callable[[int, int], None] | None = None,
                 stop: threading.Event | None = None) -> int:
        """Stream `url` into `dest` (which the caller names as a temp file); restarts on a broken read.

        Each try writes a file of its own beside `dest` and moves it into place only when complete, so a
        try that outlives its caller (a stalled read, see `stop`) never empties or overwrites a later
        download of the same file. `stop`: set, no new try starts and nothing is moved into place.
        """
        attempt = 0
        while True:
            attempt += 1
            _check_stop(stop)
            part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                # identity: audio gains nothing from gzip, and Content-Length then counts the bytes we get
                with self._http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                    if response.status_code != 200:
                        response.read()
                        if response.status_code in RETRYABLE_STATUS and attempt < self.retry.attempts:
                            self._sleep(self.retry.delay(attempt))
                            continue
                        if response.status_code in (403, 404, 410):  # the result's links give the same
                            raise RequestGone("The service's result file is no longer available "
                                              f"(HTTP {response.status_code}); its download link has expired.",
                                              hint=RESEND_HINT)
                        raise error_for_response(response, "download")
                    total = int(response.headers.get("content-length") or 0)
                    done = 0
                    with open(part, "xb") as out:
                        for chunk in response.iter_bytes(1 << 20):
                            _check_stop(stop)
                            out.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, total)
                    received = response.num_bytes_downloaded  # as sent: a server may still compress
                    if total and received != total:
                        raise httpx.ReadError(f"short read: {received} of {total} bytes")
                    _check_stop(stop)
                    os.replace(part, dest)
                    return done
            except httpx.TransportError as exc:
                if attempt >= self.retry.attempts:
                    raise unreachable("download", exc, attempt, url) from None
                self._sleep(self.retry.delay(attempt))
            finally:
                part.unlink(missing_ok=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FalClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FalClient(queue_url={self.queue_url!r}, app={self.app!r}, key={self._key!r})"

    def _request_url(self, request_id: str, suffix: str = "") -> str:
        return f"{self.queue_url}/{self.app}/requests/{request_id}{suffix}"


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled("Download stopped.")


def job_failed(status: QueueStatus) -> ServiceJobFailed:
    return service_job_failed(status.error, status.error_type, [line.message for line in status.logs[-5:]])
