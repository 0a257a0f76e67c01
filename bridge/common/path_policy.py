"""The one door policy: which files a way in may read (to upload them) and which folders it may write
stems into, for every way in.

Trust follows who can write there. The CLI, and a requests folder only its owner can write (the default,
in the user's state folder, created 0700), speak for the user: their paths are used as given, so REAPER
projects on any drive keep working. OSC, every hot folder and sidecar, and a requests folder others can
write (group- or world-writable, another owner: a shared NAS folder) get this policy: the request carries
it (`SeparationRequest.confined_to`, journalled with the job), and the engine checks the source and the
final output folder (the project's `Stems/` included) at the moment it uses them, not only when the
request arrives (`bridge.common.stems.confined_folder`: checked, created, checked again). Every path is
resolved first (`~`, symlinks, `..`) and only then compared with the allowed roots, which are resolved the
same way, so neither a symlink inside an allowed folder nor `Music/../../etc` leads out of it. A `..` or
absolute `options.folder` is refused for every way in (`bridge.common.options.folder_problem`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

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


class PathPolicy(BaseModel):
    """Allowed source roots (files that may be read) and output roots (folders stems may be written to).
    A pydantic model, so a request carries it into the journal and the engine checks it at use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_roots: tuple[Path, ...]
    output_roots: tuple[Path, ...]

    @classmethod
    def from_roots(cls, source_roots: Iterable[str | os.PathLike[str]] = (),
                   output_roots: Iterable[str | os.PathLike[str]] = ()) -> PathPolicy:
        """Resolve the roots; an empty list means the user's home folder."""
        sources = tuple(resolve_path(r, "allowed folder") for r in source_roots) or (_home(),)
        outputs = tuple(resolve_path(r, "allowed folder") for r in output_roots) or (_home(),)
        return cls(source_roots=sources, output_roots=outputs)

    def source_file(self, raw: str | os.PathLike[str]) -> Path:
        """The resolved source file; raises PathNotAllowed or SourceError."""
        path = resolve_path(raw, "source path")
        if not is_within(path, self.source_roots):
            raise PathNotAllowed(
                f"The file {_as_given(raw, path)} is outside the folders sam-bridge may read "
                f"({_listing(self.source_roots)}).",
                hint="Move or copy it into one of those folders, or allow its folder:  "
                f"sam-bridge allow \"{_existing_folder(path.parent)}\"",
            )
        if path.is_dir():
            raise SourceError(f"{os.fspath(raw)} is a folder, not an audio file.",
                              hint="Choose an audio file inside it.")
        if not path.is_file():
            raise SourceError(f"There is no audio file at {os.fspath(raw)}.",
                              hint="Check the path: the file may have been moved, renamed or not saved yet.")
        return path

    def output_folder(self, raw: str | os.PathLike[str], what: str = "project folder") -> Path:
        """The resolved folder stems would be written in (it may not exist yet); raises PathNotAllowed."""
        path = resolve_path(raw, what)
        if not is_within(path, self.output_roots):
            raise PathNotAllowed(
                f"The {what} {_as_given(raw, path)} is outside the folders sam-bridge may write stems to "
                f"({_listing(self.output_roots)}).",
                hint="Use a project folder inside one of those, or allow this one:  "
                f"sam-bridge allow \"{_existing_folder(path)}\"",
            )
        return path


def folder_trust_problem(folder: Path) -> str | None:
    """Why others could write requests into `folder` (None: only its owner, the user, can).

    Decided by who can write there: a folder of another owner, or one its group or everyone may write,
    may hold requests written by someone else."""
    if os.name != "posix":
        return None  # Windows ACLs: the per-user state folder is private by default
    info = folder.stat()
    if info.st_uid != os.geteuid():
        return f"it belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others may write to it (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def open_requests_folder(folder: Path) -> str | None:
    """Create the requests folder 0700 if it is missing; the reason it is not private, if it is not."""
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    return folder_trust_problem(folder)


def _as_given(raw: str | os.PathLike[str], real: Path) -> str:
    """The path as the user gave it, and where it really leads when a symlink on the way makes that
    differ: a link inside the allowed folders is itself inside, so its own path alone would contradict
    the message."""
    given = os.fspath(raw)
    if Path(os.path.normpath(Path(given).expanduser())) == real:
        return given
    return f"{given} (it links to {real})"


def _existing_folder(folder: Path) -> Path:
    """`folder`, or the nearest folder above it that exists: what `sam-bridge allow` accepts."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def _home() -> Path:
    return Path(os.path.realpath(Path.home()))


def _listing(roots: tuple[Path, ...]) -> str:
    shown = ", ".join(str(r) for r in roots[:4])
    return shown + (f" and {len(roots) - 4} more" if len(roots) > 4 else "")
