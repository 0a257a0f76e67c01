"""Fault injection for the local fal service: the failures a real network and a real fal produce.

Per-call faults (`fail`, `drop`, `stall`, `lose_submit_answer`) are rules kept in the order they were
added; each call of a kind consumes one use of the first rule for that kind. Job and result faults
(`fail_job`, `unrelated_result`, `shift_result`, `drift_result`) change what the worker produces.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("token", "upload", "multipart", "storage", "submit", "status", "stream", "result", "cancel", "download")

# fal's infrastructure errors: status -> (X-Fal-Error-Type, detail).
INFRA_ERRORS = {
    502: ("runner_incomplete_response", "Runner returned an incomplete response"),
    503: ("runner_scheduling_failure", "No runner is available right now, please retry"),
    504: ("request_timeout", "Request timed out"),
}


PROXY_TITLES = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


@dataclass
class CallFault:
    action: str  # fail | drop | stall | lose_answer
    kind: str
    times: int
    status: int = 503
    retry_after: float | None = None
    detail: str | None = None
    field: str = "audio_url"
    seconds: float = 0.0
    answered_by: str = "service"  # service | proxy | gateway (see Faults.fail)


@dataclass(frozen=True)
class ErrorReply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class JobFailure:
    message: str
    error_type: str


def error_reply(fault: CallFault) -> ErrorReply:
    """The answer fal would give for an injected `fail` fault, in fal's shape for that status."""
    status = fault.status
    headers: dict[str, str] = {}
    body: dict[str, Any]
    if fault.answered_by == "proxy":  # the ingress proxy's own page: what fal-client looks for ("nginx")
        title = f"{status} {PROXY_TITLES.get(status, 'Error')}"
        page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>" \
               "\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        return ErrorReply(status, {"Content-Type": "text/html"}, page.encode())
    if fault.answered_by == "gateway":  # a load balancer's terse error: neither fal's shape nor nginx's
        return ErrorReply(status, {"Content-Type": "application/json"},
                          json.dumps({"message": fault.detail or "upstream error"}).encode())
    if status in INFRA_ERRORS:
        error_type, default = INFRA_ERRORS[status]
        body = {"detail": fault.detail or default, "error_type": error_type}
        headers["X-Fal-Error-Type"] = error_type
    elif status == 422:
        body = {"detail": [{"loc": ["body", fault.field], "msg": fault.detail or "Invalid value",
                            "type": "value_error"}]}
    elif status == 429:
        body = {"detail": fault.detail or "Too many requests, slow down"}
    elif status == 500:
        body = {"detail": fault.detail or "Internal server error"}
    else:
        body = {"detail": fault.detail or f"Injected error {status}"}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    return ErrorReply(status, headers, json.dumps(body).encode())


