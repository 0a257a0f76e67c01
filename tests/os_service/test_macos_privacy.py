"""macOS privacy protection (TCC) under the LaunchAgent: the refusal is recognised (EPERM, not EACCES),
and the user is told exactly what to grant — before install for the folders in the config, and from the
service's log after a refusal. macOS itself is stood in for by `Tcc` below."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bridge.commands.service import blocked_in_logs, privacy_notes
from bridge.os_service.files import make_plan
from bridge.os_service.macos_privacy import check_folders, explain_log

PROGRAM = "/opt/homebrew/Cellar/python@3.12/3.12.4/Frameworks/Python.framework/Versions/3.12/bin/python3.12"


class Tcc:
    """macOS's answer to a background program that lists a protected folder it was not granted (Apple
    Platform Security, "Protecting access to user data": Desktop, Documents, Downloads, iCloud Drive,
    removable and network volumes): EPERM, "Operation not permitted". Elsewhere the real listdir answers."""

    def __init__(self, home: Path, granted: frozenset[str] = frozenset()) -> None:
        self.home, self.granted = home, granted

    def __call__(self, folder: Path) -> list[str]:
        relative = folder.relative_to(self.home).parts if folder.is_relative_to(self.home) else ()
        area = relative[0] if relative and relative[0] in ("Desktop", "Documents", "Downloads") else None
        if str(folder).startswith("/Volumes/"):
            area = "Volumes"
        if area and area not in self.granted:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(folder))
        return os.listdir(folder)


def test_each_refused_folder_gets_exactly_what_to_grant(tmp_path: Path) -> None:
    home = tmp_path / "Users" / "you"
    for name in ("Documents/Live Sets", "Music/Samples"):
        (home / name).mkdir(parents=True)
    folders = [home / "Documents" / "Live Sets", home / "Music" / "Samples", Path("/Volumes/Studio SSD/Projects")]
    problems = check_folders(folders, home, PROGRAM, listdir=Tcc(home))
    assert len(problems) == 2  # ~/Music is not protected
    assert problems[0] == (
        f"macOS does not let the sam-bridge service read {home}/Documents/Live Sets (Operation not permitted): it "
        "is in a place macOS protects (Documents Folder). Open System Settings > Privacy & Security > Full Disk "
        f"Access, click +, press Cmd-Shift-G, paste  {PROGRAM}  and switch it on (or, once it is listed under "
        "Files and Folders, allow just \"Documents Folder\" there). Then restart the service:  sam-bridge "
        "service install")
    assert "/Volumes/Studio SSD/Projects" in problems[1] and "Removable Volumes" in problems[1]
    assert check_folders(folders[:2], home, PROGRAM, listdir=Tcc(home, frozenset({"Documents"}))) == []


def test_a_files_own_permissions_are_not_blamed_on_macos(tmp_path: Path) -> None:
    def denied(folder: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))

    assert check_folders([tmp_path / "Documents"], tmp_path, PROGRAM, listdir=denied) == []


def test_the_services_log_is_read_for_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SAM_BRIDGE_STATE_DIR", str(tmp_path / "state"))
    plan = make_plan("macos", {"HOME": str(home)}, ["/usr/local/bin/sam-bridge", "run"], uid=501)
    log = Path(str(plan.paths.log_file))
    log.parent.mkdir(parents=True)
    refused = f"{home}/Desktop/take 1.wav"
    log.write_text("2026-01-01 10:00:00 INFO bridge.daemon: started\n"
                   f"PermissionError: [Errno 1] Operation not permitted: '{refused}'\n"
                   f"PermissionError: [Errno 1] Operation not permitted: '{refused}'\n", encoding="utf-8")
    [note] = blocked_in_logs(plan)
    assert f"read {refused} (Operation not permitted)" in note and "(Desktop Folder)" in note
    assert explain_log(["PermissionError: [Errno 13] Permission denied: '/x'"], home, PROGRAM) == []
    [unnamed] = explain_log(["job 12 failed: “take.wav” could not be read (Operation not permitted)."], home, PROGRAM)
    assert "Full Disk Access" in unnamed and PROGRAM in unnamed


def test_before_install_the_configs_protected_folders_are_named(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    config = tmp_path / "config.yaml"
    config.write_text(f"hot_folders:\n  - path: {home}/Downloads/to-separate\n"
                      "allowed_source_roots:\n  - /Volumes/Studio SSD\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SAM_BRIDGE_CONFIG", str(config))
    notes = privacy_notes()
    assert notes[1] == f"  {home}/Downloads/to-separate  (Downloads Folder)"
    assert notes[2].startswith("  /Volumes/Studio SSD  (Removable Volumes")
    assert "Full Disk Access" in notes[-1]
