"""Presets: the library a user picks names from, and the recipe (fal requests) a request turns into.

Search path, earliest first: built-ins (`presets/` in the package), the user's config folder
(`<user config>/sam-bridge/presets`), the project (`<project>/sam-bridge/presets`; for Live, beside the
.als). A later folder overrides an earlier one by name. A broken file never takes the library down: its
other presets keep working, and whoever asks for a broken preset gets the file's problems
(file:line: field: message).
The file format is documented in `bridge.presets.schema.EXAMPLE_PRESET_FILE`.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.common.config import config_dir as sam_bridge_config_dir
from bridge.common.errors import PresetError
from bridge.common.options import ServiceOptions
from bridge.common.shipped import shipped_dir
from bridge.presets.files import (
    PresetFileError,
    PresetProblem,
    load_preset_file,
    names_written_in,
    read_preset_file,
)
from bridge.presets.schema import (
    EXAMPLE_PRESET_FILE,
    Preset,
    StemSpec,
    merge_options,
    name_key,
    slug,
)

__all__ = [
    "EXAMPLE_PRESET_FILE",
    "Preset",
    "PresetFileError",
    "PresetLibrary",
    "PresetProblem",
    "StemSpec",
    "load_preset_file",
    "slug",
]

log = logging.getLogger(__name__)

BUILTIN, USER, PROJECT = "built-in", "user", "project"
PRESET_SUFFIXES = (".yaml", ".yml")






def builtin_presets_dir() -> Path:
    """The shipped presets: the installed `bridge.presets_builtin`, else `presets/` of a checkout."""
    return shipped_dir("bridge.presets_builtin", "presets")


def user_presets_dir(config_dir: Path | None = None) -> Path:
    return (config_dir or sam_bridge_config_dir()) / "presets"


def project_presets_dir(project_dir: Path) -> Path:
    """`<project>/sam-bridge/presets`. Ableton's device names `<Live project>/Samples/Processed` as its
    project (its stems go there), but a Live Set's presets sit beside its .als, as REAPER's beside its .rpp."""
    return (_live_project_of_stems_folder(project_dir) or project_dir) / "sam-bridge" / "presets"


def _live_project_of_stems_folder(folder: Path) -> Path | None:
    """The Live project whose `Samples/Processed` folder `folder` is, if it is one."""
    if tuple(part.lower() for part in folder.parts[-2:]) != ("samples", "processed"):
        return None
    project = folder.parent.parent
    try:
        if (project / "Ableton Project Info").is_dir() or any(project.glob("*.als")):
            return project
    except OSError:  # unreadable: treat it as a plain folder
        pass
    return None


def default_search_path(
    project_dir: Path | None = None, config_dir: Path | None = None
) -> list[tuple[str, Path]]:
    """(origin, folder) pairs, earliest first; `config_dir` is sam-bridge's config folder."""
    path = [(BUILTIN, builtin_presets_dir()), (USER, user_presets_dir(config_dir))]
    if project_dir is not None:
        path.append((PROJECT, project_presets_dir(project_dir)))
    return path


Stamp = tuple[int, int, int] | None


@dataclass(frozen=True)
class _FileState:
    stamp: Stamp
    presets: list[Preset]
    problems: list[PresetProblem]


@dataclass(frozen=True)
class _Entry:
    origin: str
    preset: Preset | None  # None when broken
    error: PresetError | None = None
    broken_name: str = ""  # the name a broken preset is asked for by


