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
import shutil
import sys
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bridge.common.errors import InputError, OutputError
from bridge.common.path_policy import PathPolicy

log = logging.getLogger(__name__)

EXTENSIONS = {"WAV": ".wav", "WAVEX": ".wav", "RF64": ".wav", "W64": ".w64", "AIFF": ".aif", "FLAC": ".flac",
              "CAF": ".caf"}
TEMP_PREFIX = ".sam-partial-"  # dot-prefixed and no audio extension: no DAW or watcher takes it
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def safe_name(text: str, max_len: int = 60, max_bytes: int | None = None) -> str:
    """A file-name part safe on Windows, macOS and Linux; unicode letters are kept. At most `max_len`
    characters and, when given, `max_bytes` bytes in UTF-8 whether composed or decomposed (file systems
    count a name's bytes, 255 at most, and macOS may store it decomposed: é is 2 bytes or 3)."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    if len(text) > max_len:
        text = text[:max_len].rstrip(" .")
    while max_bytes is not None and _stored_bytes(text) > max_bytes:
        text = text[:-1].rstrip(" .")
    if not text:
        text = "stem"
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = f"_{text}"
    return text


def _stored_bytes(text: str) -> int:
    return max(len(text.encode("utf-8")), len(unicodedata.normalize("NFD", text).encode("utf-8")))


# A stem's name: `<source part> - <label part>[.audition][ (9999)][.residual].<ext>`. The parts' budgets
# leave the longest name (37 bytes besides them) under 255 bytes in any script (CJK takes 3 bytes a
# character: 80 characters of a Japanese file name are 240 bytes on their own).
SOURCE_PART_BYTES, LABEL_PART_BYTES = 120, 60


def source_part(source_name: str) -> str:
    """What stem and manifest names begin with: the source file's name without its extension."""
    return safe_name(Path(source_name).stem, 80, SOURCE_PART_BYTES)


def label_part(label: str) -> str:
    """A preset's, prompt's or stem's label as it stands in a file name (two labels that come out the
    same here would name the same file)."""
    return safe_name(label, 40, LABEL_PART_BYTES)


def output_folder(source: Path, project_dir: Path | None, output_dir: Path | None, folder: str) -> Path:
    if output_dir is not None:
        return output_dir
    return (project_dir if project_dir is not None else source.parent) / folder


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class DiskFull(OutputError):
    """The disk (or quota) holding a folder sam-bridge writes to is full, or read-only: nothing was placed.
    Its hint says what to fix; how to run it again, and whether that costs anything, depends on the way in
    and on whether anything had been sent: the daemon (`JobEngine`) and the CLI (`separate_run`) add it."""

    kind = "disk_full"


def free_space(folder: Path) -> str:
    """The free space of the disk holding `folder` (or its nearest existing parent), in words."""
    for candidate in (folder, *folder.parents):
        try:
            free = shutil.disk_usage(candidate).free
        except OSError:
            continue
        for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if free >= size:
                return f"{free / size:.1f} {unit} free"
        return f"{free} bytes free"
    return "free space unknown"


def disk_full_message(folder: Path, what: str) -> str:
    return f"The disk holding {what} ({folder}) is full ({free_space(folder)})"


def disk_error(exc: OSError, folder: Path, what: str) -> DiskFull | None:
    """The clear error for a full disk, exceeded quota or read-only disk under `folder`; None for others."""
    if exc.errno not in DISK_ERRNOS:
        return None
    if exc.errno == errno.EROFS:
        return DiskFull(f"The disk holding {what} ({folder}) is read-only, so nothing was written there.",
                        hint="Choose a folder on a writable disk (or remount it).")
    quota = " or your quota there is used up" if exc.errno == errno.EDQUOT else ""
    return DiskFull(f"{disk_full_message(folder, what)}{quota}; nothing was left behind.",
                    hint="Free some space there.")


_BYTES_PER_SAMPLE = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def stems_bytes(frames: int, channels: int, subtype: str, count: int) -> int:
    """About what `count` stems of `frames` take on disk (uncompressed; FLAC stems take less)."""
    return count * frames * channels * _BYTES_PER_SAMPLE.get(subtype.upper(), 4)


def check_room(folder: Path, needed: int) -> None:
    """Before anything is paid for: the stems must fit in the output folder's free space."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell (some network shares): writing will say so
    if free < needed:
        raise DiskFull(f"{disk_full_message(folder, 'the output folder')}: the stems need about "
                       f"{needed / 1e6:.1f} MB; nothing was written.",
                       hint="Free some space there (or choose another output folder).")


def confined_folder(folder: Path, policy: PathPolicy | None, *, create: bool) -> Path:
    """`folder` as the stems will be written to it. For a confined request (an untrusted way in) resolved
    and checked against its allowed roots. With `create`, made and proven writable (`ensure_writable`,
    for every way in, so each says a folder that cannot be made in the same words) and, confined, checked
    again once it exists, so a `Stems` symlink or a `..` can't lead out."""
    if policy is not None:
        folder = policy.output_folder(folder, "output folder")
    if not create:
        return folder
    return ensure_writable(folder, None if policy is None else partial(policy.output_folder, what="output folder"))


