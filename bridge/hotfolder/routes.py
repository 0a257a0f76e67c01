"""Which hot folder (and which preset) may take a path, and walking the folders for such paths.

A path is never routed when it is one of our own outputs: a stem we wrote, or anything under an output
folder. Parent folders (no preset) route files in their preset-named subfolders; a folder with a preset
routes the files directly inside it (any depth when recursive).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge.common.claims import STATE_DIR_NAME
from bridge.common.errors import InputError
from bridge.hotfolder.names import is_audio_candidate, is_excluded_dir


@dataclass(frozen=True)
class HotFolder:
    path: Path
    preset: str | None = None  # None: a parent whose subfolders are named after presets (hot/vocals/, …)
    output_dir: Path | None = None  # None: Stems/ beside the source
    recursive: bool = False
    polling: bool = False  # PollingObserver (network drives / SMB / NFS / cloud sync)
    settle_seconds: float = 2.0  # size+mtime unchanged this long before a file is taken
    after_success: Literal["keep", "move-to-done"] = "keep"


@dataclass(frozen=True)
class Route:
    folder: HotFolder
    root: Path
    subfolder: str | None  # parent folders: the preset subfolder's name; None for files in the root


class FolderRoutes:
    """The watched folders, what we wrote into them, and the preset names their subfolders may carry."""

    def __init__(self, folders: Sequence[HotFolder]) -> None:
        self.folders = [(folder, folder.path.expanduser().resolve()) for folder in folders]
        self.known_presets: list[str] = []
        self.own_outputs: set[Path] = set()
        self.output_dirs: set[Path] = {
            out.expanduser().resolve() for folder, _ in self.folders if (out := folder.output_dir)
        } - {root for _, root in self.folders}

    def note_own_outputs(self, stems: Iterable[str]) -> None:
        """Stems we wrote: never to be taken as sources, even when they land in a hot folder."""
        for stem in stems:
            self.own_outputs.add(Path(stem).expanduser().resolve())

    def route(self, path: Path) -> Route | None:
        """Which folder may take `path`, and its preset subfolder; None when no folder may."""
        if not is_audio_candidate(path.name) or path in self.own_outputs:
            return None
        if any(path.is_relative_to(out) for out in self.output_dirs):
            return None
        best: Route | None = None
        for folder, root in self.folders:
            if not path.is_relative_to(root) or (best and len(best.root.parts) > len(root.parts)):
                continue
            dirs = path.relative_to(root).parts[:-1]
            if any(is_excluded_dir(name) for name in dirs):
                continue
            if folder.preset is not None and (folder.recursive or not dirs):
                best = Route(folder, root, None)
            elif folder.preset is None and (folder.recursive or len(dirs) <= 1):
                best = Route(folder, root, dirs[0] if dirs else None)
        return best

    def route_dir(self, directory: Path) -> tuple[HotFolder, Path] | None:
        """The folder whose walk should enter `directory`, if any."""
        if any(directory.is_relative_to(out) for out in self.output_dirs):
            return None
        for folder, root in sorted(self.folders, key=lambda item: -len(item[1].parts)):
            if not directory.is_relative_to(root):
                continue
            dirs = directory.relative_to(root).parts
            if any(is_excluded_dir(name) for name in dirs):
                return None
            max_depth = 0 if folder.preset is not None else 1
            if folder.recursive or len(dirs) <= max_depth:
                return folder, root
        return None

    def settle_of(self, path: Path) -> float:
        route = self.route(path)
        return route.folder.settle_seconds if route else 0.0

    def walk(
        self,
        folder: HotFolder,
        root: Path,
        start: Path,
        prune_claims: Callable[[Path], object] | None = None,
    ) -> Iterator[Path]:
        """Audio candidates under `start` that `folder` may take, skipping our own folders.

        `prune_claims` is called for each directory holding claim markers (the walk lists it anyway).
        """
        pending = [start]
        while pending:
            directory = pending.pop()
            if directory.name == STATE_DIR_NAME:
                continue
            try:
                with os.scandir(directory) as entries:
                    listing = list(entries)
            except OSError:
                continue
            if prune_claims is not None and any(entry.name == STATE_DIR_NAME for entry in listing):
                prune_claims(directory)
            for entry in listing:
                path = Path(entry.path)
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        if self.route_dir(path) is not None:
                            pending.append(path)
                    elif entry.is_file() and self.route(path) is not None:
                        yield path

    def preset_for(self, route: Route) -> str | None:
        """The preset a parent folder's subfolder names (None for files in the root)."""
        if route.subfolder is None:
            return None
        if not self.known_presets:
            return route.subfolder  # the engine judges the name
        for name in self.known_presets:
            if name.casefold() == route.subfolder.casefold():
                return name
        raise InputError(
            f'The folder "{route.subfolder}" is not named after a preset.',
            f"Move the file into one of the preset folders: {', '.join(self.known_presets)}.",
        )

    def ensure_preset_folders(self, names: Iterable[str]) -> None:
        """Create `<folder>/<preset>/` in every parent folder (never removes one: it may hold files)."""
        for folder, root in self.folders:
            if folder.preset is not None or not root.is_dir():
                continue
            for name in names:
                if name and not is_excluded_dir(name) and not any(sep in name for sep in "/\\:"):
                    with contextlib.suppress(OSError):
                        (root / name).mkdir(exist_ok=True)
