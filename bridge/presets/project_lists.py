"""Preset lists for the projects DAW scripts ask about, kept fresh by the daemon.

A DAW script cannot wait for a process on its UI thread, so it drops `<key>.want` (the project folder, one
line) into the lists folder and reads `<key>.json` beside it: the shared presets plus the project's own
(`<project>/sam-bridge/presets/`), in the shape of `sam-bridge presets list --json`. The daemon rewrites an
answer whenever a preset file it depends on changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bridge.common.stems import write_json_atomic
from bridge.presets.files import PresetFileError
from bridge.presets.library import PROJECT, PresetLibrary, project_presets_dir

log = logging.getLogger(__name__)

MAX_PROJECTS = 64


def preset_list_document(library: PresetLibrary) -> dict[str, Any]:
    """The presets (name, description, stems, origin) and the problems of broken files."""
    presets = [{"name": p.name, "description": p.description, "tags": list(p.tags), "stems": p.stem_labels,
                "origin": library.origin_of(p.name)} for p in library.presets()]
    problems = [{"file": str(problem.file), "line": problem.line, "field": problem.field,
                 "message": problem.message, "preset": problem.preset}
                for error in library.errors() if isinstance(error, PresetFileError) for problem in error.problems]
    return {"presets": presets, "problems": problems}


class ProjectPresetLists:
    """Answers the `*.want` files in `folder` (call `refresh()` every second or so)."""

    def __init__(self, shared: PresetLibrary, folder: Path) -> None:
        self.shared, self.folder = shared, folder
        self._libraries: dict[str, tuple[Path, PresetLibrary]] = {}

    def refresh(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        wants = sorted(self.folder.glob("*.want"))[:MAX_PROJECTS]
        for want in wants:
            key = want.stem
            try:
                text = want.read_text(encoding="utf-8").rstrip("\r\n")  # a folder may end in a space
                project_dir = Path(text)
            except (OSError, UnicodeDecodeError):
                continue  # half written: read again next time
            if not text:
                continue
            known = self._libraries.get(key)
            answer = self.folder / f"{key}.json"
            if known is None or known[0] != project_dir:
                search_path = (*self.shared.search_path, (PROJECT, project_presets_dir(project_dir)))
                library = PresetLibrary(search_path, quiet=True)
                self._libraries[key] = (project_dir, library)
                changed = True
            else:
                library = known[1]
                changed = library.refresh() or not answer.exists()
            if changed:
                # the folder exactly as the script wrote it: that is what it compares with
                document = {"project_dir": text, **preset_list_document(library)}
                write_json_atomic(answer, document)
                log.debug("preset list for %s written", project_dir)
