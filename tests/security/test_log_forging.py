"""Log forging (#19 item 5): a newline in an OSC path (or in a hot-folder file's name) must not start a
line of its own in the daemon's log or in an `.error.txt`; control characters are shown escaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.osc_helpers import OscClient

pytestmark = pytest.mark.timeout(120)

FORGED = "2026-01-01 00:00:00,000 CRITICAL bridge.daemon: forged by a sender"


def test_a_newline_from_outside_forges_no_line(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    osc = OscClient(("127.0.0.1", int(info["osc"]["port"])))  # type: ignore[index]
    try:
        reply = osc.request("/sam/separate", f"/nowhere/a.wav\n{FORGED}\x1b[2J", "piano", "t", reply="/sam/error")
        assert reply[0] == "t"
    finally:
        osc.close()
    hot = Path(str(info["hot_folder"]))
    odd = hot / "vocals" / f"take\n{FORGED}.wav"
    odd.write_text("not audio")
    error = odd.with_name(odd.name + ".error.txt")
    wait_for(error.exists, timeout=60, what="the error file")
    daemon.stop()
    log = daemon.output() + (user_dirs["state"] / "logs" / "daemon.log").read_text() \
        if (user_dirs["state"] / "logs" / "daemon.log").exists() else daemon.output()
    lines = log.splitlines() + error.read_text().splitlines()
    forged = [line for line in lines if line.startswith(FORGED[:30])]
    print(f"\nforged lines in the log and .error.txt: {len(forged)}")
    assert forged == []
    assert "\\n" + FORGED in log  # the sender's text is there, escaped, inside the line that quotes it
    assert "\x1b" not in log
    assert "\\n" + FORGED in error.read_text()
