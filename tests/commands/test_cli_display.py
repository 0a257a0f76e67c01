"""The terminal display of `sam-bridge separate` (issue #23, item 4): at 80 columns every bar line fits and
carries the state, the bar, the percentage and the time left; with several files `[n/N] name` comes before
that file's bar; the service's log lines only with -v. A real process on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from bridge.local_service import LocalFalService
from tests.commands.test_cli_separate import data_env, make_source, read_until_exit, start_cli
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.timeout(120)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_several_files_at_80_columns(user_dirs: dict[str, Path], tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    a = make_source(music / "a.wav", 44100, 1, "PCM_16", 3.0).path
    b = make_source(music / "b.wav", 44100, 1, "PCM_16", 3.0).path
    with LocalFalService(key=TEST_KEY, processing_delay=0.4) as service:
        master, slave = pty.openpty()
        proc = start_cli(["separate", a, b, "--prompt", "a rather long prompt describing a sound at length",
                          "--service-url", service.url, "--max-chunk-duration", "1", "--chunk-overlap", "0"],
                         data_env(FAL_KEY=TEST_KEY, COLUMNS="80", TERM="xterm"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        screen = b""
        try:
            for data in read_until_exit(master, proc):
                screen += data
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert proc.returncode == 0, text[-3000:]
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    bars = [line for line in lines if re.search(r"\d+%", line)]
    assert bars and all(len(line) <= 80 for line in bars), [line for line in bars if len(line) > 80]
    assert any(re.search(r"running\s+━*.*\d+%\s+\d:\d\d:\d\d\s+~\d+", line) for line in bars), bars  # with ETA
    assert any("Separating chunk 3/3" in line for line in bars)  # the service's progress, in the bar
    first, second = text.index("[1/2] a.wav"), text.index("[2/2] b.wav")
    assert first < text.index("%") < second  # each name before its file's bar
    assert re.search(r"done\s+━+\s+100%", text[first:second])  # the first file's bar finished before the second
    assert "service:" not in text  # the service's log lines only with -v
