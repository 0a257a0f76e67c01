"""A live progress bar on a terminal (rich); silent when output is not a TTY."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class ProgressDisplay:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_message = ""
        self._began = time.monotonic()

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[state]:<11}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("{task.fields[message]}"),
                console=Console(stderr=True), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("job", total=1.0, state="starting", message="")
        return self

    def update(self, state: str, fraction: float, message: str) -> None:
        if self._progress is None or self._task is None:
            return
        if message != self._last_message and message.startswith(("Separating", "Loading", "Done")):
            self._progress.console.print(f"[dim]service:[/dim] {message}")
        self._last_message = message
        self._progress.update(self._task, completed=fraction, state=state, message=message[:60])

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
