"""macOS privacy protection (TCC) for a background service: what it blocks and exactly what to grant.

A LaunchAgent's program may not read the Desktop, Documents and Downloads folders, iCloud Drive, removable
or network volumes until the user allows it (Apple Platform Security, "Protecting access to user data";
System Settings > Privacy & Security > Files and Folders / Full Disk Access). macOS then answers open() and
listdir() with EPERM, "Operation not permitted" — not EACCES ("Permission denied", the file's own
permissions). A terminal has its own grant, so a folder that works with `sam-bridge run` in Terminal can
fail under the service.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

# Files and Folders entries, by where a path lies.
HOME_AREAS = {"Desktop": "Desktop Folder", "Documents": "Documents Folder", "Downloads": "Downloads Folder"}
ICLOUD = ("Library", "Mobile Documents")
NOT_PERMITTED = "Operation not permitted"


def protected_area(path: PurePosixPath, home: PurePosixPath) -> str | None:
    """The Files and Folders permission that covers `path`, or None when TCC does not guard it."""
    try:
        parts = path.relative_to(home).parts
    except ValueError:
        parts = ()
    if parts and parts[0] in HOME_AREAS:
        return HOME_AREAS[parts[0]]
    if parts[:2] == ICLOUD:
        return "iCloud Drive"
    if path.parts[:2] == ("/", "Volumes") and len(path.parts) > 2:
        return "Removable Volumes (Network Volumes for a network drive)"
    return None


def service_program(executable: str | None = None) -> str:
    """The program macOS asks about: the Python that runs the daemon, its symlinks resolved."""
    return os.path.realpath(executable or sys.executable)


def what_to_grant(path: PurePosixPath, home: PurePosixPath, program: str) -> str:
    area = protected_area(path, home) or "Full Disk Access"
    return (f"macOS does not let the sam-bridge service read {path} ({NOT_PERMITTED}): it is in a place macOS "
            f"protects ({area}). Open System Settings > Privacy & Security > Full Disk Access, click +, press "
            f"Cmd-Shift-G, paste  {program}  and switch it on (or, once it is listed under Files and Folders, "
            f"allow just \"{area}\" there). Then restart the service:  sam-bridge service install")


def blocked(exc: BaseException) -> bool:
    """Whether an error is TCC's refusal (EPERM), not the file's own permissions (EACCES)."""
    return isinstance(exc, OSError) and exc.errno == errno.EPERM


def check_folders(folders: Iterable[Path], home: Path, program: str,
                  listdir: Callable[[Path], object] = os.listdir) -> list[str]:
    """Tries to list each folder as the service would; says what to grant for each one macOS refuses."""
    problems = []
    for folder in folders:
        try:
            listdir(folder)
        except OSError as exc:
            if blocked(exc):
                problems.append(what_to_grant(PurePosixPath(folder), PurePosixPath(home), program))
    return problems


def protected_folders(folders: Iterable[Path], home: Path) -> list[tuple[Path, str]]:
    """The folders the service will use that macOS guards (said before install: the grant is the user's)."""
    return [(f, area) for f in folders if (area := protected_area(PurePosixPath(f), PurePosixPath(home)))]


_PATH_NEAR_EPERM = re.compile(r"(/[^\s'\"]+)['\"]?\)?[^\n]*?" + NOT_PERMITTED + r"|" + NOT_PERMITTED +
                              r"[^\n]*?['\"](/[^'\"]+)['\"]")


def explain_log(lines: Iterable[str], home: Path, program: str) -> list[str]:
    """What to grant, for each protected path the service's log says it was not permitted to read."""
    seen: dict[str, str] = {}
    for line in lines:
        if NOT_PERMITTED not in line:
            continue
        match = _PATH_NEAR_EPERM.search(line)
        raw = next((g for g in match.groups() if g), None) if match else None
        if raw and raw not in seen:
            seen[raw] = what_to_grant(PurePosixPath(raw), PurePosixPath(home), program)
        elif not raw:  # e.g. a job's error naming only the file: the grant is the same
            seen.setdefault("", f"macOS refused the sam-bridge service a file ({NOT_PERMITTED}: see the log). "
                                f"Open System Settings > Privacy & Security > Full Disk Access, click +, press "
                                f"Cmd-Shift-G, paste  {program}  and switch it on; then restart the service:  "
                                "sam-bridge service install")
    return list(seen.values())


def job_error_hint(text: str, home: Path, program: str, platform: str = sys.platform) -> str | None:
    """What to grant, for a job that failed on macOS because TCC refused the service a file (EPERM): said
    in the job's own error, where the user looks first. None elsewhere, and for other errors."""
    if platform != "darwin" or NOT_PERMITTED not in text:
        return None
    return "\n".join(explain_log([text], home, program)) or None
