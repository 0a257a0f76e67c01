"""`sam-bridge reaper install`: the scripts shipped in the package land in a (fake) REAPER resource folder,
the actions are registered once, and nothing happens while a REAPER process runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.os_service.reaper_install import (
    KB_FILE,
    POINTER_FILE,
    default_resource_path,
    install_scripts,
    reaper_processes,
    shipped_scripts_dir,
)
from tests.daw.harness import REAPER_DIR


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    folder = tmp_path / "REAPER"
    folder.mkdir()
    (folder / KB_FILE).write_text('KEY 1 65 _SWS_ABOUT 0\nSCR 4 0 RSabc "Custom: mine.lua" "mine.lua"\n')
    return folder


def test_the_package_ships_the_scripts() -> None:
    shipped = shipped_scripts_dir()
    assert {p.name for p in shipped.glob("*.lua")} == {p.name for p in REAPER_DIR.glob("*.lua")}


def test_install_copies_the_scripts_points_at_the_daemon_and_registers_the_actions_once(
        resources: Path, tmp_path: Path) -> None:
    env = {"SAM_BRIDGE_STATE_DIR": str(tmp_path / "state")}
    done = run_cli("reaper", "install", "--resource-path", str(resources), env=env)
    if "REAPER is running" in done.stderr + done.stdout:
        pytest.skip("a REAPER process runs on this machine")
    assert done.returncode == 0, done.stderr
    target = resources / "Scripts" / "sam-bridge"
    for script in REAPER_DIR.glob("*.lua"):
        assert (target / script.name).read_bytes() == script.read_bytes()
    assert (target / POINTER_FILE).read_text().strip() == str(tmp_path / "state")
    kb = (resources / KB_FILE).read_text()
    assert kb.startswith('KEY 1 65 _SWS_ABOUT 0\nSCR 4 0 RSabc "Custom: mine.lua" "mine.lua"\n')  # theirs kept
    for action in ("Separate selected items", "Audition prompt on selection", "Cancel", "Collect finished stems"):
        assert kb.count(f'"sam-bridge/sam-bridge - {action}.lua"') == 1
    assert "sam_bridge_core" not in kb  # libraries are not actions
    assert (resources / (KB_FILE + ".before-sam-bridge")).exists()
    again = run_cli("reaper", "install", "--resource-path", str(resources), env=env)
    assert again.returncode == 0 and "already there" in again.stdout
    assert (resources / KB_FILE).read_text() == kb


# REAPER on Windows: the ANSI code page (\xe9 is "é" in cp1252, not UTF-8) and CRLF line endings
ANSI_KB = (b'KEY 1 65 _SWS_ABOUT 0\r\nSCR 4 0 RSabc "Custom: caf\xe9.lua" "caf\xe9.lua"\r\n'
           b'ACT 0 0 "mine" "Custom: r\xe9glage" 40001\r\n')


@pytest.mark.parametrize(("original", "newline"), [
    (ANSI_KB, b"\r\n"),
    (ANSI_KB.rstrip(b"\r\n"), b"\r\n"),  # no line end after the last line
    (ANSI_KB.replace(b"\r\n", b"\n"), b"\n"),
    (ANSI_KB.replace(b"\xe9", "\u00e9".encode()), b"\r\n"),  # UTF-8 with CRLF: the line ends stay CRLF
])
def test_install_adds_its_lines_and_leaves_every_other_byte_of_the_action_list(
        tmp_path: Path, original: bytes, newline: bytes) -> None:
    """It crashed (UnicodeEncodeError) on a non-UTF-8 reaper-kb.ini after copying the scripts, and turned
    CRLF into LF."""
    resources = tmp_path / "REAPER"
    resources.mkdir()
    kb_file = resources / KB_FILE
    kb_file.write_bytes(original)
    result = install_scripts(resources, tmp_path / "state", "windows", presets=("Room tone é",),
                             check_running=False)
    assert len(result.registered) == 5 and "sam-bridge - Separate Room tone é.lua" in result.registered
    after = kb_file.read_bytes()
    head = original if original.endswith(newline) else original + newline
    assert after.startswith(head)
    added = after[len(head):].split(newline)
    assert added[-1] == b"" and len(added) == 1 + len(result.registered)
    for line, name in zip(added, result.registered, strict=False):
        assert line.startswith(b"SCR 4 0 RS") and line.endswith(f'"sam-bridge/{name}"'.encode())
    assert (resources / (KB_FILE + ".before-sam-bridge")).read_bytes() == original
    again = install_scripts(resources, tmp_path / "state", "windows", presets=("Room tone é",),
                            check_running=False)
    assert again.registered == [] and len(again.already_registered) == 5
    assert kb_file.read_bytes() == after


@pytest.fixture
def fake_reaper_process(tmp_path: Path) -> Iterator[None]:
    """A real process named `reaper` (a copy of sleep), as the OS lists REAPER."""
    sleep = shutil.which("sleep")
    if not sleep or sys.platform == "win32":
        pytest.skip("needs sleep and ps")
    binary = tmp_path / "bin" / "reaper"
    binary.parent.mkdir()
    shutil.copy(sleep, binary)
    process = subprocess.Popen([str(binary), "60"])
    try:
        yield
    finally:
        process.kill()
        process.wait()


def test_install_refuses_while_reaper_runs(resources: Path, tmp_path: Path, fake_reaper_process: None) -> None:
    assert reaper_processes("linux")
    done = run_cli("reaper", "install", "--resource-path", str(resources),
                   env={"SAM_BRIDGE_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode != 0
    assert "REAPER is running: close it first" in done.stderr
    assert not (resources / "Scripts").exists()


def test_install_names_a_missing_resource_folder(tmp_path: Path) -> None:
    done = run_cli("reaper", "install", "--resource-path", str(tmp_path / "nope"),
                   env={"SAM_BRIDGE_STATE_DIR": str(tmp_path / "state")})
    if "REAPER is running" in done.stderr:
        pytest.skip("a REAPER process runs on this machine")
    assert done.returncode != 0 and "No REAPER resource folder" in done.stderr
    assert "Show REAPER resource path" in done.stderr


def test_default_resource_folders() -> None:
    assert default_resource_path("windows", {"APPDATA": "C:\\Users\\a\\AppData\\Roaming"}) == Path(
        "C:\\Users\\a\\AppData\\Roaming") / "REAPER"
    assert default_resource_path("macos", {"HOME": "/Users/a"}) == Path("/Users/a/Library/Application Support/REAPER")
    assert default_resource_path("linux", {"HOME": "/home/a"}) == Path("/home/a/.config/REAPER")


def test_the_daemons_project_lists_follow_the_projects_preset_files(tmp_path: Path) -> None:
    import json
    import time

    from bridge.presets.library import PresetLibrary, default_search_path
    from bridge.presets.project_lists import ProjectPresetLists

    project = tmp_path / "Song "  # a folder name may end in a space: kept as the script wrote it
    (project / "sam-bridge" / "presets").mkdir(parents=True)
    preset = project / "sam-bridge" / "presets" / "room.yaml"
    preset.write_text("name: Room tone\nprompt: hum\n")
    folder = tmp_path / "project-presets"
    folder.mkdir()
    (folder / "abc.want").write_text(str(project), encoding="utf-8")
    lists = ProjectPresetLists(PresetLibrary(default_search_path(config_dir=tmp_path / "cfg"), quiet=True), folder)
    lists.refresh()
    answer = json.loads((folder / "abc.json").read_text(encoding="utf-8"))
    assert answer["project_dir"] == str(project)
    names = [p["name"] for p in answer["presets"]]
    assert "Room tone" in names and "vocals" in names and answer["problems"] == []
    time.sleep(0.01)
    preset.write_text("name: Room hum\nprompt: hum\n")
    (project / "sam-bridge" / "presets" / "broken.yaml").write_text("name: [oops\n")
    lists.refresh()
    answer = json.loads((folder / "abc.json").read_text(encoding="utf-8"))
    assert "Room hum" in [p["name"] for p in answer["presets"]]
    assert [Path(p["file"]).name for p in answer["problems"]] == ["broken.yaml"]
