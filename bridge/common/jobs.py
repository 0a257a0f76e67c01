"""What the ways in see of the job engine: job states, events, views, and the `JobSink` interface.

The CLI, request-file watcher, OSC server and hot-folder watcher depend on this module only, never on
the engine's internals, so each way in can be read (and tested) on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from bridge.common.cost import FileEstimate
from bridge.common.request import SeparationRequest

# The message of an unfinished job the daemon was working on when it stopped, in the journal and its status
# file, until the next start resumes it.
PAUSED_MESSAGE = "paused (daemon stopped)"


class JobState(StrEnum):
    queued = "queued"
    waiting = "waiting"  # held back: budget reached or service unavailable; retried later
    preparing = "preparing"
    uploading = "uploading"
    submitted = "submitted"
    running = "running"
    downloading = "downloading"
    conforming = "conforming"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.done, JobState.failed, JobState.cancelled)


@dataclass(frozen=True)
class JobEvent:
    """One change of a job, as every way in reports it (OSC event, status file, progress bar)."""

    job_id: str
    tag: str
    state: JobState
    progress: float  # 0..1 over the whole job
    message: str
    stems: dict[str, str] = field(default_factory=dict)  # label -> path, e.g. {"target": ..., "residual": ...}
    manifest: str | None = None
    error: str | None = None
    flags: tuple[str, ...] = ()
    origin: str = ""  # the way in of the job's request (request.Origin's value), on final events
    eta: float | None = None  # seconds the job is expected to take still; None when unknown
    part: tuple[float, float] | None = None  # done: (start, length) seconds of the source the stems cover


@dataclass(frozen=True)
class JobView:
    """A job as `sam-bridge status`, `/sam/status` and status files show it."""

    job_id: str
    tag: str
    source: str
    what: str  # preset name or the prompt
    state: JobState
    progress: float
    message: str
    created_at: float
    updated_at: float
    origin: str
    stems: dict[str, str] = field(default_factory=dict)
    manifest: str | None = None
    error: str | None = None


class RequestRejected(Exception):
    """The engine will not take a request (bad preset, source outside allowed roots, budget, …)."""


class JobSink(Protocol):
    """The engine as the ways in use it."""

    def submit(self, request: SeparationRequest) -> str:
        """Queue a request; return its job id. Raises `RequestRejected` or `bridge.common.errors.InputError`.

        A request whose `idempotency_key` was seen before returns the earlier job's id instead."""
        ...

    def estimate(self, request: SeparationRequest) -> FileEstimate:
        """What the request would send and cost (its `confirm_above` set); nothing is sent. Raises as
        `submit` does for a request that could not run."""
        ...

    def cancel(self, job_id: str) -> bool: ...

    def get(self, job_id: str) -> JobView | None: ...

    def jobs(self, active_only: bool = False) -> list[JobView]: ...

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call `listener` on every job event (from engine threads); returns an unsubscribe function."""
        ...

    def preset_names(self, project_dir: Path | None = None, include_broken: bool = False) -> list[str]:
        """Preset names usable for a request of `project_dir` (its own presets included); with
        `include_broken`, also those whose file has problems (a request for one gets them)."""
        ...
