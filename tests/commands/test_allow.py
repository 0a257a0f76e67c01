"""`sam-bridge allow PATH`: a folder outside home becomes an allowed OSC source and output root; the config
keeps its comments, stays valid, and the policy the OSC server applies accepts files there afterwards."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.common.config import DEFAULT_CONFIG_TEXT, load_config
from bridge.common.path_policy import PathNotAllowed, PathPolicy


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "config.yaml"
    monkeypatch.setenv("SAM_BRIDGE_CONFIG", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return path


def test_allow_adds_the_folder_for_reading_and_writing_and_keeps_the_comments(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.parent.mkdir()
    config.write_text(DEFAULT_CONFIG_TEXT, encoding="utf-8")
    project = tmp_path / "Volumes" / "Studio SSD" / "Song Project"
    project.mkdir(parents=True)
    source = project / "Samples" / "take.wav"
    source.parent.mkdir()
    source.write_bytes(b"RIFF")
    policy_before = PathPolicy.from_roots([tmp_path / "home"], [tmp_path / "home"])
    with pytest.raises(PathNotAllowed):
        policy_before.source_file(source)
    assert main(["allow", str(project)]) == 0
    assert f"Allowed {project} (reading sources and writing stems)" in capsys.readouterr().out
    text = config.read_text(encoding="utf-8")
    assert "# OSC may read under your home and hot folders, plus these" in text  # comments kept
    loaded = load_config(config)
    assert loaded.allowed_source_roots == [project] and loaded.allowed_output_roots == [project]
    policy = PathPolicy.from_roots([tmp_path / "home", *loaded.allowed_source_roots],
                                   [tmp_path / "home", *loaded.allowed_output_roots])
    assert policy.source_file(source) == source
    assert main(["allow", str(project)]) == 0
    assert "already allowed" in capsys.readouterr().out
    assert config.read_text(encoding="utf-8") == text


def test_allow_without_a_config_file_writes_one_and_appends_to_a_block_list(config: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two words"
    first.mkdir()
    second.mkdir()
    assert main(["allow", "--read-only", str(first)]) == 0
    assert main(["allow", str(second)]) == 0
    loaded = load_config(config)
    assert loaded.allowed_source_roots == [first, second] and loaded.allowed_output_roots == [second]


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: t / "missing", "does not exist"),
    (lambda t: (t / "f.wav").write_bytes(b"") or t / "f.wav", "is a file, not a folder"),
    (lambda t: Path("/"), "a whole drive's root"),
])
def test_allow_refuses_what_cannot_be_a_root(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              make, message: str) -> None:  # type: ignore[no-untyped-def]
    assert main(["allow", str(make(tmp_path))]) != 0
    assert message in capsys.readouterr().err
    assert not config.exists()


def test_allow_leaves_a_broken_config_alone(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.parent.mkdir()
    config.write_text("concurrency: many\n", encoding="utf-8")
    assert main(["allow", str(tmp_path)]) != 0
    assert config.read_text(encoding="utf-8") == "concurrency: many\n"
    assert [p.name for p in config.parent.iterdir()] == ["config.yaml"]


SECRET_CONFIG = DEFAULT_CONFIG_TEXT + "database: postgresql://sam:s3cret@nas.local/sam_bridge\n"


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_allow_keeps_the_config_files_mode(config: Path, tmp_path: Path, mode: int) -> None:
    """The config may hold a database password or the OSC token: it was rewritten world-readable (0644)."""
    config.parent.mkdir()
    config.write_text(SECRET_CONFIG, encoding="utf-8")
    config.chmod(mode)
    assert main(["allow", str(tmp_path)]) == 0
    assert stat.S_IMODE(os.stat(config).st_mode) == mode
    assert load_config(config).allowed_source_roots == [tmp_path]
    assert [p.name for p in config.parent.iterdir()] == ["config.yaml"]  # no temp left


def test_allow_writes_a_new_config_private(config: Path, tmp_path: Path) -> None:
    assert main(["allow", str(tmp_path)]) == 0
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600


def test_allow_updates_the_file_a_symlinked_config_points_to(config: Path, tmp_path: Path) -> None:
    """A config kept in a dotfiles folder and linked into place: the link stays, its target is updated."""
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "sam-bridge.yaml"
    real.write_text(SECRET_CONFIG, encoding="utf-8")
    real.chmod(0o600)
    config.parent.mkdir()
    config.symlink_to(real)
    project = tmp_path / "project"
    project.mkdir()
    assert main(["allow", str(project)]) == 0
    assert config.is_symlink() and config.resolve() == real
    assert load_config(real).allowed_source_roots == [project]
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert sorted(p.name for p in dotfiles.iterdir()) == ["sam-bridge.yaml"]
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.yaml"]
