"""Errors a user can cause or meet, each with a message written for musicians, not programmers.

Every error carries `message` (what happened) and `hint` (what to do). `str(err)` is both, ready to
print in the CLI, an OSC `/sam/error`, a status file or a `.error.txt`.
"""

from __future__ import annotations

from bridge.common.redact import redact


class BridgeError(Exception):
    """Base of every error sam-bridge reports to a user."""

    exit_code = 1
    kind = "error"
    # True when the results the service gave for this job cannot serve it (they failed, are broken, or
    # belong to audio that has changed): the daemon forgets them, so a retry submits anew (and pays again).
    results_unusable = False

    def __init__(self, message: str, hint: str = "") -> None:
        # outside text (a service's answer may quote the key) becomes an error message here: masked once,
        # so no copy of it, in any sink, holds the key
        message, hint = redact(message), redact(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.step: int | None = None  # the recipe step it happened in (set by the pipeline), if any

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class InputError(BridgeError):
    """The user's input (file, prompt, option, preset, request) cannot be used."""

    exit_code = 2
    kind = "bad_input"


class SourceError(InputError):
    """The source audio is missing, unreadable, empty or of an unsupported kind."""

    kind = "bad_source"


class SourceChanged(SourceError):
    """The source changed after its audio was sent: the results belong to the old audio."""

    results_unusable = True


class PresetError(InputError):
    """A preset file is invalid or a preset name is unknown."""

    kind = "bad_preset"


class ConfigError(InputError):
    kind = "bad_config"


class FolderUnavailable(ConfigError):
    """A folder the daemon must write (its state, its logs) cannot be written now: perhaps a drive not
    mounted yet at login. EX_TEMPFAIL, not a config error's 2, so a service manager tries again later."""

    exit_code = 75


class OutputError(BridgeError):
    """The stems cannot be written (folder not writable, disk full)."""

    kind = "output"


class ServiceError(BridgeError):
    """Anything that went wrong talking to the separation service."""

    kind = "service"


class AuthError(ServiceError):
    kind = "auth"


class AccountLocked(AuthError):
    """The key is fine but fal refuses every billable call (out of credit, or locked by fal): the daemon's
    jobs wait for the account instead of failing one after another."""


class ValidationError(ServiceError):
    """The service refused the request's fields (HTTP 422)."""

    kind = "validation"


class ServiceUnavailable(ServiceError):
    """The service could not be reached or kept failing after retries."""

    kind = "unavailable"


class RateLimited(ServiceUnavailable):
    kind = "rate_limited"


class JobFailed(ServiceError):
    """The service accepted the job but it failed there (or its result could not be fetched)."""

    kind = "job_failed"


class ServiceJobFailed(JobFailed):
    """The request itself ended in an error at the service: a retry must submit it again."""

    results_unusable = True


class UnusableResult(JobFailed):
    """The service's result came back unreadable or empty: fetching it again would give the same."""

    results_unusable = True


class RequestGone(JobFailed):
    """The service no longer has what it made for the request (the request or its result files expired
    there, or a stand-in restarted): asking again gives the same answer, so a retry submits anew."""

    results_unusable = True


class TimedOut(ServiceError):
    kind = "timeout"


class Cancelled(BridgeError):
    exit_code = 130
    kind = "cancelled"


class SubmitUncertain(ServiceError):
    """A submit may have reached the service but its answer was lost: never repeated blindly."""

    kind = "submit_uncertain"
