"""What a command imports decides how long REAPER and scripts wait for it: `--help`, `separate --help` and
`status` must not load the audio stack, the HTTP client or the stand-in (bench_startup.py times them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("numpy", "scipy", "soundfile", "soxr", "httpx", "rich", "bridge.audio", "bridge.local_service",
         "bridge.engine.pipeline")

_PROBE = """
import contextlib, io, json, sys
from bridge.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("argv", [["--help"], ["separate", "--help"], ["status"], ["presets", "--help"]])
def test_a_command_that_does_no_audio_work_loads_no_audio_code(argv: list[str], tmp_path: Path) -> None:
    env = {"SAM_BRIDGE_STATE_DIR": str(tmp_path / "state"), "SAM_BRIDGE_CONFIG": str(tmp_path / "config.yaml"),
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                          check=True, timeout=60)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    heavy = [name for name in loaded if any(name == h or name.startswith(h + ".") for h in HEAVY)]
    assert heavy == []
