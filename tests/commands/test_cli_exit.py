"""The `sam-bridge` script ends without the interpreter's teardown (`bridge.cli.exit_now`): what it must
still do is deliver every byte of output, the exit code, the exit handlers, and wait for live work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SAM_BRIDGE_STATE_DIR": str(tmp_path / "state"),
            "SAM_BRIDGE_CONFIG": str(tmp_path / "config.yaml"), "HOME": str(tmp_path)}


def test_output_through_a_pipe_arrives_whole_and_the_code_passes_through(env: dict[str, str]) -> None:
    listing = subprocess.run([sys.executable, "-m", "bridge", "presets", "list", "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    presets = json.loads(listing.stdout)  # cut short, it would not parse
    assert len(presets["presets"]) >= 20 and len(listing.stdout) > 4000
    missing = subprocess.run([sys.executable, "-m", "bridge", "presets", "show", "no-such-preset"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode not in (0, None)
    assert "no-such-preset" in missing.stderr


_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: out.with_suffix(".handler").write_text("ran"))
def late_work():
    time.sleep(0.5)
    out.write_text("finished")
threading.Thread(target=late_work).start()  # not a daemon: a normal exit waits for it
sys.argv = ["sam-bridge", "presets", "list"]
from bridge.cli import entry
entry()
"""


def test_exit_handlers_run_and_live_work_is_waited_for(env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "work.txt"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(marker)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "finished"
    assert marker.with_suffix(".handler").read_text() == "ran"
