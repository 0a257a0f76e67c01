"""The files of a hot folder: which names are audio to take, which to leave alone, the files
sam-bridge keeps beside a source (sidecar, error file, done/ folder), and the request a file makes.

Only audio extensions are ever taken; on top of that, names DAWs, sync tools and sam-bridge itself use
for partial, temporary or derived files are ignored explicitly, so widening the extension list never
lets them through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import soundfile
import yaml

from bridge.common.errors import InputError
from bridge.common.file_gate import FileSnapshot
from bridge.common.path_policy import PathNotAllowed, PathPolicy, is_within, resolve_path
from bridge.common.plain import field_problem
from bridge.common.redact import safe_text
from bridge.common.request import Origin, SeparationRequest
from bridge.common.small_files import KIB, MIB, SideFileError, read_small_file, read_small_text
from bridge.common.stems import write_atomically

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".bwf", ".rf64", ".w64", ".aif", ".aiff", ".aifc", ".flac", ".mp3", ".ogg", ".oga",
     ".opus", ".caf"}
)
# Partial/temporary downloads and renders, DAW peak/analysis files, sync-tool temp files.
IGNORED_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".reapeaks",
                    ".asd", ".pkf", ".peak", ".sfk", ".!sync", ".icloud")
IGNORED_PREFIXES = (".", "~")  # dotfiles, `.~lock`, `~$` office/DAW locks, our own temp names
# What sam-bridge writes beside its stems: manifests, sidecars, status and error files. Stems themselves
# ("<name> - <label>.target.wav") are told by their manifest, not their name: a stem a user drops into a
# hot folder (split the residual again) is a file like any other.
MANIFEST_SUFFIX = ".sam.json"
OWN_SUFFIXES = (MANIFEST_SUFFIX, ".sam.yaml", ".error.txt", ".status.json")
STEMS_DIR_NAME = "Stems"  # the default output folder (OutputOptions.folder)
DONE_DIR_NAME = "done"
EXCLUDED_DIR_NAMES = frozenset({STEMS_DIR_NAME.casefold(), DONE_DIR_NAME})
ERROR_SUFFIX = ".error.txt"
SIDECAR_SUFFIX = ".sam.yaml"
SIDECAR_KEYS = frozenset({"preset", "prompt", "options", "start", "length", "tag"})
SIDECAR_LIMIT = 64 * KIB  # a sidecar is a few lines
MANIFEST_LIMIT = MIB  # a manifest or an error file of ours: a few KiB


def is_ignored_name(name: str) -> bool:
    """True for partial/temp names, DAW side files, dotfiles and the files sam-bridge writes beside stems."""
    folded = name.casefold()
    return folded.startswith(IGNORED_PREFIXES) or folded.endswith(IGNORED_SUFFIXES + OWN_SUFFIXES)


def is_audio_candidate(name: str) -> bool:
    """True for a name the watcher may take: an audio extension and nothing that marks it as ignored."""
    return Path(name).suffix.casefold() in AUDIO_EXTENSIONS and not is_ignored_name(name)


def is_excluded_dir(name: str) -> bool:
    """Folders never looked into: dot folders (our state), Stems/ (our output) and done/."""
    return name.startswith(".") or name.casefold() in EXCLUDED_DIR_NAMES


class ManifestIndex:
    """Recognises stems sam-bridge wrote, from the manifests (`*.sam.json`) beside them.

    Stem sets are named `<source> - <stem>.wav` with no marker in the name, so the manifest's list
    is what tells them apart from a user's file. Parsed manifests are cached by mtime."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, frozenset[Path]]] = {}

    def owns(self, path: Path) -> bool:
        try:
            names = os.listdir(path.parent)
        except OSError:
            return False
        for name in names:
            if not name.endswith(MANIFEST_SUFFIX):
                continue
            base = name[: -len(MANIFEST_SUFFIX)]
            if base and path.name.startswith(base + "."):  # "X - piano.sam.json" owns "X - piano.*"
                return True
            if path in self._stems(path.parent / name):
                return True
        return False

    def _stems(self, manifest: Path) -> frozenset[Path]:
        try:
            mtime_ns = os.stat(manifest).st_mtime_ns
        except OSError:
            return frozenset()
        cached = self._cache.get(manifest)
        if cached is not None and cached[0] == mtime_ns:
            return cached[1]
        stems: set[Path] = set()
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):  # a FIFO too: never waited on
            data = json.loads(read_small_text(manifest, MANIFEST_LIMIT))
            for entry in data.get("stems", {}).values():
                stem = Path(entry["path"] if isinstance(entry, dict) else entry)
                stems.add((manifest.parent / stem).resolve())
        self._cache[manifest] = (mtime_ns, frozenset(stems))
        return self._cache[manifest][1]


