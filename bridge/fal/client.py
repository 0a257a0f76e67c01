"""fal queue client: submit, follow, fetch, cancel, download. Knows HTTP and fal's protocol, not folders.

Protocol: ../shared/fal-protocol.md; rules from the official client (`fal-client` 1.0.3, `client.py`).
Every call has a read timeout; idempotent calls retry transport errors, 408/409/429 and 502/503/504 with
backoff. A submit is sent again only when it provably never reached the queue: the connection could not be
made, a 429, or a 502/503/504 the ingress proxy itself answered (no request id, and "nginx" in the body,
as the official client checks). Any other failure after sending is `SubmitUncertain`: a second submit can
start a second paid job. The key goes only to fal's own hosts (or the configured service's host).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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
    ingress_answered,
    service_job_failed,
    start_timed_out,
    unreachable,
)
from bridge.fal.hosts import FAL_BACKUP_HOSTS, BackupHostTransport, KeyHosts, host_of
from bridge.fal.queue_types import LogLine, QueueStatus, RequestHandle, Timeouts
from bridge.fal.retry import RetryPolicy, Sleeper, default_sleep, parse_retry_after
from bridge.fal.storage import FalStorage

__all__ = [
    "DEFAULT_QUEUE_URL",
    "DEFAULT_REST_URL",
    "DEFAULT_START_TIMEOUT",
    "PRIORITIES",
    "FalClient",
    "LogLine",
    "QueueStatus",
    "RequestHandle",
    "Timeouts",
]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
APP = "fal-ai/sam-audio"
RETRYABLE_STATUS = frozenset({408, 409, 429, 502, 503, 504})
# Never-sent errors: safe to repeat even for a submit.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# fal drops a request that has not started this many seconds after the submit (`X-Fal-Request-Timeout`,
# the official client's `start_timeout`): a request stuck in the queue never holds a slot for good.
DEFAULT_START_TIMEOUT = 600.0
PRIORITIES = ("normal", "low")  # `X-Fal-Queue-Priority` (fal-client's `_headers.py`)
UNCERTAIN_HINT = ("sam-bridge will not send it again on its own, so you are never charged twice. Check your "
                  "fal dashboard (https://fal.ai/dashboard/requests), then retry the job if it is not there.")


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
        backup_hosts: Mapping[str, str] = FAL_BACKUP_HOSTS,
        start_timeout: float | None = DEFAULT_START_TIMEOUT,
        priorities: Mapping[str, str] | None = None,
    ) -> None:
        """`backup_hosts`: host[:port] → its backup (fal's by default); `start_timeout`: seconds fal may keep
        the request waiting to start (None: no limit); `priorities`: a way in's name → its queue priority."""
        if start_timeout is not None and start_timeout <= 1:
            raise ValueError("the start timeout must be more than 1 second (fal's minimum)")
        for origin, priority in (priorities or {}).items():
            if priority not in PRIORITIES:
                raise ValueError(f"queue priority of {origin} must be one of {', '.join(PRIORITIES)}")
        self._key = key
        self.queue_url = queue_url.rstrip("/")
        self.app = app
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.start_timeout = start_timeout
        self.priorities = dict(priorities or {})
        self.key_hosts = KeyHosts([queue_url, rest_url], backup_hosts)
        self._sleep = sleep
        t = self.timeouts
        self._http = httpx.Client(
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect),
            headers={"User-Agent": f"sam-bridge/{__version__}"},
            follow_redirects=True,
            transport=BackupHostTransport(backup_hosts),
        )
        self.storage = FalStorage(self, rest_url=rest_url.rstrip("/"), data_uri_limit=data_uri_limit)

    # -- plumbing shared with FalStorage -------------------------------------------------------------

    def auth_headers(self, url: str) -> dict[str, str]:
        """The Authorization header for a call to `url`; refuses a host that is not fal's (or ours)."""
        if not self.key_hosts.allows(url):
            raise ServiceError(f"sam-bridge was asked to send your fal key to {host_of(url)}, which is not "
                               "fal's host (nor the configured service's); it refused.",
                               hint="The key only ever goes to fal. If you set a service URL, check it.")
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
        attempts: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP call with the retry rules; raises a typed, musician-readable ServiceError."""
        headers = {**(self.auth_headers(url) if auth else {}), **kwargs.pop("headers", {})}
        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(
                connect=self.timeouts.connect, read=read_timeout, write=self.timeouts.write,
                pool=self.timeouts.connect,
            )
        tries = attempts or self.retry.attempts
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
                        hint=UNCERTAIN_HINT) from None
                if attempt >= tries:
                    raise unreachable(what, exc, attempt, url) from None
                delay = self.retry.delay(attempt)
                log.info("%s: %s, retrying in %.1f s (try %d/%d)", what, type(exc).__name__, delay,
                         attempt + 1, tries)
                self._sleep(delay)
                continue
            if response.status_code in ok:
                return response
            if not idempotent:
                self._check_submit_answer(response, what)
            user_timeout = response.status_code == 504 and "x-fal-request-timeout-type" in response.headers
            retryable = response.status_code in RETRYABLE_STATUS and not user_timeout
            if retryable and attempt < tries:
                delay = self.retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
                log.info("%s: HTTP %d, retrying in %.1f s (try %d/%d)", what, response.status_code, delay,
                         attempt + 1, tries)
                response.close()
                self._sleep(delay)
                continue
            raise error_for_response(response, what, attempts=attempt)

    @staticmethod
    def _check_submit_answer(response: httpx.Response, what: str) -> None:
        """A refused submit is sent again only when it provably never reached the queue (429, or the
        ingress proxy's own 502/503/504); any other 5xx/408 may be a request fal took: uncertain."""
        code = response.status_code
        if code == 429 or ingress_answered(response):
            return
        if code >= 500 or code == 408:
            raise SubmitUncertain(
                f"The service answered HTTP {code} to the {what}, and that answer does not show whether "
                "the request reached fal's queue, so the job may or may not be running.", hint=UNCERTAIN_HINT)

    # -- the queue protocol --------------------------------------------------------------------------

    def submit(self, endpoint: str, payload: dict[str, Any], *, priority: str | None = None,
               origin: str | None = None) -> RequestHandle:
        """Submit; `priority` (normal | low), else the one configured for `origin` (the job's way in)."""
        priority = priority or (self.priorities.get(origin) if origin else None)
        headers: dict[str, str] = {}
        if priority:
            if priority not in PRIORITIES:
                raise ValueError(f"queue priority must be one of {', '.join(PRIORITIES)}")
            headers["X-Fal-Queue-Priority"] = priority
        if self.start_timeout is not None:
            headers["X-Fal-Request-Timeout"] = f"{self.start_timeout:g}"
        response = self.call("POST", f"{self.queue_url}/{self.app}/{endpoint}", "submit", idempotent=False,
                             json=payload, headers=headers)
        data = response.json()
        request_id = str(data["request_id"])
        log.info("submitted %s/%s: request %s", self.app, endpoint, request_id)
        handle = RequestHandle(
            request_id=request_id,
            status_url=data.get("status_url") or self._request_url(request_id, "/status"),
            response_url=data.get("response_url") or self._request_url(request_id),
            cancel_url=data.get("cancel_url") or self._request_url(request_id, "/cancel"),
        )
        foreign = sorted({host_of(url) for url in (handle.status_url, handle.response_url, handle.cancel_url)
                          if not self.key_hosts.allows(url)})
        if foreign:
            # fal took the request (it may run and be billed), but following it means sending the key there
            raise SubmitUncertain(
                f"The service accepted request {request_id} but named another host ({', '.join(foreign)}) "
                "for its status and result. sam-bridge does not send your fal key there, so it stopped.",
                hint="Something between you and fal rewrote the answer (a proxy?); check your network and the "
                "service URL. The request may still run at fal: check your fal dashboard before retrying.")
        return handle

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
        url = f"{handle.status_url}/stream"
        with self._http.stream("GET", url, params={"logs": 1},
                               headers={**self.auth_headers(url), "Accept": "text/event-stream"},
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
            raise job_failed(status, self.start_timeout)
        return status

    def result(self, handle: RequestHandle) -> dict[str, Any]:
        data = self.call("GET", handle.response_url, "result fetch",
                         read_timeout=self.timeouts.status_read).json()
        if not isinstance(data, dict):
            raise JobFailed("The service returned a result sam-bridge cannot read.")
        return data

    def cancel(self, handle: RequestHandle) -> str:
        """Ask the service to cancel; returns its answer (CANCELLATION_REQUESTED, ALREADY_COMPLETED, …)."""
        try:
            response = self.call("PUT", handle.cancel_url, "cancel", ok=(200, 202, 400, 404),
                                 read_timeout=self.timeouts.status_read)
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


def job_failed(status: QueueStatus, start_timeout: float | None = None) -> ServiceJobFailed:
    if status.error_type == "request_timeout":
        return start_timed_out(start_timeout)
    return service_job_failed(status.error, status.error_type, [line.message for line in status.logs[-5:]])
