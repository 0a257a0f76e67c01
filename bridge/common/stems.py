"""Where stems go and what they are called; putting files in place atomically, never overwriting.

Names: `<source name> - <label>.target.wav` and `.residual.wav` (stem sets: `<source name> - <stem>.wav`),
manifest `<source name> - <label>.sam.json`. A collision numbers the whole group: `… (2).target.wav`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import unicodedata
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.common.errors import OutputError

log = logging.getLogger(__name__)

EXTENSIONS = {"WAV": ".wav", "WAVEX": ".wav", "RF64": ".wav", "W64": ".w64", "AIFF": ".aif", "FLAC": ".flac",
              "CAF": ".caf"}
TEMP_PREFIX = ".sam-partial-"  # dot-prefixed and no audio extension: no DAW or watcher takes it
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def safe_name(text: str, max_len: int = 60) -> str:
    """A file-name part safe on Windows, macOS and Linux; unicode letters are kept."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    if len(text) > max_len:
        text = text[:max_len].rstrip(" .")
    if not text:
        text = "stem"
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = f"_{text}"
    return text


def output_folder(source: Path, project_dir: Path | None, output_dir: Path | None, folder: str) -> Path:
    if output_dir is not None:
        return output_dir
    return (project_dir if project_dir is not None else source.parent) / folder


def ensure_writable(folder: Path) -> None:
    """Create `folder` if needed and prove we can write there, before any paid work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX, suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(f"Cannot write stems to {folder}: {exc.strerror or exc}.",
                          hint="Choose another output folder, or fix the folder's permissions.") from None


def job_names(folder: Path, source_name: str, label: str, stem_labels: list[str], extension: str,
              stem_set: bool, kind: str = "") -> tuple[dict[str, Path], Path]:
    """(stem label -> final path, manifest path) for one job, all with the same free number so one run's
    files stay together and nothing existing is touched.

    Plain presets: `<source> - <label>.target.wav`, `.residual.wav`, `.sam.json`.
    Stem sets: `<source> - <stem>.wav` each, manifest `<source> - <preset>.sam.json`.
    `kind` ("audition") goes before the stem's suffix: `<source> - <label>.audition.target.wav`."""
    source = safe_name(Path(source_name).stem, 80)
    kind = f".{kind}" if kind else ""
    if stem_set:
        bases = {s: (f"{source} - {safe_name(s, 40)}{kind}", extension) for s in stem_labels}
    else:
        bases = {s: (f"{source} - {safe_name(label, 40)}{kind}", f".{s}{extension}") for s in stem_labels}
    manifest_base = (f"{source} - {safe_name(label, 40)}{kind}", ".sam.json")
    for number in range(1, 10_000):
        tag = "" if number == 1 else f" ({number})"
        stems = {s: folder / f"{base}{tag}{suffix}" for s, (base, suffix) in bases.items()}
        manifest = folder / f"{manifest_base[0]}{tag}{manifest_base[1]}"
        if not any(p.exists() for p in (*stems.values(), manifest)):
            return stems, manifest
    raise OutputError(f"Too many earlier results for {source_name!r} in {folder}.")


class NameTaken(OutputError):
    """A final name appeared between choosing it and writing it (another job, another program)."""


def temp_path_for(final: Path, tag: str = "") -> Path:
    """A fresh, not yet existing temp name beside `final` (same filesystem, so the rename is atomic).
    Writers create it exclusively, so a clash can never overwrite anything."""
    return final.parent / f"{TEMP_PREFIX}{tag}-{uuid.uuid4().hex[:12]}.tmp"


def place(temp: Path, final: Path) -> None:
    """Move a finished temp file to its final name without ever overwriting an existing file."""
    try:
        os.link(temp, final)  # fails with EEXIST instead of replacing
        os.unlink(temp)
    except FileExistsError:
        raise NameTaken(f"{final} appeared while sam-bridge was writing; it was left untouched.") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise OutputError(f"Cannot write {final}: {exc.strerror}.") from None
        if final.exists():  # filesystem without hard links (exFAT, some SMB): check, then rename
            raise NameTaken(f"{final} appeared while sam-bridge was writing; it was left untouched.") from None
        os.replace(temp, final)


def place_all(temps: dict[str, Path],
              choose: Callable[[], tuple[dict[str, Path], Path]]) -> tuple[dict[str, Path], Path]:
    """Place a job's temp files under names from `choose()`, all or none. If another writer takes one of
    the names first, put ours back under their temp names and choose again: never overwrite, and never
    lose a paid-for result."""
    for _attempt in range(5):
        finals, manifest = choose()
        placed: list[tuple[Path, Path]] = []  # (final, temp)
        try:
            for label, temp in temps.items():
                place(temp, finals[label])
                placed.append((finals[label], temp))
            return finals, manifest
        except NameTaken:
            for final, temp in placed:
                os.replace(final, temp)
        except BaseException:
            remove_quietly(*(final for final, _temp in placed))
            raise
    raise OutputError("Other programs keep taking the stem names in the output folder; try another folder.")


def write_json_atomic(path: Path, data: Any, *, overwrite: bool = True) -> None:
    """Write JSON under a temp name, fsync, then rename; readers see the old file or the whole new one."""
    temp = temp_path_for(path)
    try:
        with open(temp, "x", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            place(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path, tag: str) -> None:
    """Temp files a killed run of job `tag` left behind (never a user's file: ours are dot-prefixed)."""
    for stale in folder.glob(f"{TEMP_PREFIX}{tag}-*.tmp"):
        stale.unlink(missing_ok=True)


def remove_quietly(*paths: Path | None) -> None:
    """Clean-up on the way out of a failure: it must never hide that failure behind one of its own."""
    for path in paths:
        if path is None:
            continue
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):  # gone, or its folder is (an unplugged drive)
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc)

def write_atomically(path: Path, text: str) -> None:
    """Write under a temp name no watcher takes, then rename into place (replacing our own old file)."""
    fd, temp_name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