def ensure_writable(folder: Path, recheck: Callable[[Path], Path] | None = None) -> Path:
    """Create `folder` if needed and prove we can write there, before any paid work starts. The one place
    that words why an output folder cannot be used. `recheck` (a confined request's policy) runs once the
    folder exists and before anything is written in it: a `Stems` symlink swapped in meanwhile leads nowhere."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if recheck is not None:
            folder = recheck(folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX, suffix=".probe"):
            pass
    except (FileExistsError, NotADirectoryError):  # the folder asked for (or one above it) is a file: input
        raise InputError(f"The output folder {folder} is a file (or lies inside one), not a folder.",
                         hint="Give a folder to write the stems to.") from None
    except OSError as exc:
        if (full := disk_error(exc, folder, "the output folder")) is not None:
            raise full from None
        raise OutputError(f"Cannot write stems to {folder}: {exc.strerror or exc}.",
                          hint="Choose another output folder, or fix the folder's permissions.") from None
    return folder


def job_names(folder: Path, source_name: str, label: str, stem_labels: list[str], extension: str,
              stem_set: bool, kind: str = "") -> tuple[dict[str, Path], Path]:
    """(stem label -> final path, manifest path) for one job, all with the same free number so one run's
    files stay together and nothing existing is touched.

    Plain presets: `<source> - <label>.target.wav`, `.residual.wav`, `.sam.json`.
    Stem sets: `<source> - <stem>.wav` each, manifest `<source> - <preset>.sam.json`.
    `kind` ("audition") goes before the stem's suffix: `<source> - <label>.audition.target.wav`."""
    source = source_part(source_name)
    kind = f".{kind}" if kind else ""
    if stem_set:
        bases = {s: (f"{source} - {label_part(s)}{kind}", extension) for s in stem_labels}
    else:
        bases = {s: (f"{source} - {label_part(label)}{kind}", f".{s}{extension}") for s in stem_labels}
    manifest_base = (f"{source} - {label_part(label)}{kind}", ".sam.json")
    for number in range(1, 10_000):
        tag = "" if number == 1 else f" ({number})"
        stems = {s: folder / f"{base}{tag}{suffix}" for s, (base, suffix) in bases.items()}
        manifest = folder / f"{manifest_base[0]}{tag}{manifest_base[1]}"
        try:  # lexists: a dangling symlink takes its name as surely as a file does
            taken = any(os.path.lexists(p) for p in (*stems.values(), manifest))
        except OSError as exc:
            raise OutputError(f"Cannot name stems in {folder}: {exc.strerror or exc}.",
                              hint="Choose an output folder with a shorter path.") from None
        if not taken:
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
        if (full := disk_error(exc, final.parent, "the output folder")) is not None:
            raise full from None
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


def place_unit(temps: dict[str, Path], choose: Callable[[], tuple[dict[str, Path], Path]],
               manifest_for: Callable[[dict[str, Path]], Any]) -> tuple[dict[str, Path], Path]:
    """Place a job's stems and its manifest as one unit: the manifest (which names the stems' final
    paths) is written to a temp first, then everything is moved into place; any failure (a full disk
    included) removes what was placed, so no stem is ever left without its manifest. The stem temps
    stay for the caller to remove: a retry fetches the service's results again, at no cost."""
    for _attempt in range(5):
        finals, manifest = choose()
        manifest_temp = temp_path_for(manifest)
        placed: list[tuple[Path, Path]] = []  # (final, temp)
        try:
            _write_json_temp(manifest_temp, manifest_for(finals))
            for label, temp in temps.items():
                place(temp, finals[label])
                placed.append((finals[label], temp))
            place(manifest_temp, manifest)
            return finals, manifest
        except NameTaken:
            for final, temp in placed:
                os.replace(final, temp)
        except BaseException:
            for final, temp in placed:  # back under its hidden temp name, or gone: never orphaned
                try:
                    os.replace(final, temp)
                except OSError:
                    remove_quietly(final)
            raise
        finally:
            with contextlib.suppress(OSError):
                manifest_temp.unlink(missing_ok=True)
    raise OutputError("Other programs keep taking the stem names in the output folder; try another folder.")


def _write_json_temp(temp: Path, data: Any) -> None:
    try:
        with open(temp, "x", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if (full := disk_error(exc, temp.parent, "the output folder")) is not None:
            raise full from None
        raise


# On Windows a file another program has open (an antivirus scanning it, a DAW script reading a status
# file) cannot be replaced for that moment: os.replace raises PermissionError (ERROR_ACCESS_DENIED or
# ERROR_SHARING_VIOLATION). Such holds last milliseconds, so replacing our own files is tried again.
ON_WINDOWS = sys.platform == "win32"
REPLACE_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.35)  # ~1 s in all, then the error is reported


def replace_own_file(temp: Path | str, path: Path) -> None:
    """`os.replace(temp, path)` for a file of ours (a status, marker or error file), tried again for about
    a second on Windows while another program holds `path` open. Then a PermissionError that says so."""
    pauses = iter(REPLACE_PAUSES if ON_WINDOWS else ())
    while True:
        try:
            os.replace(temp, path)
            return
        except PermissionError as exc:
            pause = next(pauses, None)
            if pause is None:
                if not ON_WINDOWS:
                    raise
                raise PermissionError(
                    exc.errno, f"{path.name} could not be replaced: another program (an antivirus, or the one "
                    f"reading it) kept it open for {sum(REPLACE_PAUSES):.0f} s", str(path)) from exc
            time.sleep(pause)


def write_json_atomic(path: Path, data: Any, *, overwrite: bool = True) -> None:
    """Write JSON under a temp name, fsync, then rename; readers see the old file or the whole new one."""
    temp = temp_path_for(path)
    try:
        _write_json_temp(temp, data)
        if overwrite:
            replace_own_file(temp, path)
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


def write_atomically(path: Path, text: str, *, mode: int = 0o666) -> None:
    """Write under a temp name no watcher takes, then rename into place (replacing our own old file).

    The file gets `mode` less the umask, as a plain create gives (not mkstemp's private 0600): on a shared
    folder a colleague's daemon must read our claim markers, and colleagues our error reports. Pass 0o600
    for a file that must stay private."""
    temp_name = path.with_name(f".{uuid.uuid4().hex}.tmp")  # dot-prefixed: no watcher takes it
    fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        replace_own_file(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
