"""Windows refuses to replace a file another program holds open (an antivirus scanning it, a DAW script
reading its status file): os.replace raises PermissionError with winerror 5 (ERROR_ACCESS_DENIED) until
that program lets go. Our status, marker and error files are tried again for about a second there.

Simulated faithfully on any system: os.replace raises that PermissionError the first N times, as Windows
does while the reader holds the file, and the module believes it runs on Windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bridge.common import stems
from bridge.common.stems import write_atomically, write_json_atomic

_real_replace = os.replace


def held_open(monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """os.replace fails `times` times as on Windows while another process has the target open."""
    calls: list[str] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(os.fspath(dst))
        if len(calls) <= times:
            raise PermissionError(13, "Access is denied", os.fspath(src), 5, os.fspath(dst))
        _real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stems, "ON_WINDOWS", True, raising=False)  # also before it existed


def test_a_briefly_held_file_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows: None) -> None:
    error_file = tmp_path / "take.wav.error.txt"
    error_file.write_text("the old report\n", encoding="utf-8")
    calls = held_open(monkeypatch, times=3)
    text = "sam-bridge could not separate take.wav\n" + "detail\n" * 5000
    write_atomically(error_file, text)
    assert len(calls) == 4
    assert error_file.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.wav.error.txt"]  # no temp left behind

    status = tmp_path / "take.status.json"
    status.write_text('{"state": "running"}', encoding="utf-8")
    calls.clear()
    write_json_atomic(status, {"state": "done", "stems": {"target": "x" * 10_000}})
    assert len(calls) == 4
    assert json.loads(status.read_text(encoding="utf-8")) == {"state": "done", "stems": {"target": "x" * 10_000}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.status.json", "take.wav.error.txt"]


def test_a_file_held_for_good_gives_a_clear_error_and_leaves_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows: None) -> None:
    status = tmp_path / "take.status.json"
    status.write_text('{"state": "running"}', encoding="utf-8")
    calls = held_open(monkeypatch, times=1000)
    with pytest.raises(PermissionError, match=r"another program .* kept it open") as raised:
        write_json_atomic(status, {"state": "done"})
    assert "take.status.json could not be replaced" in str(raised.value)
    assert 3 <= len(calls) <= 10  # a few tries, not a spin
    assert status.read_text(encoding="utf-8") == '{"state": "running"}'  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.status.json"]
    with pytest.raises(PermissionError, match="could not be replaced"):
        write_atomically(tmp_path / "take.wav.error.txt", "report\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.status.json"]


def test_elsewhere_a_refused_replace_is_not_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On POSIX an open file never blocks a rename: a PermissionError there is real (a read-only folder)."""
    monkeypatch.setattr(stems, "ON_WINDOWS", False, raising=False)
    calls = held_open(monkeypatch, times=1)
    with pytest.raises(PermissionError, match="Access is denied"):
        write_atomically(tmp_path / "marker", "x")
    assert len(calls) == 1
    assert list(tmp_path.iterdir()) == []
