"""The real device: scripts/ableton/build_amxd.py writes sam-bridge.amxd (run here, so the shipped file
never lags its sources), the file reads back as Live's container (tests/daw/amxd_reader.py), opens in
presentation within Live's 169 px device height with every file it names inside, and `sam-bridge ableton
install` puts it where Live looks, on macOS and Windows, in fake home folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from tests.daw.amxd_reader import AmxdError, read_amxd
from tests.daw.harness import ABLETON_DIR

BUILD = ABLETON_DIR / "build_amxd.py"
SHIPPED = ABLETON_DIR / "sam-bridge.amxd"
REPO = ABLETON_DIR.parents[1]


def build(out: Path) -> bytes:
    done = subprocess.run([sys.executable, str(BUILD), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_the_build_is_reproducible_and_the_shipped_device_is_current(tmp_path: Path) -> None:
    first, second = build(tmp_path / "a.amxd"), build(tmp_path / "b.amxd")
    assert first == second
    assert SHIPPED.read_bytes() == first, "sam-bridge.amxd is stale: run  python scripts/ableton/build_amxd.py"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_the_device_reads_back_as_a_frozen_max_audio_effect() -> None:
    amxd = read_amxd(SHIPPED.read_bytes())
    assert amxd.device_type == "aaaa" and [c[0] for c in amxd.chunks] == ["ampf", "meta", "ptch"]
    assert sum(8 + size for _, size in amxd.chunks) == SHIPPED.stat().st_size
    assert [e["fnam"] for e in amxd.entries] == ["sam-bridge.amxd", "sam_bridge_device.js"]
    assert amxd.files["sam_bridge_device.js"] == (ABLETON_DIR / "sam_bridge_device.js").read_bytes()
    patcher = amxd.patcher()
    assert patcher["openinpresentation"] == 1
    assert patcher["openrect"][3] == 169.0
    assert patcher["project"]["amxdtype"] == int.from_bytes(b"aaaa", "big")
    shown = [b["box"] for b in patcher["boxes"] if b["box"].get("presentation")]
    assert len(shown) >= 10
    for box in shown:
        x, y, width, height = box["presentation_rect"]
        assert y >= 0 and y + height <= 169, box["id"]  # inside Live's device strip
        assert x + width <= patcher["openrect"][2], box["id"]
    # every file the patch refers to travels inside the device
    named = {d["name"] for d in patcher["dependency_cache"]}
    named |= {b["box"]["text"].split()[1] for b in patcher["boxes"] if b["box"].get("text", "").startswith("js ")}
    assert named <= set(amxd.files)


def test_the_reader_is_no_pushover() -> None:
    data = bytearray(SHIPPED.read_bytes())
    with pytest.raises(AmxdError):
        read_amxd(bytes(data[:-3]))  # truncated
    data[0x1C] ^= 0xFF  # the ptch chunk's size
    with pytest.raises(AmxdError):
        read_amxd(bytes(data))


@pytest.mark.parametrize(("platform", "home_var", "library"), [
    ("macos", "HOME", ("Music", "Ableton", "User Library")),
    ("windows", "USERPROFILE", ("Documents", "Ableton", "User Library")),
])
def test_ableton_install_copies_the_device_into_the_user_library(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        platform: str, home_var: str, library: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv(home_var, str(home))
    assert main(["ableton", "install", "--platform", platform]) != 0  # Live never ran: no User Library yet
    assert "no User Library" in capsys.readouterr().err
    user_library = home.joinpath(*library)
    user_library.mkdir(parents=True)
    assert main(["ableton", "install", "--platform", platform]) == 0
    target = user_library / "Presets" / "Audio Effects" / "Max Audio Effect" / "sam-bridge.amxd"
    assert target.read_bytes() == SHIPPED.read_bytes()
    assert "Installed" in capsys.readouterr().out
    assert main(["ableton", "install", "--platform", platform]) == 0
    assert "Already up to date" in capsys.readouterr().out
    target.write_bytes(b"someone else's device")  # never overwritten
    assert main(["ableton", "install", "--platform", platform]) != 0
    assert target.read_bytes() == b"someone else's device"
    assert sorted(p.name for p in target.parent.iterdir()) == ["sam-bridge.amxd"]


def test_on_linux_it_says_live_is_not_there_unless_given_a_library(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ableton", "install", "--platform", "linux"]) != 0
    assert "does not run on Linux" in capsys.readouterr().err
    assert main(["ableton", "install", "--user-library", str(tmp_path)]) == 0
    assert (tmp_path / "Presets" / "Audio Effects" / "Max Audio Effect" / "sam-bridge.amxd").is_file()


@pytest.mark.timeout(120)
def test_a_pip_install_ships_the_device(tmp_path: Path) -> None:
    """setuptools' build_py lays out what a wheel (what pip installs) holds: the device is package data.
    A few seconds (setuptools reads pyproject.toml); run in a copy, so the worktree gets no build/ folder."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name in ("bridge", "presets", "scripts"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, copy / name)
    done = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                           "--build-lib", str(tmp_path / "lib")], cwd=copy, capture_output=True, text=True,
                          timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "lib" / "bridge" / "ableton_device" / "sam-bridge.amxd").read_bytes() == SHIPPED.read_bytes()
