"""Never pay twice for the same thing: the same audio + prompt(s) + options as an earlier finished job
reuses its stems (copied to the new request's output folder, the manifest says where they came from)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from bridge.audio_source import source_sha256
from bridge.jobs import JobView
from bridge.pipeline import JobResult
from bridge.presets import Recipe
from bridge.request import SeparationRequest
from bridge.stems import job_names, output_folder, place, temp_path_for, write_json_atomic


def dedupe_key(request: SeparationRequest, recipe: Recipe) -> str:
    what = {
        "audio": source_sha256(request.source),
        "part": [request.start, request.length],
        "steps": [[s.prompt, [sp.model_dump() for sp in s.spans or ()], s.options.to_payload()]
                  for s in recipe.steps],
        "output": recipe.output.model_dump(mode="json", exclude={"folder", "label"}),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def reuse_result(request: SeparationRequest, recipe: Recipe, earlier: JobView) -> JobResult | None:
    """Copy an earlier job's stems for `request`; None when they are gone (then the job runs for real)."""
    if not earlier.manifest or not Path(earlier.manifest).is_file():
        return None
    old_stems = {label: Path(path) for label, path in earlier.stems.items()}
    if not old_stems or not all(p.is_file() for p in old_stems.values()):
        return None
    folder = output_folder(request.source, request.project_dir, request.output_dir, recipe.output.folder)
    folder.mkdir(parents=True, exist_ok=True)
    extension = next(iter(old_stems.values())).suffix
    finals, manifest_path = job_names(folder, request.source.name, recipe.label, list(old_stems), extension,
                                      stem_set=len(recipe.steps) > 1)
    for label, old in old_stems.items():
        temp = temp_path_for(finals[label])
        try:
            shutil.copyfile(old, temp)
            place(temp, finals[label])
        finally:
            temp.unlink(missing_ok=True)
    manifest = json.loads(Path(earlier.manifest).read_text(encoding="utf-8"))
    manifest["reused_from"] = earlier.manifest
    manifest["stems"] = {label: {**manifest["stems"].get(label, {}), "path": str(path)}
                         for label, path in finals.items()}
    manifest["request"] = request.model_dump(mode="json", exclude={"source"})
    manifest["estimated_cost"] = {**manifest.get("estimated_cost", {}), "amount": 0.0}
    write_json_atomic(manifest_path, manifest, overwrite=False)
    return JobResult(stems=finals, manifest=manifest_path, flags=list(manifest.get("flags", [])), steps=[],
                     estimated_cost=0.0, timings={})
