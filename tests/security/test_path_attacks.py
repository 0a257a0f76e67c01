"""Every path attack against every way in (#19 items 1 and 2), through the real daemon: a `Stems` symlink
inside an allowed project, a project preset's `output.folder: ../../../x`, a request file in a requests
folder others can write naming a file or folder outside, `options.folder` climbing out (any way in), a
hot-folder symlink to a file outside, a sidecar's folder. The figure: files read (uploaded) or written
outside the allowed folders, counted by the stand-in's submits and by listing the folders outside."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.osc_helpers import OscClient
from tests.test_daemon import make_source, read_status, requests_dir, wait_state, write_request

pytestmark = pytest.mark.timeout(180)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_no_way_in_reads_or_writes_outside_the_allowed_folders(daemon_factory, service, user_dirs,
                                                               tmp_path: Path) -> None:
    home = user_dirs["home"]
    outside = tmp_path / "outside"  # neither home, nor a hot folder, nor an allowed root
    outside.mkdir()
    secret = make_source(outside / "secret.wav", seed=9)
    before = tree(outside)
    shared = tmp_path / "nas-requests"
    shared.mkdir()
    os.chmod(shared, 0o777)  # a shared folder anyone can drop requests into
    daemon = daemon_factory(service.url, config=f"requests_dir: {shared}\n")
    info = daemon.start()
    assert requests_dir(info) == shared
    project = home / "Song"
    project.mkdir()
    source = make_source(project / "take.wav")
    refused: list[str] = []

    # OSC: a Stems symlink inside an allowed project
    (project / "Stems").symlink_to(outside, target_is_directory=True)
    osc = OscClient(("127.0.0.1", int(info["osc"]["port"])))  # type: ignore[index]
    try:
        refused.append(str(osc.request("/sam/separate", str(source), "bass guitar", "t1", str(project),
                                       reply="/sam/error")[1]))
        # OSC: a project preset that climbs out of the project
        presets = project / "sam-bridge" / "presets"
        presets.mkdir(parents=True)
        (presets / "escape.yaml").write_text("name: escape\nprompt: bass guitar\noutput: {folder: ../../../x}\n")
        refused.append(str(osc.request("/sam/separate", str(source), "escape", "t2", str(project),
                                       reply="/sam/error")[1]))
        # OSC: a source outside
        refused.append(str(osc.request("/sam/separate", str(secret), "bass guitar", "t3",
                                       reply="/sam/error")[1]))
    finally:
        osc.close()
    # request files in a folder others can write: the same policy as OSC
    attacks = {
        "source-outside": {"source": str(secret), "prompt": "bass guitar"},
        "passwd": {"source": "/etc/passwd", "prompt": "bass guitar"},
        "output-outside": {"source": str(source), "prompt": "bass guitar", "output_dir": str(outside)},
        "folder-climbs": {"source": str(source), "prompt": "bass guitar", "options": {"folder": "../../outside"}},
        "folder-absolute": {"source": str(source), "prompt": "bass guitar", "options": {"folder": str(outside)}},
        "project-symlink": {"source": str(source), "prompt": "bass guitar", "project_dir": str(project)},
    }
    for name, fields in attacks.items():
        status = wait_state(write_request(shared, name, **fields), ("done", "failed"))
        assert status["state"] == "failed", (name, status)
        refused.append(status["error"])
    # hot folder: a symlink to a file outside, and a sidecar whose folder climbs out
    hot = Path(str(info["hot_folder"]))
    (hot / "vocals" / "linked.wav").symlink_to(secret)
    make_source(hot / "vocals" / "side.wav", seed=4)
    (hot / "vocals" / "side.sam.yaml").write_text("options: {folder: ../../../../outside}\n")
    for name in ("linked.wav", "side.wav"):
        error = hot / "vocals" / f"{name}.error.txt"
        wait_for(error.exists, timeout=60, what=f"{name}'s error file")
        refused.append(error.read_text())
    daemon.stop()
    print(f"\npath attacks: {len(refused)}; files read (submitted) outside the allowed folders: "
          f"{service.stats()['submits']}; files written outside: {len(tree(outside) - before)}")
    assert service.stats()["submits"] == 0
    assert tree(outside) == before
    assert not (tmp_path / "x").exists() and not (home.parent / "x").exists()
    for text in refused:
        assert "outside the folders" in text or "climb out" in text or "relative to the project" in text, text


def test_a_private_requests_folder_is_trusted_like_the_cli(daemon_factory, service, user_dirs,
                                                           tmp_path: Path) -> None:
    """The default requests folder is created 0700 and its requests may name any drive (REAPER projects
    anywhere keep working); a `..` folder is refused there too."""
    daemon = daemon_factory(service.url)
    info = daemon.start()
    folder = requests_dir(info)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    elsewhere = tmp_path / "other-drive" / "Project"
    elsewhere.mkdir(parents=True)
    source = make_source(elsewhere / "take.wav")
    done = wait_state(write_request(folder, "anywhere", source=source, prompt="bass guitar"), ("done", "failed"))
    assert done["state"] == "done", done
    assert Path(done["stems"]["target"]).parent == elsewhere / "Stems"
    climbs = write_request(folder, "climbs", source=source, prompt="bass guitar", options={"folder": "../../x"})
    assert wait_state(climbs, ("done", "failed"))["state"] == "failed"
    assert "climb out" in read_status(climbs)["error"]
    daemon.stop()
