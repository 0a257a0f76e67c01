"""Reading the small files others may put where a way in looks (sidecars, request and status files,
manifests, error files): whole, or not at all, and never waiting.

A FIFO under such a name would block an ordinary open() until someone writes to it, stopping the thread
that reads every file of that folder; a device or a huge file would fill memory. So the file is opened
without blocking (O_NONBLOCK), optionally without following a final symlink (O_NOFOLLOW), must be a
regular file (fstat on the open descriptor, so nothing swapped in between counts) and no larger than the
limit given. Where the platform lacks a flag (Windows), the same checks are made with stat first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB


class SideFileError(OSError):
    """The file is there but is not one to read: not a regular file, a symlink where none is allowed,
    or larger than the limit. `reason` says which in words a user understands."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


class TooLarge(SideFileError):
    def __init__(self, path: Path, size: int, limit: int) -> None:
        super().__init__(path, f"it is {_size(size)}, more than the {_size(limit)} such a file may have")
        self.size, self.limit = size, limit


def read_small_file(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of regular file `path`, at most `limit` of them.

    Raises FileNotFoundError (and other OSErrors) as open() does, SideFileError for a FIFO, device,
    folder or (with follow_symlinks=False) a symlink, TooLarge for a file over `limit` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    info = os.stat(path, follow_symlinks=follow_symlinks)  # a FIFO is refused before any open
    if stat.S_ISLNK(info.st_mode):
        raise SideFileError(path, "it is a symbolic link")
    _check(path, info, limit)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and os.path.islink(path):  # ELOOP: swapped for a link since the stat
            raise SideFileError(path, "it is a symbolic link") from exc
        raise
    try:
        _check(path, os.fstat(fd), limit)  # what was opened, whatever the name points to now
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            try:
                chunk = os.read(fd, min(left, 64 * KIB))
            except BlockingIOError:  # not a regular file after all (cannot happen after fstat)
                raise SideFileError(path, "it is not a regular file") from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # grew since the fstat
        raise TooLarge(path, len(data), limit)
    return data


def read_small_text(path: Path, limit: int, *, follow_symlinks: bool = True) -> str:
    """`read_small_file` decoded as UTF-8 (UnicodeDecodeError, a ValueError, when it is not)."""
    return read_small_file(path, limit, follow_symlinks=follow_symlinks).decode("utf-8")


def _check(path: Path, info: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SideFileError(path, "it is not a regular file (a folder, pipe or device)")
    if info.st_size > limit:
        raise TooLarge(path, info.st_size, limit)


def _size(count: int) -> str:
    if count >= MIB:
        return f"{count // MIB} MiB" if count % MIB == 0 else f"{count / MIB:.1f} MiB"
    if count >= KIB:
        return f"{count / KIB:.0f} KiB"
    return f"{count} bytes"
