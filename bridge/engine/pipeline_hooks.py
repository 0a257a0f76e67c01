"""What the pipeline asks of whoever runs it (the engine, or the CLI standing alone), and what it hands back."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bridge.common.jobs import JobState
from bridge.engine.manifest import StepRecord
from bridge.fal.client import RequestHandle

# Share of the job's progress bar each stage ends at, within one step.
STAGE_END = {
    JobState.preparing: 0.03, JobState.uploading: 0.15, JobState.submitted: 0.2, JobState.running: 0.75,
    JobState.downloading: 0.85, JobState.conforming: 1.0,
}


class Hooks(Protocol):
    def progress(self, state: JobState, fraction: float, message: str, eta: float | None = None) -> None:
        """`eta`: seconds the job should still take, None when unknown."""

    def submitting(self, step: int) -> None:
        """Called just before a submit is sent (the journal marks the step 'submit may have landed')."""

    def submitted(self, step: int, handle: RequestHandle) -> None:
        """Called as soon as the service accepted step `step`; must persist `handle` before returning."""

    def not_submitted(self, step: int) -> None:
        """The service definitely refused the submit (its answer said so): nothing landed, nothing to fear."""

    def cancelled(self) -> bool: ...

    def cancel_requested(self) -> bool:
        """Asked afresh when the service ended a request as cancelled: did a user cancel this job (maybe on
        another machine, which cancels at the service at once), or was it cancelled at the service alone?"""

    def service_log(self, line: str) -> None:
        """Each new log line of the service, in order (the CLI prints them live)."""

    def service_slot(self) -> AbstractContextManager[object]:
        """Held from upload to download: the engine's in-flight limit counts jobs at the service only."""
        ...

    def local_slot(self) -> AbstractContextManager[object]:
        """Held while conforming: CPU and memory heavy, so few at once whatever the in-flight limit."""
        ...


class StandaloneHooks:
    """Hooks for a run outside the engine (the CLI, tests): nothing journalled, no limits, never cancelled.
    Subclasses override what they care about."""

    def progress(self, state: JobState, fraction: float, message: str, eta: float | None = None) -> None:
        pass

    def submitting(self, step: int) -> None:
        pass

    def submitted(self, step: int, handle: RequestHandle) -> None:
        pass

    def not_submitted(self, step: int) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def cancel_requested(self) -> bool:
        return False

    def service_log(self, line: str) -> None:
        pass

    def service_slot(self) -> AbstractContextManager[object]:
        return nullcontext()

    def local_slot(self) -> AbstractContextManager[object]:
        return nullcontext()


@dataclass
class JobResult:
    stems: dict[str, Path]
    manifest: Path
    flags: list[str]
    steps: list[StepRecord]
    estimated_cost: float
    timings: dict[str, float]
