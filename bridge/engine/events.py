"""Telling the ways in about job changes: the engine's listeners (OSC events, status files, progress bars)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bridge.common.jobs import JobEvent, JobState

log = logging.getLogger(__name__)


class JobEvents:
    def __init__(self) -> None:
        self._listeners: list[Callable[[JobEvent], None]] = []

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, job_id: str, tag: str, state: JobState, progress: float, message: str, *,
             stems: dict[str, str] | None = None, manifest: str | None = None, error: str | None = None,
             flags: tuple[str, ...] = (), origin: str = "", eta: float | None = None,
             part: tuple[float, float] | None = None) -> None:
        event = JobEvent(job_id=job_id, tag=tag, state=state, progress=progress, message=message,
                         stems=stems or {}, manifest=manifest, error=error, flags=flags, origin=origin, eta=eta,
                         part=part)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one broken listener must not stop the job or the other listeners
                log.exception("a job event listener failed")
