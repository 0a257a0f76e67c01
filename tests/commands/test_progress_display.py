"""The progress display shows what came from outside (the service's log lines, file names in messages)
as text: rich strips only a few control characters, and ESC [ 2J or an OSC 52 clipboard write passed."""

from __future__ import annotations

import io

from rich.console import Console

from bridge.commands.progress_display import ProgressDisplay
from tests.commands.test_status import HOSTILE, RAW_CONTROL


def test_messages_lines_and_service_lines_show_control_sequences_as_text() -> None:
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=False, width=120)  # no styling codes of rich's own
    with ProgressDisplay(True, console) as display:
        display.update("running", 0.5, f"queue{HOSTILE}")
        display.line(f"take{HOSTILE}.wav")
        display.service_line(f"loading{HOSTILE}")
    text = shown.getvalue()
    assert not RAW_CONTROL.search(text.replace("\n", "")), repr(text)
    escaped = HOSTILE.encode("unicode_escape").decode()
    for words in (f"take{escaped}.wav", f"service: loading{escaped}", "queue\\x1b[2J"):
        assert words in text, text
