"""A live progress display on a terminal (rich): a bar with state, percentage, elapsed time and the
latest message (queue position while queued), and the service's log lines printed above it.
Silent when disabled (output is not a TTY, or --quiet)."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class ProgressDisplay:
    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_message = ""

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[state]:<11}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("{task.fields[message]}", markup=False),
                console=self._console or Console(stderr=True), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("job", total=1.0, state="starting", message="")
        return self

    def update(self, state: str, fraction: float, message: str) -> None:
        if self._progress is None or self._task is None:
            return
        with contextlib.suppress(OSError):  # a closed terminal: the run goes on (or is being cancelled)
            self._progress.update(self._task, completed=fraction, state=state, message=message[:60])
            if message != self._last_message:  # each new message is drawn at least once, however brief
                self._last_message = message
                self._progress.refresh()

    def service_line(self, text: str) -> None:
        """One log line from the service, kept in the scrollback above the bar."""
        if self._progress is not None:
            with contextlib.suppress(OSError):
                self._progress.console.print(f"[dim]service:[/dim] {escape(text)}", highlight=False)

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            with contextlib.suppress(OSError):  # the terminal is gone (closed): nothing left to draw on
                progress.stop()
