"""Keeping the requests folder short: answered requests move to `done/<date>/` a while after they ended.

A DAW script reads the final status within seconds, and REAPER's keeps what it read, so a day later
the pair (`<name>.json` + `<name>.status.json`, and a `.cancel` marker if any) only slows every rescan
down. They are moved, never deleted, and never onto an existing file: a name already taken in the
day's folder gets a number (`<name>-2.json` with `<name>-2.status.json`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

DONE_DIR = "done"
ARCHIVE_AFTER = 24 * 3600.0  # seconds after a request's final status before it moves to done/
_STATUS_SUFFIX = ".status.json"


def archive_answered(request_file: Path, status_file: Path, ended_at: float) -> Path | None:
    """Move an answered request, its status and its cancel marker into `done/<date it ended>/`.
    Returns the moved request file (None when it was gone already)."""
    stem = request_file.name[: -len(".json")]
    cancel_marker = request_file.with_name(stem + ".cancel")
    # the request first: if we stop half-way, no request is left without its answer
    moved = _move_numbered(request_file.parent, stem, ended_at,
                           [(request_file, ".json"), (status_file, _STATUS_SUFFIX), (cancel_marker, ".cancel")])
    if moved is not None:
        log.info("archived answered request %s to %s", request_file.name, moved)
    return moved


def archive_orphan_status(status_file: Path, now: float, archive_after: float = ARCHIVE_AFTER) -> bool:
    """A status file whose request is gone (a stop between two moves): moved once it is old enough."""
    try:
        ended_at = status_file.stat().st_mtime
    except FileNotFoundError:
        return False
    if now - ended_at < archive_after:
        return False
    stem = status_file.name[: -len(_STATUS_SUFFIX)]
    try:
        return _move_numbered(status_file.parent, stem, ended_at, [(status_file, _STATUS_SUFFIX)]) is not None
    except FileExistsError:  # 10,000 of that name already: leave it (this runs in the folder's rescan)
        return False


def _move_numbered(requests: Path, stem: str, ended_at: float, files: list[tuple[Path, str]]) -> Path | None:
    """Move `files` (each with its suffix) into `done/<date>/` as `<stem><suffix>`, or `<stem>-2<suffix>`…
    when the first file's name is taken there. The first file's new path, or None when it was gone."""
    folder = requests / DONE_DIR / time.strftime("%Y-%m-%d", time.localtime(ended_at))
    folder.mkdir(parents=True, exist_ok=True)
    (first, first_suffix), extras = files[0], files[1:]
    for number in range(1, 10_000):
        name = stem if number == 1 else f"{stem}-{number}"
        moved = folder / f"{name}{first_suffix}"
        try:
            _move_new(first, moved)
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
        for extra, suffix in extras:
            try:
                _move_new(extra, folder / f"{name}{suffix}")
            except FileNotFoundError:
                pass
            except FileExistsError:  # a stray file of that name: keep ours where it is, say so
                log.warning("could not move %s into %s: a file of that name is there", extra.name, folder)
        return moved
    raise FileExistsError(f"no free name for {first.name} in {folder}")


def _move_new(source: Path, destination: Path) -> None:
    """Rename `source` to `destination`, failing with FileExistsError rather than replacing a file."""
    try:
        os.link(source, destination)  # atomic and refuses an existing name (rename would replace it)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError:  # no hard links here (FAT, some network shares): check, then rename
        if destination.exists():
            raise FileExistsError(destination) from None
        os.rename(source, destination)
        return
    os.unlink(source)