NAME_BYTES = 255  # what file systems allow a name


def error_file_for(source: Path) -> Path:
    """`<source name>.error.txt`; for a name within 10 bytes of the limit, the source's name cut to fit
    (such a report could not be written, and the file was offered again on every look)."""
    name = source.name
    while len((name + ERROR_SUFFIX).encode()) > NAME_BYTES:
        name = name[:-1]
    return source.with_name(name + ERROR_SUFFIX)


def source_for_error_file(error_file: Path) -> Path | None:
    if not error_file.name.endswith(ERROR_SUFFIX):
        return None
    plain = error_file.with_name(error_file.name[: -len(ERROR_SUFFIX)])
    if len(error_file.name.encode()) > NAME_BYTES - 4:  # maybe cut: the source whose report it is
        with contextlib.suppress(OSError):
            for entry in os.scandir(error_file.parent):
                if entry.name.startswith(plain.name) and error_file_for(Path(entry.path)) == error_file \
                        and not entry.name.endswith(ERROR_SUFFIX):
                    return Path(entry.path)
    return plain


def sidecar_candidates(source: Path) -> tuple[Path, Path]:
    """`file.sam.yaml` (as documented) and `file.wav.sam.yaml` (what scripts tend to write)."""
    return source.with_name(source.stem + SIDECAR_SUFFIX), source.with_name(source.name + SIDECAR_SUFFIX)


def sources_of_sidecar(sidecar: Path) -> list[Path]:
    """The audio files `sidecar` belongs to: `Song.wav` for `Song.wav.sam.yaml`, and every `Song.<audio>`
    for `Song.sam.yaml`. [] for a name that is no sidecar's."""
    if not sidecar.name.endswith(SIDECAR_SUFFIX) or sidecar.name == SIDECAR_SUFFIX:
        return []
    base = sidecar.name[: -len(SIDECAR_SUFFIX)]
    try:
        names = os.listdir(sidecar.parent)
    except OSError:
        return []
    return [sidecar.parent / name for name in names
            if (name == base or Path(name).stem == base) and is_audio_candidate(name)]


def sidecar_version(source: Path, policy: PathPolicy | None = None) -> str:
    """What the source's sidecar holds, as a short digest ("" when it has none): a sidecar saved with the
    same bytes (or touched) is the same version, whichever of its two names it has. One that cannot be read
    has a version of its own ("unreadable": the request says why, in the error file). With a policy, as in
    `read_sidecar`: a symlink is followed only to a file inside the allowed folders (the digest goes into a
    claim marker others may read: never one of a file they may not)."""
    sidecar = find_sidecar(source)
    if sidecar is None:
        return ""
    where, follow = sidecar, True
    try:
        if policy is not None:
            where, follow = resolve_path(sidecar, "settings file"), False
            if not is_within(where, policy.source_roots):
                return "outside"
        data = read_small_file(where, SIDECAR_LIMIT, follow_symlinks=follow)
    except (OSError, InputError):  # gone since, a FIFO, too large: hot_request reports it
        return "unreadable"
    return hashlib.sha256(data).hexdigest()[:16]


