"""fal's HTTP answers as errors in words a musician understands: what happened, and what to do.

The fal client (`fal_client`) raises these; knowing which answer means what is kept here, in one place.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.common.errors import (
    AccountLocked,
    AuthError,
    JobFailed,
    RateLimited,
    RequestGone,
    ServiceError,
    ServiceJobFailed,
    ServiceUnavailable,
    ValidationError,
)
from bridge.common.loopback import is_loopback_url


def never_reached_queue(response: httpx.Response) -> bool:
    """An ingress 5xx (no request id) or a 429 means the queue never took the request."""
    if response.status_code == 429:
        return True
    return response.status_code in (502, 503, 504) and "x-fal-request-id" not in response.headers


def ingress_answered(response: httpx.Response) -> bool:
    """A 502/503/504 from fal's ingress proxy, which never passed the request on: no request id, and the
    proxy's own page ("nginx" in the body), as the official client (fal-client 1.0.3) tells them apart."""
    if response.status_code not in (502, 503, 504) or "x-fal-request-id" in response.headers:
        return False
    try:
        return "nginx" in response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return False


def start_timed_out(start_timeout: float | None) -> ServiceJobFailed:
    """fal dropped the request because it had not started within the start timeout (nothing ran)."""
    within = f" within the start timeout ({start_timeout:g} s)" if start_timeout else " in time"
    return ServiceJobFailed(
        f"fal dropped the request because it did not start{within}: its queue was busy or the model was "
        "starting up. Nothing ran, so nothing was charged.",
        hint="Retry the job to send it anew; if this keeps happening, raise service.start_timeout in the "
        "config (seconds, or null for no limit).")


def unreachable(what: str, exc: Exception, attempts: int, url: str) -> ServiceUnavailable:
    charged = " Nothing was submitted, so nothing was charged." if what in ("submit", "upload") else ""
    where = urlsplit(url)
    check = (f"Is the stand-in service at {where.scheme}://{where.netloc} still running?" if is_loopback_url(url)
             else "Check your internet connection;")
    return ServiceUnavailable(
        f"Could not reach the separation service for the {what} after {attempts} tries "
        f"({type(exc).__name__}).{charged}",
        hint=f"{check} sam-bridge retries waiting jobs on its own.",
    )


_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _detail_text(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    try:
        body = response.json()
    except ValueError:
        if "html" in response.headers.get("content-type", "").lower():  # a proxy's error page: its title
            title = _TITLE.search(response.text)
            return (" ".join(title.group(1).split())[:120] if title else "an error page"), []
        return response.text[:300].strip(), []
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        items = [d for d in detail if isinstance(d, dict)]
        return "; ".join(_field_message(d) for d in items), items
    if isinstance(detail, str):
        return detail, []
    return json.dumps(body)[:300], []


def _field_message(item: dict[str, Any]) -> str:
    loc = [str(p) for p in item.get("loc", []) if p != "body"]
    return f"{'.'.join(loc) or 'request'}: {item.get('msg', 'invalid')}"


# Calls about one request the queue accepted: their errors say what became of that request.
_REQUEST_CALLS = frozenset({"status check", "status stream", "result fetch"})
RESEND_HINT = "Retry the job to send it again (a new request, charged again)."

_ACCOUNT_LOCKED = re.compile(r"\buser is locked\b|\baccount (is |has been )?locked\b", re.IGNORECASE)


def error_for_response(response: httpx.Response, what: str, *, attempts: int = 1) -> ServiceError:
    code = response.status_code
    text, _items = _detail_text(response)
    error_type = response.headers.get("x-fal-error-type", "")
    if code == 504 and "x-fal-request-timeout-type" in response.headers and what in _REQUEST_CALLS:
        return start_timed_out(None)
    if code == 403 and _ACCOUNT_LOCKED.search(text):
        # fal answers every billable call with 403 "User is locked. Reason: Exhausted balance. ..." when
        # the account has run out of credit (or was locked by fal): the key itself is fine.
        charged = "; nothing was charged for it" if what in ("upload", "submit") else ""
        return AccountLocked(
            f"Your fal account is locked, so the {what} was refused (HTTP 403: {text}){charged}.",
            hint="Top up or unlock the account at https://fal.ai/dashboard/billing (a new key does not help), "
            "then run the job again.",
        )
    if code in (401, 403):
        return AuthError(
            f"fal refused the API key (HTTP {code}{': ' + text if text else ''}).",
            hint="Check that FAL_KEY holds a valid key (https://fal.ai/dashboard/keys); "
            "or add --local to use the built-in stand-in service.",
        )
    if code in (404, 410) and what in _REQUEST_CALLS:
        return RequestGone(f"The service no longer has this request (HTTP {code} at the {what}"
                           f"{': ' + text if text else ''}): it expired there, or the service was restarted.",
                           hint=RESEND_HINT)
    if what == "result fetch" and code in (400, 422):  # "model output JSON, or an error": the job's error
        return ServiceJobFailed(f"The separation failed at the service: {text or f'HTTP {code}'}.",
                                hint=f"{RESEND_HINT} If it fails again, try another prompt or a shorter file.")
    if what == "result fetch" and (code == 500 or (code >= 500 and not never_reached_queue(response))):
        return JobFailed(  # the runner's own answer about a finished request: not an outage to wait out
            f"The service finished the request but answered HTTP {code} when asked for its result"
            f"{': ' + text if text else ''}.",
            hint="Retry the job to ask for the result again (free); if that keeps failing, send it anew with "
            "`sam-bridge retry --resubmit JOB` (charged again).")
    if code == 422:
        return ValidationError(f"The service refused the request: {text or 'invalid input'}.",
                               hint="Fix the named field (preset or option) and try again.")
    if code == 429:
        return RateLimited(f"The service is rate-limiting us (HTTP 429) at the {what}{_tries(attempts)}.",
                           hint="Lower the number of jobs in flight, or wait a minute.")
    if code >= 500 or code == 408:
        label = f" ({error_type})" if error_type else ""
        charged = " The job was not submitted, so nothing was charged." if what == "submit" else ""
        return ServiceUnavailable(
            f"The separation service is unavailable: HTTP {code}{label} at the {what}{_tries(attempts)}"
            f"{': ' + text if text else ''}.{charged}",
            hint="Try again later; queued jobs wait and retry on their own.",
        )
    return ServiceError(f"The service answered HTTP {code} to the {what}: {text or 'no details'}.")


def _tries(attempts: int) -> str:
    return f" after {attempts} tries" if attempts > 1 else ""


def service_job_failed(error: str | None, error_type: str | None, last_logs: list[str]) -> ServiceJobFailed:
    """A request that ended in an error at the service, with its last log lines."""
    tail = ("\nLast service log lines:\n  " + "\n  ".join(last_logs)) if last_logs else ""
    if error_type == "client_cancelled":
        return ServiceJobFailed("The job was cancelled at the service.")
    return ServiceJobFailed(f"The separation failed at the service: {error}{tail}",
                            hint=f"{RESEND_HINT} If it fails again, try another prompt or a shorter file.")
