"""The fal key in no sink (#17 item 7): a service answer that echoes the key (a 401 detail quoting the
Authorization header, a 422 quoting each half of `id:secret`) reaches the daemon through every way in;
then every file under the state, project, hot and requests folders, every OSC reply, the daemon's log
and the CLI's output are searched for the key and its parts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tests.conftest as shared
from tests.conftest import wait_for
from tests.osc_helpers import OscClient
from tests.test_daemon import make_source, read_status, requests_dir, wait_state, write_request

pytestmark = pytest.mark.timeout(180)

KEY_ID = "a1b2c3d4-key-id-0042"
KEY_SECRET = "S3cr3tPartOfTheKey9876543210"
KEY = f"{KEY_ID}:{KEY_SECRET}"
PARTS = (KEY, KEY_ID, KEY_SECRET)


def leaks(text: str) -> list[str]:
    return [part for part in PARTS if part in text]


def files_with_key(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                text = path.read_bytes().decode("utf-8", "replace")
                found += [f"{path}: {part[:6]}…" for part in leaks(text)]
    return found


def test_a_service_answer_echoing_the_key_reaches_no_sink(daemon_factory, user_dirs, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.local_service import LocalFalService

    monkeypatch.setattr(shared, "TEST_KEY", KEY)  # the daemon's FAL_KEY
    with LocalFalService(key=KEY) as service:
        echo = f"Invalid Authorization header 'Key {KEY}'"
        halves = f"key id {KEY_ID} does not own secret {KEY_SECRET}"
        service.faults.fail("submit", status=401, times=2, detail=echo)
        service.faults.fail("submit", status=422, times=2, detail=halves)
        daemon = daemon_factory(service.url)
        info = daemon.start()
        project = user_dirs["home"] / "Project"
        project.mkdir()
        # request file
        request = write_request(requests_dir(info), "take1", source=make_source(project / "a.wav"),
                                prompt="bass guitar")
        assert wait_state(request, ("done", "failed"))["state"] == "failed"
        # OSC
        osc = OscClient(("127.0.0.1", int(info["osc"]["port"])))  # type: ignore[index]
        replies = []
        try:
            osc.send("/sam/separate", str(make_source(project / "b.wav", seed=1)), "bass guitar", "t-osc")
            while True:
                reply = osc.receive()
                replies.append(reply)
                if reply.address == "/sam/error" or reply.address == "/sam/done":
                    break
            osc.send("/sam/status")
            while (reply := osc.receive()).address != "/sam/status/end":
                replies.append(reply)
        finally:
            osc.close()
        assert any(r.address == "/sam/error" for r in replies), replies
        # hot folder
        hot = Path(str(info["hot_folder"]))
        dropped = make_source(hot / "vocals" / "c.wav", seed=2)
        error_file = dropped.with_name("c.wav.error.txt")
        wait_for(error_file.exists, timeout=60, what="the error file")
        assert "HTTP 4" in error_file.read_text() or "refused" in error_file.read_text()
        # the CLI
        env = {**os.environ, "FAL_KEY": "", "HOME": str(user_dirs["home"]),
               "SAM_BRIDGE_STATE_DIR": str(user_dirs["state"])}
        env.pop("FAL_KEY")  # `status` reads the journal alone: no key to know of in its process
        cli = [subprocess.run([sys.executable, "-m", "bridge", "status", *extra], env=env, capture_output=True,
                              text=True, timeout=60) for extra in ([], ["--json"])]
        oneshot = subprocess.run(
            [sys.executable, "-m", "bridge", "separate", str(make_source(project / "d.wav", seed=3)),
             "--prompt", "bass guitar", "--service-url", service.url],
            env={**env, "FAL_KEY": KEY}, capture_output=True, text=True, timeout=60)
        assert oneshot.returncode != 0
        daemon.stop()
        assert service.stats()["submits"] == 0
    status_text = read_status(request).get("error", "")
    assert "<redacted>" in status_text, status_text  # the echo arrived, masked
    cli_text = "".join(r.stdout + r.stderr for r in [*cli, oneshot])
    reply_text = repr([r.args for r in replies])
    assert not leaks(cli_text), cli_text
    assert not leaks(reply_text), reply_text
    assert not leaks(daemon.output())
    assert not files_with_key(user_dirs["state"], user_dirs["home"], user_dirs["hot"], requests_dir(info),
                              user_dirs["config"])
    journal = user_dirs["state"] / "journal.sqlite"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(user_dirs["state"].stat().st_mode) == 0o700
    print(f"key parts found in files, replies, logs and CLI output: 0 (of {len(PARTS)} parts searched)")
