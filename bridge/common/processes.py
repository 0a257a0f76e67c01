"""Whether a process of ours is still alive: what a killed run left behind (a hidden temp stem, a work
folder) carries its owner's tag, `@<host>~<pid>`, so a later run can tell it from work in progress."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

_OWNER = re.compile(r"@(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)")


def process_alive(pid: int) -> bool:
    """True unless `pid` is surely gone (on Windows there is no safe probe: always True)."""
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would send Ctrl-C there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


@functools.cache
def pid_space() -> str | None:
    """Where this process's pid means something: this boot of this machine (a random id the kernel makes
    at boot; cloned machines share host names, even /etc/machine-id, never this) and, on Linux, its pid
    namespace (containers share the kernel's boot id). None where unknown: then no pid is judged."""
    try:
        if sys.platform.startswith("linux"):
            boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
            return f"{boot}/{os.readlink('/proc/self/ns/pid')}" if boot else None
        if sys.platform == "darwin":
            found = subprocess.run(["/usr/sbin/sysctl", "-n", "kern.bootsessionuuid"], capture_output=True,
                                   text=True, timeout=5, check=True)
            return found.stdout.strip() or None
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return None


def owner_tag() -> str:
    """This process, as names of the files and folders it owns carry it."""
    return f"@{_host()}~{os.getpid()}"


def left_by_dead_process(name: str) -> bool:
    """True when `name` carries the owner tag of a process on this machine that has ended (never for
    another machine's, whose processes cannot be seen from here: a shared folder stays theirs)."""
    match = _OWNER.search(name)
    return match is not None and match["host"] == _host() and not process_alive(int(match["pid"]))


def remove_left_behind(folder: Path, prefix: str) -> None:
    """Delete what dead processes of this machine left in `folder` under names starting with `prefix`."""
    with contextlib.suppress(OSError):
        for entry in folder.glob(f"{prefix}*"):
            if left_by_dead_process(entry.name):
                with contextlib.suppress(OSError):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"

def ensure_std_streams() -> None:
    """pythonw (the Windows service) starts with sys.stdout and sys.stderr set to None, so a flush, a log
    handler or a library's write would raise and end the daemon. They go to os.devnull instead; the log
    file keeps everything."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - for the process


class SignalStop:
    """A stop that a signal handler may ask for: a plain flag (no lock), waited on by polling. A
    threading.Event would deadlock when a second signal arrives while the first handler is inside
    Event.set: the handler would wait for the lock it already holds (a service manager and a supervisor
    may both send SIGTERM; a user presses Ctrl-C twice)."""

    def __init__(self, poll: float = 0.1) -> None:
        self._asked = False
        self._poll = poll

    def set(self, *_signal: object) -> None:  # usable as the handler itself: signal.signal(SIGTERM, stop.set)
        self._asked = True

    def is_set(self) -> bool:
        return self._asked

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._asked:
            left = self._poll if deadline is None else min(self._poll, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True
