"""Small side files are read whole or refused, and never wait: a FIFO, a device, a folder, a symlink where
none may be followed and a file over the limit are refused before (or instead of) reading them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bridge.common.small_files import SideFileError, TooLarge, read_small_file, read_small_text


def test_a_small_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'{"x": 1}' * 100)
    assert read_small_file(path, 800) == b'{"x": 1}' * 100
    assert read_small_text(path, 800).startswith('{"x": 1}')
    with pytest.raises(TooLarge, match="more than the 799 bytes"):
        read_small_file(path, 799)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.json"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_small_file(fifo, 1024))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # an ordinary open() waits for a writer: free it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], SideFileError) and "not a regular file" in outcome[0].reason


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_and_a_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "link.json").symlink_to("/dev/zero")
    for path in (tmp_path / "link.json", tmp_path):
        with pytest.raises(SideFileError, match="not a regular file"):
            read_small_file(path, 1024)


def test_a_symlink_is_followed_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "target.yaml"
    target.write_text("prompt: piano\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert read_small_text(link, 1024) == "prompt: piano\n"
    with pytest.raises(SideFileError, match="symbolic link"):
        read_small_file(link, 1024, follow_symlinks=False)
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "missing.yaml", 1024)
