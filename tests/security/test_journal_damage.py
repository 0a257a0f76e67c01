"""A journal damaged while the daemon runs (#19 item 4): detected, no new work taken, said on every channel
(OSC replies, /sam/pong's health word, status files, one log line with what to do), then exit code 4, which
the service managers do not restart (started again, it names the damaged file when it stays broken)."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.osc_helpers import OscClient
from tests.test_daemon import make_source, requests_dir, wait_state, write_request

pytestmark = pytest.mark.timeout(180)


def test_a_journal_truncated_under_the_running_daemon(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    source = make_source(user_dirs["home"] / "a.wav")
    first = write_request(requests_dir(info), "first", source=source, prompt="bass guitar")
    assert wait_state(first, ("done", "failed"))["state"] == "done"
    journal = user_dirs["state"] / "journal.sqlite"
    with open(journal, "r+b") as handle:  # a bad disk, a sync tool, a stray `> journal.sqlite`
        handle.truncate(0)
    osc = OscClient(("127.0.0.1", int(info["osc"]["port"])))  # type: ignore[index]
    try:
        # the first request that touches the journal finds the damage; the ones after it are told at once
        refusal = osc.request("/sam/separate", str(source), "bass guitar", "t1", reply="/sam/error")
        assert "journal" in refusal[1] and "damaged" in refusal[1], refusal
        pong = osc.request("/sam/ping", reply="/sam/pong")
        assert pong[1] == "journal-damaged", pong
        second = write_request(requests_dir(info), "second", source=source, prompt="bass guitar")
        status = wait_state(second, ("failed",))
        assert "journal" in status["error"] and "damaged" in status["error"]
    finally:
        osc.close()
    assert daemon.proc is not None
    wait_for(lambda: daemon.proc.poll() is not None, timeout=60, what="the daemon to exit")
    code = daemon.stop()
    log = daemon.output()
    print(f"\nafter a live truncation: pong health {pong[1]!r}, exit code {code}, "
          f"tracebacks {log.count('Traceback')}, CRITICAL lines {log.count(' CRITICAL ')}")
    assert code == 4
    assert "Traceback" not in log
    assert log.count(" CRITICAL ") == 1 and "Start sam-bridge again" in log
