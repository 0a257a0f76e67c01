"""Is a folder on a network or FUSE drive? There, changes made by other computers raise no native file
events, so the hot-folder watcher suggests (or uses) the polling observer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "afs", "ncpfs", "9p", "ceph", "glusterfs",
     "lustre", "davfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.davfs2",
     "afpfs", "webdav", "macfuse", "osxfuse"}
)

def network_filesystem_type(path: Path, mounts_text: str | None = None) -> str | None:
    """The filesystem type when `path` is on a network/FUSE drive where native events may not arrive
    (changes made by other computers raise none), else None. `mounts_text` is /proc/mounts-style text;
    by default Linux reads /proc/mounts, macOS asks `mount`, Windows asks the drive type."""
    if sys.platform == "win32" and mounts_text is None:
        return _windows_remote_drive(path)
    if mounts_text is not None:
        mounts = _parse_proc_mounts(mounts_text)
    elif sys.platform == "darwin":
        mounts = _bsd_mounts()
    else:
        try:
            mounts = _parse_proc_mounts(Path("/proc/mounts").read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return None
    resolved = str(path.expanduser().resolve())
    best_mount, best_type = "", ""
    for mount_point, fs_type in mounts:
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best_mount):
            best_mount, best_type = mount_point, fs_type
    return best_type if best_type in NETWORK_FILESYSTEMS else None


def _parse_proc_mounts(text: str) -> list[tuple[str, str]]:
    rows = [line.split() for line in text.splitlines()]
    return [(row[1].replace("\\040", " "), row[2]) for row in rows if len(row) >= 3]


def _bsd_mounts() -> list[tuple[str, str]]:
    """macOS: `mount` prints "//me@nas/share on /Volumes/share (smbfs, nodev, …)"."""
    try:
        output = subprocess.run(["/sbin/mount"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = (re.match(r"^.* on (.+) \(([^,)]+)", line) for line in output.splitlines())
    return [(match.group(1), match.group(2)) for match in found if match]


def _windows_remote_drive(path: Path) -> str | None:
    if str(path).startswith("\\\\"):
        return "smb"  # a UNC path: \\server\share
    if sys.platform != "win32":
        return None
    import ctypes

    drive_remote = 4
    root = path.expanduser().resolve().anchor
    return "network drive" if ctypes.windll.kernel32.GetDriveTypeW(root) == drive_remote else None
