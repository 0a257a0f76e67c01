"""What `sam-bridge separate` and the CLI's error lines print shows control sequences from outside as text.

A file name is whoever made the file's choice (a download, a colleague's share, a glob over a folder): an
ESC [ 2J, an OSC 52 clipboard write or an 8-bit CSI in it must reach the terminal as visible text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.commands.test_status import HOSTILE, RAW_CONTROL
from tests.test_daemon import make_source

ROOT = Path(__file__).resolve().parents[2]


def separate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", "separate", *args, "--prompt", "piano", "--local"],
                          capture_output=True, text=True, encoding="utf-8", errors="surrogateescape",
                          cwd=ROOT, timeout=120, check=False)


def test_separate_prints_hostile_file_names_as_text(user_dirs) -> None:
    bad = user_dirs["home"] / f"take{HOSTILE}.wav"
    bad.write_bytes(b"not audio")  # refused per file: the run goes on to the next
    good = make_source(user_dirs["home"] / f"mix{HOSTILE}.wav", seconds=0.5)
    run = separate(str(bad), str(good))
    assert run.returncode != 0, run.stderr
    for text in (run.stdout, run.stderr):
        assert not RAW_CONTROL.search(text), repr(text)
    escaped = HOSTILE.encode("unicode_escape").decode()
    assert f"[1/2] take{escaped}.wav" in run.stderr and f"take{escaped}.wav" in run.stderr
    assert f"mix{escaped}.wav:" in run.stdout and "target: " in run.stdout  # the good one was separated
    assert "1 of 2 files separated" in run.stderr

    as_json = separate(str(bad), str(good), "--json")
    assert not RAW_CONTROL.search(as_json.stdout), repr(as_json.stdout)
    summaries = json.loads(as_json.stdout)  # still JSON, the same names once parsed
    assert [s["source"] for s in summaries] == [str(bad), str(good)]

    estimate = separate(str(good), "--estimate")
    assert estimate.returncode == 0, estimate.stderr
    assert not RAW_CONTROL.search(estimate.stdout), repr(estimate.stdout)
    assert f"mix{escaped}.wav" in estimate.stdout


def test_a_command_error_line_shows_control_sequences_as_text(user_dirs) -> None:
    missing = user_dirs["home"] / f"gone{HOSTILE}.wav"
    run = separate(str(missing))
    assert run.returncode != 0
    assert not RAW_CONTROL.search(run.stderr), repr(run.stderr)
    assert f"gone{HOSTILE.encode('unicode_escape').decode()}.wav" in run.stderr
