"""Allowed source and output roots, checked after resolving symlinks and `..` (used by the OSC server and
reusable by any other way in)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bridge.common.errors import InputError, OutputError, SourceError
from bridge.common.path_policy import PathNotAllowed, PathPolicy, is_within, resolve_path
from bridge.common.stems import confined_folder


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    music = tmp_path / "music"
    outside = tmp_path / "outside"
    (music / "Song").mkdir(parents=True)
    outside.mkdir()
    (music / "Song" / "take.wav").write_bytes(b"RIFF")
    (outside / "secret.wav").write_bytes(b"RIFF")
    (music / "link-out.wav").symlink_to(outside / "secret.wav")
    (music / "dir-out").symlink_to(outside, target_is_directory=True)
    (music / "link-in.wav").symlink_to(music / "Song" / "take.wav")
    return {"music": music, "outside": outside}


def test_allowed_sources_resolve_to_their_real_file(tree: dict[str, Path]) -> None:
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    real = (tree["music"] / "Song" / "take.wav").resolve()
    assert policy.source_file(tree["music"] / "Song" / "take.wav") == real
    assert policy.source_file(str(tree["music"] / "link-in.wav")) == real
    assert policy.source_file(f"{tree['music']}/Song/../Song/take.wav") == real


@pytest.mark.parametrize("relative", ["link-out.wav", "dir-out/secret.wav", "../outside/secret.wav",
                                      "Song/../../outside/secret.wav"])
def test_no_way_out_of_the_source_roots(tree: dict[str, Path], relative: str) -> None:
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    with pytest.raises(PathNotAllowed, match="outside the folders sam-bridge may read"):
        policy.source_file(f"{tree['music']}/{relative}")


def test_a_root_that_is_itself_a_symlink_still_works(tree: dict[str, Path], tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tree["music"], target_is_directory=True)
    policy = PathPolicy.from_roots([alias], [alias])
    assert policy.source_file(tree["music"] / "Song" / "take.wav").name == "take.wav"
    assert policy.output_folder(tree["music"] / "New") == (tree["music"] / "New").resolve()


def test_a_sibling_with_a_common_prefix_is_not_inside(tmp_path: Path) -> None:
    (tmp_path / "music").mkdir()
    (tmp_path / "music-private").mkdir()
    (tmp_path / "music-private" / "x.wav").write_bytes(b"RIFF")
    policy = PathPolicy.from_roots([tmp_path / "music"], [tmp_path / "music"])
    with pytest.raises(PathNotAllowed):
        policy.source_file(tmp_path / "music-private" / "x.wav")


def test_output_folders_need_not_exist_but_must_be_inside(tree: dict[str, Path]) -> None:
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    assert policy.output_folder(tree["music"] / "New Song" / "Stems") == \
        (tree["music"] / "New Song" / "Stems").resolve()
    for bad in ("/etc", "/usr/lib", str(tree["music"] / "dir-out" / "Stems"),
                f"{tree['music']}/nope/../../outside"):
        with pytest.raises(PathNotAllowed, match="may write stems to"):
            policy.output_folder(bad)


def test_missing_relative_and_empty_paths(tree: dict[str, Path]) -> None:
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    with pytest.raises(SourceError, match="There is no audio file"):
        policy.source_file(tree["music"] / "gone.wav")
    with pytest.raises(SourceError):
        policy.source_file(tree["music"] / "Song")  # a folder is not a source
    with pytest.raises(InputError, match="is not a full path"):
        policy.source_file("Song/take.wav")
    with pytest.raises(InputError, match="empty or contains invalid characters"):
        resolve_path("/a\x00b")


def test_no_roots_means_the_home_folder(monkeypatch: pytest.MonkeyPatch, tree: dict[str, Path]) -> None:
    monkeypatch.setenv("HOME", str(tree["music"]))
    policy = PathPolicy.from_roots()
    assert policy.source_roots == policy.output_roots == (tree["music"].resolve(),)
    assert policy.source_file("~/Song/take.wav") == (tree["music"] / "Song" / "take.wav").resolve()
    assert is_within(tree["music"].resolve(), policy.source_roots)


def test_a_symlink_leading_out_names_where_it_links_and_how_to_allow_that(tree: dict[str, Path]) -> None:
    """The symlink itself is inside: quoting only its path would contradict the message."""
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    outside = tree["outside"].resolve()
    with pytest.raises(PathNotAllowed) as caught:
        policy.source_file(tree["music"] / "link-out.wav")
    assert f"(it links to {outside / 'secret.wav'})" in caught.value.message
    assert f'sam-bridge allow "{outside}"' in caught.value.hint
    with pytest.raises(PathNotAllowed) as caught:
        policy.output_folder(tree["music"] / "dir-out", "project folder")
    assert f"The project folder {tree['music'] / 'dir-out'} (it links to {outside}) is outside" in caught.value.message
    assert f'sam-bridge allow "{outside}"' in caught.value.hint
    with pytest.raises(PathNotAllowed) as caught:  # no link: nothing to explain
        policy.source_file(outside / "secret.wav")
    assert "links to" not in caught.value.message and f'sam-bridge allow "{outside}"' in caught.value.hint


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES])
def test_an_output_folder_that_cannot_be_made_is_said_in_words(tree: dict[str, Path], code: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A confined request (OSC, hot folder) whose project folder may not be written: the same words a request
    file or the CLI gets, not a raw PermissionError (an "Internal error" to the user)."""
    def refuse(path: object, mode: int = 0o777) -> None:
        raise PermissionError(code, os.strerror(code), os.fspath(path))  # type: ignore[arg-type]

    monkeypatch.setattr("bridge.common.stems.os.mkdir", refuse)
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    with pytest.raises(OutputError, match="Cannot write stems to") as caught:
        confined_folder(tree["music"] / "Song" / "Stems", policy, create=True)
    assert os.strerror(code) in caught.value.message
    assert "Choose another output folder, or fix the folder's permissions" in caught.value.hint


def test_an_output_folder_that_is_a_file_is_input_for_a_confined_request(tree: dict[str, Path]) -> None:
    (tree["music"] / "Song" / "Stems").write_text("a file")
    policy = PathPolicy.from_roots([tree["music"]], [tree["music"]])
    for folder in (tree["music"] / "Song" / "Stems", tree["music"] / "Song" / "take.wav" / "Stems"):
        with pytest.raises(InputError, match="is a file \\(or lies inside one\\), not a folder"):
            confined_folder(folder, policy, create=True)


def test_a_made_folder_is_checked_again_before_anything_is_written_in_it(tmp_path: Path) -> None:
    """The probe file went in before the second check: a `Stems` symlink swapped in between led it (made and
    deleted, but written) outside the allowed folders."""
    from bridge.common.path_policy import PathNotAllowed
    from bridge.common.stems import ensure_writable

    made = tmp_path / "Stems"

    def swapped(path: Path) -> Path:
        raise PathNotAllowed(f"{path} leads outside")

    with pytest.raises(PathNotAllowed):
        ensure_writable(made, swapped)
    assert made.is_dir() and list(made.iterdir()) == []
