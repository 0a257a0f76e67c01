"""A live progress display on a terminal (rich): state, a bar, percentage, elapsed time, the time left and
the latest message (queue position, chunk, upload size and speed); with -v the service's log lines are
printed above it. What came from outside is shown as text (control characters escaped).
Silent when disabled (output is not a TTY, or --quiet).

Fits 80 columns: the bar takes what the fixed columns leave, and the message is cut to the rest."""

from __future__ import annotations

import contextlib
import math

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bridge.common.redact import safe_text

FIXED_COLUMNS = 11 + 1 + 4 + 1 + 7 + 1 + 8 + 1  # state, percentage, elapsed, "~12m05s", spaces
BAR_WIDTH = 16


def eta_text(seconds: float | None) -> str:
    """`~1m05s` left, or `` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    whole = round(seconds)
    return f"~{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"~{whole}s"


class ProgressDisplay:
    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_message = ""
        self._message_width = 40

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            console = self._console or Console(stderr=True)
            self._message_width = max(10, console.width - FIXED_COLUMNS - BAR_WIDTH - 2)
            self._progress = Progress(
                TextColumn("[bold]{task.fields[state]:<11}"), BarColumn(bar_width=BAR_WIDTH),
                TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                TextColumn("{task.fields[eta]:>7}", markup=False),
                TextColumn("{task.fields[message]}", markup=False),
                console=console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("job", total=1.0, state="starting", message="", eta="")
        return self

    def update(self, state: str, fraction: float, message: str, eta: float | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        message = safe_text(message)  # the service's log line, a file name: text, never a terminal command
        with contextlib.suppress(OSError):  # a closed terminal: the run goes on (or is being cancelled)
            shown = message if len(message) <= self._message_width else message[: self._message_width - 1] + "…"
            self._progress.update(self._task, completed=fraction, state=state, message=shown, eta=eta_text(eta))
            if message != self._last_message:  # each new message is drawn at least once, however brief
                self._last_message = message
                self._progress.refresh()

    def line(self, text: str) -> None:
        """A line kept in the scrollback above the bar (or printed plainly when there is no bar)."""
        if self._progress is not None:
            with contextlib.suppress(OSError):
                self._progress.console.print(escape(safe_text(text)), highlight=False)

    def service_line(self, text: str) -> None:
        """One log line from the service, kept in the scrollback above the bar."""
        if self._progress is not None:
            with contextlib.suppress(OSError):
                self._progress.console.print(f"[dim]service:[/dim] {escape(safe_text(text))}", highlight=False)

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            with contextlib.suppress(OSError):  # the terminal is gone (closed): nothing left to draw on
                progress.stop()