class Faults:
    """Thread-safe fault switchboard; `clear()` restores a well-behaved service."""

    def __init__(self, on_expire_files: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._on_expire_files = on_expire_files
        self._call_faults: list[CallFault] = []
        self._job_failures: list[list[Any]] = []  # [JobFailure, times left, jobs to run normally first]
        self._unrelated = 0
        self._shift = 0
        self._drift_ppm = 0.0
        self._foreign_base: str | None = None

    # -- per-call faults --------------------------------------------------------------------------

    def fail(self, kind: str, status: int = 503, times: int = 1, retry_after: float | None = None,
             detail: str | None = None, field: str = "audio_url", answered_by: str | None = None) -> None:
        """Answer the next `times` calls of `kind` with HTTP `status`. `answered_by`: `service` (fal's error
        shape; nothing is done), `proxy` (the ingress proxy's nginx page; nothing reached the service) or
        `gateway` (the call IS carried out, a submit queued and counted, then a terse 5xx with no request id
        replaces its answer). Default: `proxy` for a 502/503/504 at submit, else `service`."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error (400-599), not {status}")
        if answered_by is None:
            answered_by = "proxy" if kind == "submit" and status in PROXY_TITLES else "service"
        if answered_by not in ("service", "proxy", "gateway"):
            raise ValueError("answered_by must be service, proxy or gateway")
        self._add(CallFault("fail", _kind(kind), _times(times), status=status, retry_after=retry_after,
                            detail=detail, field=field, answered_by=answered_by))

    def drop(self, kind: str, times: int = 1) -> None:
        """Read the request, then close the connection without any answer."""
        self._add(CallFault("drop", _kind(kind), _times(times)))

    def stall(self, kind: str, seconds: float, times: int = 1) -> None:
        """Wait `seconds` before answering (normally) the next `times` calls of `kind`."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._add(CallFault("stall", _kind(kind), _times(times), seconds=float(seconds)))

    def lose_submit_answer(self, times: int = 1) -> None:
        """Accept the submit (the job exists and is counted), then drop the connection."""
        self._add(CallFault("lose_answer", "submit", _times(times)))

    def take(self, kind: str) -> CallFault | None:
        """Consume one use of the first fault for `kind` (a copy is returned)."""
        with self._lock:
            for fault in self._call_faults:
                if fault.kind == kind:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._call_faults.remove(fault)
                    return CallFault(**{**fault.__dict__, "times": 1})
        return None

    def give_back(self, fault: CallFault) -> None:
        """Return an unused take (e.g. a lost-answer fault met by a submit that was refused anyway)."""
        with self._lock:
            self._call_faults.insert(0, fault)

    # -- job and result faults --------------------------------------------------------------------

    def fail_job(self, message: str = "CUDA error: out of memory", times: int = 1,
                 error_type: str = "runner_error", after: int = 0) -> None:
        """The next `times` jobs end COMPLETED with this error instead of a result, once `after` more jobs
        have run normally (e.g. `after=1`: the second step of a stem set fails)."""
        if after < 0:
            raise ValueError("after must not be negative")
        with self._lock:
            self._job_failures.append([JobFailure(message, error_type), _times(times), after])

    def take_job_failure(self) -> JobFailure | None:
        with self._lock:
            if not self._job_failures:
                return None
            entry = self._job_failures[0]
            if entry[2] > 0:  # jobs that still run normally first
                entry[2] -= 1
                return None
            entry[1] -= 1
            if entry[1] <= 0:
                self._job_failures.pop(0)
            failure: JobFailure = entry[0]
            return failure

    def unrelated_result(self, times: int = 1) -> None:
        """The next `times` jobs return noise that has nothing to do with their input."""
        with self._lock:
            self._unrelated += _times(times)

    def take_unrelated(self) -> bool:
        with self._lock:
            if self._unrelated <= 0:
                return False
            self._unrelated -= 1
            return True

    def shift_result(self, samples: int) -> None:
        """From now on results start `samples` late (positive) or early (negative), at 48 kHz."""
        with self._lock:
            self._shift = int(samples)

    def drift_result(self, ppm: float) -> None:
        """From now on results run on a clock `ppm` parts per million fast (longer) or slow."""
        if abs(ppm) >= 1e5:
            raise ValueError("ppm must be well under 100000")
        with self._lock:
            self._drift_ppm = float(ppm)

    @property
    def shift_samples(self) -> int:
        with self._lock:
            return self._shift

    @property
    def drift_ppm(self) -> float:
        with self._lock:
            return self._drift_ppm

    def foreign_urls(self, base: str | None) -> None:
        """From now on submit answers name `base` (another host) in their status/response/cancel URLs, as a
        proxy rewriting answers would; None stops it."""
        with self._lock:
            self._foreign_base = base.rstrip("/") if base else None

    @property
    def foreign_base(self) -> str | None:
        with self._lock:
            return self._foreign_base

    def expire_files(self) -> None:
        """Every file URL issued so far answers 404 from now on (like a CDN link past its lifetime)."""
        self._on_expire_files()

    def clear(self) -> None:
        with self._lock:
            self._call_faults.clear()
            self._job_failures.clear()
            self._unrelated = 0
            self._shift = 0
            self._drift_ppm = 0.0
            self._foreign_base = None

    # -- control over HTTP ------------------------------------------------------------------------

    def apply(self, command: dict[str, Any]) -> None:
        """Run `{"action": name, **kwargs}` (the `POST /_local/faults` body); ValueError if invalid."""
        args = dict(command)
        action = args.pop("action", None)
        actions: dict[str, Callable[..., None]] = {
            "fail": self.fail, "drop": self.drop, "stall": self.stall,
            "lose_submit_answer": self.lose_submit_answer, "fail_job": self.fail_job,
            "expire_files": self.expire_files, "shift_result": self.shift_result,
            "unrelated_result": self.unrelated_result, "drift_result": self.drift_result,
            "foreign_urls": self.foreign_urls,
            "clear": self.clear,
        }
        if action not in actions:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(actions)}")
        try:
            actions[str(action)](**args)
        except TypeError as exc:
            raise ValueError(f"bad arguments for {action}: {exc}") from None

    def _add(self, fault: CallFault) -> None:
        with self._lock:
            self._call_faults.append(fault)


def _kind(kind: str) -> str:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown call kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    return kind


def _times(times: int) -> int:
    if int(times) < 1:
        raise ValueError("times must be at least 1")
    return int(times)