def _stamp(path: Path) -> Stamp:
    # The inode catches editors that save by replacing the file, even at an identical size and mtime.
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class PresetLibrary:
    """Presets found on a search path; cheap to `refresh()` while a daemon runs."""

    def __init__(self, search_path: Sequence[tuple[str, Path]], *, quiet: bool = False) -> None:
        """`quiet`: log file problems at debug level (for a command that prints them itself)."""
        self.search_path = tuple((origin, Path(folder)) for origin, folder in search_path)
        self._problem_level = logging.DEBUG if quiet else logging.WARNING
        self._lock = threading.Lock()
        self._files: dict[Path, _FileState] = {}
        self._entries: dict[str, _Entry] = {}
        self._errors: list[PresetError] = []
        self._vanished: set[Path] = set()  # folders whose files all went at once: their presets are kept
        self.refresh()

    @classmethod
    def default(cls, project_dir: Path | None = None, config_dir: Path | None = None, *,
                quiet: bool = False) -> PresetLibrary:
        """Built-ins, then the user's presets (config_dir/presets), then the project's."""
        return cls(default_search_path(project_dir, config_dir), quiet=quiet)

    def refresh(self) -> bool:
        """Re-read files added or changed (mtime/size/inode) since last time; True if anything changed."""
        with self._lock:
            listing = self._listing()
            kept = self._kept_when_all_vanished(listing)
            if kept:  # in their folder's place on the search path: later folders still override them
                order = {folder: n for n, (_, folder) in enumerate(self.search_path)}
                listing = sorted(listing + kept, key=lambda entry: order.get(
                    entry[1], order.get(entry[1].parent, len(order))))
            kept_paths = {path for _, path in kept}
            present = {path for _, path in listing}
            removed = set(self._files) - present
            for path in removed:
                log.info("preset file gone: %s", path)
                del self._files[path]
            changed = bool(removed)
            for _, path in listing:
                if path in kept_paths:
                    continue  # as last read: there is nothing to read now
                stamp = _stamp(path)  # taken before reading: a save during the read is seen next time
                known = self._files.get(path)
                if known is not None and known.stamp == stamp and stamp is not None:
                    continue
                try:
                    presets, problems = read_preset_file(path)
                except Exception as exc:  # a file must never take the library (or the daemon) down
                    log.exception("cannot read preset file %s", path)
                    presets, problems = [], [PresetProblem(path, None, "file", f"cannot be read ({exc})")]
                self._files[path] = _FileState(stamp, presets, problems)
                changed = True
                log.debug("read %d preset(s) from %s", len(presets), path)
                for problem in problems:
                    log.log(self._problem_level, "preset problem: %s", problem)
            if changed:
                self._rebuild(listing)
            return changed

    def _kept_when_all_vanished(self, listing: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
        """The files of a folder whose presets all vanished at once (a package reinstalled under a running
        daemon, an unmounted drive): kept as they were last read, said once, until files are back there.
        One file deleted is a change; every file of a folder gone at the same moment is an accident."""
        kept: list[tuple[str, Path]] = []
        listed = {path for _, path in listing}
        for origin, folder in self.search_path:
            if folder.is_file() or any(path.parent == folder for path in listed):
                if folder in self._vanished:
                    self._vanished.discard(folder)
                    log.info("preset files are back in %s: reading them again", folder)
                continue
            known = [path for path in self._files if path.parent == folder]
            if len(known) < 2:
                continue
            if folder not in self._vanished:
                self._vanished.add(folder)
                log.warning("all %d preset files in %s vanished at once (a reinstall, or an unplugged drive?): "
                            "keeping the presets read from them until they are back", len(known), folder)
            kept += [(origin, path) for path in known]
        return kept

    def get(self, name: str) -> Preset:
        entry = self._entries.get(name_key(name))
        if entry is None:
            raise self._unknown(name)
        if entry.preset is None:
            assert entry.error is not None
            raise entry.error
        return entry.preset

    def names(self, include_broken: bool = False) -> list[str]:
        """Usable presets' names; with `include_broken`, also those whose file has problems (asking for
        one gives those problems, where a name nobody knows would be taken as a prompt)."""
        usable = [preset.name for preset in self.presets()]
        if not include_broken:
            return usable
        broken = [entry.broken_name for entry in self._entries.values() if entry.preset is None]
        return sorted(usable + broken, key=name_key)

    def presets(self) -> list[Preset]:
        usable = [entry.preset for entry in self._entries.values() if entry.preset is not None]
        return sorted(usable, key=lambda preset: name_key(preset.name))

    def errors(self) -> list[PresetError]:
        return list(self._errors)

    def origin_of(self, name: str) -> str:
        entry = self._entries.get(name_key(name))
        if entry is None:
            raise self._unknown(name)
        return entry.origin

    def _listing(self) -> list[tuple[str, Path]]:
        listing: list[tuple[str, Path]] = []
        for origin, folder in self.search_path:
            if folder.is_file():
                listing.append((origin, folder))
                continue
            try:
                files = sorted(folder.iterdir()) if folder.is_dir() else []
            except OSError as exc:
                log.warning("cannot list preset folder %s: %s", folder, exc)
                continue
            listing += [
                (origin, path)
                for path in files
                if path.suffix.lower() in PRESET_SUFFIXES and not path.name.startswith(".") and path.is_file()
            ]
        return listing

    def _rebuild(self, listing: list[tuple[str, Path]]) -> None:
        entries: dict[str, _Entry] = {}
        errors: list[PresetError] = []
        defined_in: dict[str, tuple[str, Path]] = {}
        for origin, path in listing:
            state = self._files[path]
            if state.problems:
                errors.append(PresetFileError(state.problems))
            valid_here = {name_key(preset.name) for preset in state.presets}
            for preset in state.presets:
                key = name_key(preset.name)
                earlier = defined_in.get(key)
                if earlier and earlier[0] == origin:  # two files of one folder: keep the first, say so
                    message = f"'{preset.name}' is also defined in {earlier[1].name}; rename one of them"
                    problem = PresetProblem(path, preset.line, "name", message, preset.name)
                    log.log(self._problem_level, "preset problem: %s", problem)
                    errors.append(PresetFileError([problem]))
                    continue
                entries[key] = _Entry(origin, preset)
                defined_in[key] = (origin, path)
            # A broken preset shadows earlier ones of its name: its author expects theirs, not a fallback.
            broken: dict[str, tuple[str, list[PresetProblem]]] = {}
            for problem in state.problems:
                # a problem of the whole file (it is no YAML) concerns each preset it names, or its stem
                names = [problem.preset] if problem.preset else (names_written_in(path) or [path.stem])
                for name in names:
                    broken.setdefault(name_key(name), (name, []))[1].append(problem)
            for key, (name, problems) in broken.items():
                earlier = defined_in.get(key)
                if key in valid_here or (earlier and earlier[0] == origin):
                    continue
                entries[key] = _Entry(origin, None, PresetFileError(problems, name), name)
                defined_in[key] = (origin, path)
        snapshot = dict(entries)
        for key, entry in snapshot.items():
            if entry.preset is None or entry.preset.stems is None:
                continue
            try:
                entries[key] = _Entry(entry.origin, _resolve_stems(entry.preset, snapshot))
            except PresetFileError as err:
                log.log(self._problem_level, "%s", err.message)
                entries[key] = _Entry(entry.origin, None, err, entry.preset.name)
                errors.append(err)
        self._entries, self._errors = entries, errors

    def _unknown(self, name: str) -> PresetError:
        names = self.names()
        by_key = {name_key(known): known for known in names}
        wanted = name_key(name)
        close = difflib.get_close_matches(wanted, list(by_key), n=3, cutoff=0.6)
        close += [key for key in by_key if wanted and wanted in key and key not in close][: 3 - len(close)]
        hint = f"Did you mean {', '.join(repr(by_key[key]) for key in close)}? " if close else ""
        hint += "`sam-bridge presets list` shows every preset; or give a prompt instead (e.g. 'dog barking')."
        if self._errors:
            hint += f"\nNote: {len(self._errors)} preset file problem(s) hide some presets:\n" + "\n".join(
                f"  {problem}" for err in self._errors for problem in getattr(err, "problems", ())
            )
        return PresetError(f"There is no preset called '{name}'.", hint)


class PresetLibraries:
    """The daemon's presets: one shared library (built-in + user), and for a request that names a project
    with a `sam-bridge/presets/` folder, the same plus that folder (later wins, as for the CLI)."""

    def __init__(self, shared: PresetLibrary, max_projects: int = 32) -> None:
        self.shared = shared
        self._max_projects = max_projects
        self._projects: dict[Path, PresetLibrary] = {}  # most recently used last
        self._lock = threading.Lock()

    def for_project(self, project_dir: Path | None) -> PresetLibrary:
        folder = project_presets_dir(project_dir) if project_dir is not None else None
        if folder is None or not folder.is_dir():
            return self.shared
        key = folder.resolve()
        with self._lock:
            library = self._projects.pop(key, None)
            if library is None:
                library = PresetLibrary((*self.shared.search_path, (PROJECT, key)))
            else:
                library.refresh()  # the project's files, and the shared ones it also reads
            self._projects[key] = library
            while len(self._projects) > self._max_projects:
                self._projects.pop(next(iter(self._projects)))
            return library


# A stem set's stems, each resolved to its prompt and options
def _resolve_stems(preset: Preset, entries: Mapping[str, _Entry]) -> Preset:
    """Fill each stem's prompt and options; a stem naming a preset takes that preset's (now current) ones."""
    assert preset.stems is not None
    resolved: list[StemSpec] = []
    problems: list[PresetProblem] = []
    file = preset.origin or Path(preset.name)
    for index, stem in enumerate(preset.stems):
        field = f"stems[{index}]"
        if stem.preset is None:
            options = merge_options(ServiceOptions.model_validate({}), preset.options, stem.options)
            resolved.append(stem.model_copy(update={"options": options}))
            continue
        target = entries.get(name_key(stem.preset))
        if target is None:
            message = f"names the preset '{stem.preset}', which does not exist (`sam-bridge presets list`)"
        elif target.preset is None:
            message = f"names the preset '{stem.preset}', which has a problem of its own (see its file)"
        elif target.preset.stems is not None:
            message = f"names '{stem.preset}', a stem set; a stem must name a single-sound preset"
        else:
            base = target.preset
            options = merge_options(base.options, preset.options, stem.options)
            resolved.append(
                stem.model_copy(update={"prompt": base.prompt, "spans": base.spans, "options": options})
            )
            continue
        problems.append(PresetProblem(file, stem.line or preset.line, field, message, preset.name))
    if problems:
        raise PresetFileError(problems, preset.name)
    return preset.model_copy(update={"stems": resolved})
