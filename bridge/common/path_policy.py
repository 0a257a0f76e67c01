"""Which files a way in may read (to upload them) and which folders it may write stems into.

A request arriving over the network must not make sam-bridge upload an arbitrary file to a cloud
service, nor write into a system folder. Every path is resolved first (`~`, symlinks, `..`) and only
then compared with the allowed roots, which are resolved the same way, so neither a symlink inside an
allowed folder nor `Music/../../etc` leads out of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bridge.common.errors import InputError, SourceError


class PathNotAllowed(InputError):
    """A path outside the allowed folders."""

    kind = "path_not_allowed"


def resolve_path(raw: str | os.PathLike[str], what: str = "path") -> Path:
    """The real, absolute location `raw` names (symlinks and `..` followed; it need not exist).

    Relative paths are refused: relative to what the daemon happens to run in is never what a DAW means."""
    text = os.fspath(raw)
    if "\x00" in text or not text.strip():
        raise InputError(f"The {what} is empty or contains invalid characters.",
                         hint="Send the full path of the file or folder.")
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise InputError(f"The {what} {text!r} is not a full path.",
                         hint="Send the full path, starting with / (or a drive letter like C:\\ on Windows).")
    return Path(os.path.realpath(path))


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    """True if the resolved `path` is one of `roots` or inside one of them."""
    return any(path == root or path.is_relative_to(root) for root in roots)


@dataclass(frozen=True)
class PathPolicy:
    """Allowed source roots (files that may be read) and output roots (folders stems may be written to)."""

    source_roots: tuple[Path, ...]
    output_roots: tuple[Path, ...]

    @classmethod
    def from_roots(cls, source_roots: Iterable[str | os.PathLike[str]] = (),
                   output_roots: Iterable[str | os.PathLike[str]] = ()) -> PathPolicy:
        """Resolve the roots; an empty list means the user's home folder."""
        sources = tuple(resolve_path(r, "allowed folder") for r in source_roots) or (_home(),)
        outputs = tuple(resolve_path(r, "allowed folder") for r in output_roots) or (_home(),)
        return cls(sources, outputs)

    def source_file(self, raw: str | os.PathLike[str]) -> Path:
        """The resolved source file; raises PathNotAllowed or SourceError."""
        path = resolve_path(raw, "source path")
        if not is_within(path, self.source_roots):
            raise PathNotAllowed(
                f"The file {os.fspath(raw)} is outside the folders sam-bridge may read "
                f"({_listing(self.source_roots)}).",
                hint="Move or copy it into one of those folders, or add its folder to the allowed "
                "source folders in the sam-bridge config.",
            )
        if not path.is_file():
            raise SourceError(f"There is no audio file at {os.fspath(raw)}.",
                              hint="Check the path: the file may have been moved, renamed or not saved yet.")
        return path

    def output_folder(self, raw: str | os.PathLike[str], what: str = "project folder") -> Path:
        """The resolved folder stems would be written in (it may not exist yet); raises PathNotAllowed."""
        path = resolve_path(raw, what)
        if not is_within(path, self.output_roots):
            raise PathNotAllowed(
                f"The {what} {os.fspath(raw)} is outside the folders sam-bridge may write stems to "
                f"({_listing(self.output_roots)}).",
                hint="Use a project folder inside one of those, or add it to the allowed output folders "
                "in the sam-bridge config.",
            )
        return path


def _home() -> Path:
    return Path(os.path.realpath(Path.home()))


def _listing(roots: tuple[Path, ...]) -> str:
    shown = ", ".join(str(r) for r in roots[:4])
    return shown + (f" and {len(roots) - 4} more" if len(roots) > 4 else "")