def sidecar_stat(source: Path) -> tuple[str, int, int, int] | None:
    """The source's sidecar's name, size, mtime and ctime: unchanged, its version is unchanged too (cheap
    enough for every rescan, which then reads only sidecars that were saved)."""
    sidecar = find_sidecar(source)
    if sidecar is None:
        return None
    try:
        info = os.stat(sidecar)
    except OSError:
        return (sidecar.name, -1, -1, -1)
    return (sidecar.name, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def error_blocks_retry(source: Path) -> bool:
    """An error file blocks retries until it is deleted or the source is saved again (touched)."""
    try:
        error_mtime = os.stat(error_file_for(source)).st_mtime_ns
        source_mtime = os.stat(source).st_mtime_ns
    except OSError:
        return False
    return error_mtime >= source_mtime


class SidecarError(InputError):
    """A sidecar file cannot be used."""


_SIDECAR_HINT = "Fix the settings file (or delete it to use the folder's preset)."


@dataclass(frozen=True)
class Sidecar:
    path: Path | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def find_sidecar(source: Path) -> Path | None:
    """The source's sidecar, if either name is taken: whatever is there (a symlink, a FIFO) is judged
    when it is read, so a sidecar that cannot be used is reported rather than silently passed over."""
    for candidate in sidecar_candidates(source):
        if os.path.lexists(candidate):
            return candidate
    return None


def read_sidecar(path: Path, policy: PathPolicy | None = None) -> Sidecar:
    """Parse a `*.sam.yaml` sidecar into request fields. Raises SidecarError with a readable message.

    With a policy (a hot folder is a way in others may write to), a symlinked sidecar is followed only to
    a file inside the allowed folders, and that file is opened without following a link swapped in since.
    Never more than SIDECAR_LIMIT bytes, never a FIFO or device, and no text of the file in a message."""
    where, follow = path, True
    if policy is not None:
        where, follow = resolve_path(path, "settings file"), False
        if not is_within(where, policy.source_roots):
            raise PathNotAllowed(f'The settings file "{path.name}" leads outside the folders sam-bridge may '
                                 "read, so it was not read.", _SIDECAR_HINT)
    try:
        data = yaml.safe_load(read_small_text(where, SIDECAR_LIMIT, follow_symlinks=follow))
    except SideFileError as exc:
        raise SidecarError(f'The settings file "{path.name}" cannot be used: {exc.reason}.', _SIDECAR_HINT) from exc
    except OSError as exc:
        raise SidecarError(f'The settings file "{path.name}" cannot be read ({exc.strerror or "error"}).',
                           _SIDECAR_HINT) from exc
    except UnicodeDecodeError as exc:
        raise SidecarError(f'The settings file "{path.name}" is not UTF-8 text.', _SIDECAR_HINT) from exc
    except yaml.YAMLError as exc:
        raise SidecarError(f'The settings file "{path.name}" is not valid YAML ({_yaml_problem(exc)}).',
                           _SIDECAR_HINT) from exc
    if data is None:
        return Sidecar(path)
    if not isinstance(data, dict):
        raise SidecarError(f'The settings file "{path.name}" must hold "key: value" lines.', _SIDECAR_HINT)
    unknown = sorted(str(key)[:40] for key in data if key not in SIDECAR_KEYS)
    if unknown:
        raise SidecarError(
            f'The settings file "{path.name}" has unknown key(s) {", ".join(unknown[:5])}'
            f'{" …" if len(unknown) > 5 else ""}; '
            f"allowed: {', '.join(sorted(SIDECAR_KEYS))}.",
            _SIDECAR_HINT,
        )
    if "options" in data and not isinstance(data["options"], dict):
        raise SidecarError(f'In "{path.name}", options must be indented "name: value" lines.', _SIDECAR_HINT)
    return Sidecar(path, dict(data))


# PyYAML quotes what it found in the file ('<scalar>' token names, but also tags and alias names)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_TOKEN_NAME = re.compile(r"""^'<[a-z ]+>'$""")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without the file's text: PyYAML's own message quotes the line with a caret under
    it, and the file may be one a user was not meant to read."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "syntax error"
    mark = exc.problem_mark or exc.context_mark
    problem = _QUOTED.sub(lambda m: m.group() if _TOKEN_NAME.match(m.group()) else "…",
                          exc.problem or exc.context or "syntax error")
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + problem


def sidecar_age(source: Path) -> float:
    """Seconds since the source's sidecar last changed; infinite when there is none."""
    sidecar = find_sidecar(source)
    try:
        return time.time() - sidecar.stat().st_mtime if sidecar else float("inf")
    except OSError:
        return float("inf")


def check_audio(path: Path) -> None:
    """Refuse what is not audio before it costs anything: reading the header tells kind and length."""
    try:
        info = soundfile.info(str(path))
    except Exception as exc:
        raise InputError(
            "This file is not audio sam-bridge can read (or it is damaged).",
            "Export it again as WAV, AIFF or FLAC.",
        ) from exc
    if info.frames <= 0:
        raise InputError("This audio file is empty.", "Export it again with the audio in it.")


def hot_request(
    source: Path,
    snapshot: FileSnapshot,
    *,
    folder_preset: Callable[[], str | None],
    output_dir: Path | None,
    known_presets: Sequence[str],
    policy: PathPolicy | None = None,
) -> SeparationRequest:
    """The request for one complete file: its folder's preset unless a sidecar says otherwise.

    Raises InputError (SidecarError) with a message for the error file; PathNotAllowed for a symlink to a
    file outside the allowed folders (checked before the file is opened at all)."""
    if policy is not None:
        policy.source_file(source)
    check_audio(source)
    sidecar = find_sidecar(source)
    fields = dict(read_sidecar(sidecar, policy).fields) if sidecar else {}
    # The folder's preset is looked up only without a sidecar choice: then its name is irrelevant.
    sidecar_chooses = "prompt" in fields or "preset" in fields
    preset = fields.pop("preset", None) if sidecar_chooses else folder_preset()
    if preset is None and not fields.get("prompt"):
        raise InputError(
            "The file is not in a preset folder, so sam-bridge does not know what to isolate.",
            f"Move it into a preset folder ({', '.join(known_presets) or 'e.g. vocals'}), or put a "
            f'"{source.stem}{SIDECAR_SUFFIX}" file beside it with a line like "prompt: piano playing".',
        )
    folder_name = str(fields.get("options", {}).get("folder", STEMS_DIR_NAME))
    key = f"hot:{source}:{snapshot.size}:{snapshot.mtime_ns}"
    if sidecar:  # what the sidecar asks is part of the request: a file moved back from done/ with a new
        # sidecar (mv keeps its mtime) is a new request, not the finished job of the old one
        asked = json.dumps({"preset": preset, **fields}, sort_keys=True, default=str)
        key += ":" + hashlib.sha256(asked.encode()).hexdigest()[:16]
    try:
        return SeparationRequest(
            source=source,
            preset=preset,
            output_dir=(output_dir or source.parent / folder_name).expanduser().resolve(),
            origin=Origin.hot_folder,
            confined_to=policy,
            idempotency_key=key,
            **fields,
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(field_problem(error) for error in exc.errors())
        raise InputError(f"The settings for this file are not valid: {problems}.",
                         f"Fix the {SIDECAR_SUFFIX} file beside it.") from exc



def error_text(source: Path, what_happened: str, job_id: str | None = None) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    job = f" (job {job_id})" if job_id else ""
    name = safe_text(source.name)  # a file name is outside text: no control character, no forged line
    return (
        f'sam-bridge could not separate "{name}"{job}, {stamp}.\n\n'
        f"What happened:\n{safe_text(what_happened.strip(), keep_newlines=True)}\n\n"
        f"To try again: fix the cause, then delete this file, or save/export \"{name}\" again.\n"
        "sam-bridge picks the file up again within a few seconds.\n"
    )


def error_file_reports(source: Path, job_id: str) -> bool:
    """True when the source's error file is our report of that job's failure."""
    try:
        text = read_small_file(error_file_for(source), MANIFEST_LIMIT).decode("utf-8", errors="replace")
    except OSError:  # gone, or not a file of ours (a FIFO, a huge file)
        return False
    return bool(job_id) and f"(job {job_id})" in text.split("\n", 1)[0]


def write_error_file(source: Path, what_happened: str, job_id: str | None = None) -> Path:
    target = error_file_for(source)
    write_atomically(target, error_text(source, what_happened, job_id))
    return target


def move_to_done(source: Path) -> Path | None:
    """Move a finished source (and its sidecar) into `done/` beside it, never over an existing file.

    The sidecar takes the name that pairs it with the source where it lands (`Song (2).sam.yaml` beside
    `Song (2).wav`), so moving both back retries with the same settings. Returns the new path, or None
    when the source is gone."""
    if not source.exists():
        return None
    done_dir = source.parent / DONE_DIR_NAME
    done_dir.mkdir(exist_ok=True)
    sidecar = find_sidecar(source)
    moved = _move_without_overwrite(source, done_dir, source.stem, source.suffix)
    if sidecar is not None:
        documented = sidecar.name == sidecar_candidates(source)[0].name  # `Song.sam.yaml`, not `Song.wav.sam.yaml`
        stem = moved.stem if documented else moved.name
        _move_without_overwrite(sidecar, done_dir, stem, SIDECAR_SUFFIX)
    return moved


def _move_without_overwrite(path: Path, folder: Path, stem: str, suffix: str) -> Path:
    """`path` moved into `folder` as `<stem><suffix>`, or `<stem> (n)<suffix>` when that is taken."""
    for number in range(1, 1000):
        target = folder / _numbered(stem, number, suffix)
        try:
            os.link(path, target)  # fails if the target exists: no race can overwrite a file
        except FileExistsError:
            continue
        except OSError:
            if os.path.lexists(target):  # filesystems without hard links (FAT, some SMB shares)
                continue
            os.rename(path, target)
            return target
        os.unlink(path)
        return target
    raise FileExistsError(f"no free name for {path.name} in {folder}")


def _numbered(stem: str, number: int, suffix: str, limit: int = 255) -> str:
    """`stem (n)suffix` (just `stem suffix` for 1), the stem shortened so that the name stays within
    `limit` bytes: a name that filled the file system's 255 could not take " (2)" (File name too long)."""
    tag = "" if number == 1 else f" ({number})"
    while stem and len(f"{stem}{tag}{suffix}".encode()) > limit:
        stem = stem[:-1]
    return f"{stem}{tag}{suffix}"
