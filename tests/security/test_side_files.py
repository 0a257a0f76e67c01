"""The small files a way in reads beside the audio (hot-folder sidecars, request and status files),
planted by whoever can write into those folders, through the real daemon: a sidecar symlink to a file
outside the allowed folders, a FIFO or a huge file under such a name. None may be read from outside, copy
its text into an error file, stop the folder's thread (a FIFO blocks an ordinary open() for ever) or fill
the daemon's memory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.test_daemon import make_source, read_status, requests_dir, wait_state, write_request

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")]

SECRET = "sk-live-0123456789abcdef"


def error_of(hot_file: Path, timeout: float = 60.0) -> str:
    error = hot_file.with_name(hot_file.name + ".error.txt")
    wait_for(error.exists, timeout=timeout, what=f"{hot_file.name}'s error file")
    return error.read_text(encoding="utf-8")


def test_hot_folder_sidecars_from_outside_fifos_and_huge_ones_are_refused_without_their_text(
        daemon_factory, service, user_dirs, tmp_path: Path) -> None:
    outside = tmp_path / "secret"  # neither home, nor a hot folder, nor an allowed root
    outside.mkdir()
    (outside / "creds.yaml").write_text(f"api_key: {SECRET}: [\n", encoding="utf-8")  # YAML error on line 1
    (outside / "prompt.yaml").write_text(f"prompt: {SECRET}\n", encoding="utf-8")
    daemon = daemon_factory(service.url)
    info = daemon.start()
    vocals = Path(str(info["hot_folder"])) / "vocals"
    # the FIFO first: before the fix it stopped the hot folder's only worker for good
    os.mkfifo(vocals / "piped.sam.yaml")
    make_source(vocals / "piped.wav", seed=1)
    (vocals / "creds.sam.yaml").symlink_to(outside / "creds.yaml")
    make_source(vocals / "creds.wav", seed=2)
    (vocals / "prompt.wav.sam.yaml").symlink_to(outside / "prompt.yaml")
    make_source(vocals / "prompt.wav", seed=3)
    (vocals / "huge.sam.yaml").write_text("prompt: piano\n" + "# padding\n" * 20_000, encoding="utf-8")
    make_source(vocals / "huge.wav", seed=4)
    (vocals / "typo.sam.yaml").write_text(f"prompt: piano\nkey: *{SECRET}\n", encoding="utf-8")  # names it
    make_source(vocals / "typo.wav", seed=5)
    make_source(vocals / "plain.wav", seed=6)  # a file with no sidecar is still taken

    errors: dict[str, str] = {}
    for name in ("creds", "typo", "prompt", "huge", "piped"):
        errors[name] = error_of(vocals / f"{name}.wav")
        assert SECRET not in errors[name], (name, errors[name])
        assert "^" not in errors[name], (name, errors[name])  # no snippet of the file with a caret under it
    wait_for(lambda: service.stats()["submits"] >= 1, timeout=60, what="plain.wav to be sent")
    daemon.stop()
    assert "outside the folders sam-bridge may read" in errors["creds"]
    assert "outside the folders sam-bridge may read" in errors["prompt"]
    assert "not a regular file" in errors["piped"]
    assert "more than the 64 KiB" in errors["huge"]
    assert "line 2, column 6: found undefined alias" in errors["typo"], errors["typo"]
    assert service.stats()["submits"] == 1  # plain.wav alone: nothing was sent with a prompt from outside


def test_a_fifo_named_like_a_manifest_stops_no_hot_folder(daemon_factory, service, user_dirs) -> None:
    """Manifests (`*.sam.json`) are read to tell our stems from a user's files, before each file is taken."""
    daemon = daemon_factory(service.url)
    info = daemon.start()
    vocals = Path(str(info["hot_folder"])) / "vocals"
    os.mkfifo(vocals / "planted.sam.json")
    make_source(vocals / "take.wav", seed=7)
    stems = vocals / "Stems"
    wait_for(lambda: len(list(stems.glob("take - *.wav"))) == 2, timeout=60, what="take.wav's stems")
    daemon.stop()
    assert service.stats()["submits"] == 1
    assert not (vocals / "take.wav.error.txt").exists()
    assert stat.S_ISFIFO(os.lstat(vocals / "planted.sam.json").st_mode)  # left as it was: never opened to wait


def test_request_folder_fifos_and_huge_requests_stop_nothing(daemon_factory, service, user_dirs) -> None:
    daemon = daemon_factory(service.url)
    info = daemon.start()
    folder = requests_dir(info)
    source = make_source(user_dirs["home"] / "take.wav")
    # planted: a FIFO as a request, and one as the status file of a real request
    os.mkfifo(folder / "stuck.json")
    os.mkfifo(folder / "answered.status.json")
    answered = write_request(folder, "answered", source=source, prompt="piano")  # each its own prompt: no
    huge = write_request(folder, "huge", source=source, prompt="drums", tag="x" * (2 * 1024 * 1024))  # reuse
    after = write_request(folder, "after", source=source, prompt="bass guitar")
    status = wait_state(after, ("done", "failed"), timeout=60)
    assert status["state"] == "done", status
    refused = wait_state(huge, ("done", "failed"), timeout=30)
    assert refused["state"] == "failed", refused
    assert "too large" in refused["error"] and "1 MiB" in refused["error"], refused["error"]
    stuck = json.loads((folder / "stuck.status.json").read_text(encoding="utf-8"))
    assert stuck["state"] == "failed" and "not a regular file" in stuck["error"], stuck
    # the planted status FIFO is no answer: the request is taken, and its status replaces the FIFO
    assert wait_state(answered, ("done", "failed"), timeout=60)["state"] == "done", read_status(answered)
    daemon.stop()
    assert service.stats()["submits"] == 2  # after and answered; the huge one was never sent
