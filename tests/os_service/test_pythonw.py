"""The Windows service runs `pythonw -m bridge run`: pythonw gives the process no console, so
`sys.stdout` and `sys.stderr` are None and file descriptors 1 and 2 lead nowhere (Python docs, "sys.__stdout__":
"under some conditions stdin, stdout and stderr as well as the original values __stdin__, __stdout__ and
__stderr__ can be None. It is usually the case for Windows GUI apps that aren't connected to a console and
Python apps started with pythonw"). The daemon must run and serve jobs that way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY, wait_for
from tests.test_daemon import make_source, read_status, write_request

pytestmark = pytest.mark.timeout(120)

# What pythonw.exe gives a script: no standard streams at all.
PYTHONW_START = """
import os, sys
sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = None
os.close(1); os.close(2)
from bridge.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_the_daemon_without_stdout_or_stderr_serves_a_job(service, user_dirs) -> None:
    env = {**os.environ, "FAL_KEY": TEST_KEY, "HOME": str(user_dirs["home"])}
    proc = subprocess.Popen([sys.executable, "-c", PYTHONW_START, "run", "--service-url", service.url,
                             "--osc-port", "0", "--no-hot-folder"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        info_path = user_dirs["state"] / "daemon.json"
        wait_for(lambda: info_path.exists() or proc.poll() is not None, what="the daemon to start")
        # the greeting (printed and flushed after daemon.json is written) must not end it either
        source = make_source(user_dirs["home"] / "take.wav", seconds=1.0)
        request = write_request(user_dirs["state"] / "requests", "take", source=source, prompt="voice")
        wait_for(lambda: read_status(request).get("state") in ("done", "failed") or proc.poll() is not None,
                 what="the job to end")
        status = read_status(request)
        assert proc.poll() is None, f"the daemon exited ({proc.returncode}); log:\n{_log(user_dirs)}"
        assert status["state"] == "done", status
        assert Path(status["stems"]["target"]).exists() and service.stats()["submits"] == 1
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0
    assert "stopping" in _log(user_dirs)  # the log file still has everything


def _log(user_dirs: dict[str, Path]) -> str:
    path = user_dirs["state"] / "logs" / "daemon.log"
    return path.read_text(errors="replace") if path.exists() else "(no log)"
