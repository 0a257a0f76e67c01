"""Never pay twice for the same thing: the same audio + prompt(s) + options as an earlier finished job
reuses its stems (copied to the new request's output folder, the manifest says where they came from).

Only stems of the service in use: the service is part of the key (so a job never waits for another service's
job either, team-wide), and the earlier manifest must name it. A journal row from before the service was
in the key never matches: such stems may be the built-in stand-in's band split, so they are not reused."""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bridge.common.errors import OutputError
from bridge.common.jobs import JobView
from bridge.common.request import SeparationRequest
from bridge.common.stems import (
    check_room,
    confined_folder,
    disk_error,
    job_names,
    output_folder,
    place_unit,
    remove_quietly,
    source_part,
    temp_path_for,
)
from bridge.engine.pipeline_hooks import JobResult
from bridge.presets.recipe import Recipe


def dedupe_key(request: SeparationRequest, recipe: Recipe, audio_sha256: str, service: str) -> str:
    """`service`: what makes the stems (`Pipeline.service_name`)."""
    what = {
        "service": service,
        "audio": audio_sha256,
        # an audition is its own result (its window of the part), never the whole part's
        "part": [request.start, request.length] + ([request.audition] if request.audition else []),
        "steps": [[s.prompt, [sp.model_dump() for sp in s.spans or ()], s.options.to_payload()]
                  for s in recipe.steps],
        "output": recipe.output.model_dump(mode="json", exclude={"folder", "label"}),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def written_before(request: SeparationRequest, recipe: Recipe, request_ids: set[str]) -> JobResult | None:
    """The stems a run of these very requests already placed (the daemon stopped before it could journal
    "done"): found by the request ids in the manifests of the output folder."""
    folder = confined_folder(output_folder(request.source, request.project_dir, request.output_dir,
                                           recipe.output.folder), request.confined_to, create=False)
    if not request_ids or not folder.is_dir():
        return None
    for manifest_path in folder.glob(f"{glob.escape(source_part(request.source.name))} - *.sam.json"):  # this
        # source's (job_names starts every name so): cheap enough to look before every placing
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            ids = {step.get("request_id") for step in manifest.get("steps", [])}
            stems = {label: Path(entry["path"]) for label, entry in manifest.get("stems", {}).items()}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue
        if ids == request_ids and stems and all(path.is_file() for path in stems.values()):
            return JobResult(stems=stems, manifest=manifest_path, flags=list(manifest.get("flags", [])),
                             steps=[], estimated_cost=0.0, timings={})
    return None


def reuse_result(request: SeparationRequest, recipe: Recipe, earlier: JobView, service: str) -> JobResult | None:
    """Copy an earlier job's stems for `request`; None when they are gone or another service's (then the job
    runs for real)."""
    if not earlier.manifest or not Path(earlier.manifest).is_file():
        return None
    old_stems = {label: Path(path) for label, path in earlier.stems.items()}
    if not old_stems or not all(p.is_file() for p in old_stems.values()):
        return None
    written = Path(earlier.manifest).stat().st_mtime  # the manifest is written after the stems
    if any(p.stat().st_mtime > written + 1 for p in old_stems.values()):
        return None  # edited since: not the result the service gave, so run the job for real
    manifest = _read_manifest(Path(earlier.manifest))
    if manifest is None:
        return None  # unreadable: run the job for real rather than leave stems with no manifest
    if manifest.get("service") != service:
        return None  # another service's stems, or from before manifests said (maybe a stand-in's band split)
    folder = confined_folder(output_folder(request.source, request.project_dir, request.output_dir,
                                           recipe.output.folder), request.confined_to, create=True)
    extension = next(iter(old_stems.values())).suffix
    manifest["reused_from"] = earlier.manifest
    # the rest describes this request, not the earlier one (same bytes, so the source's sha256, format
    # and length stay true; its path and the request do not)
    manifest["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["source"] = {**manifest.get("source", {}), "path": str(request.source)}
    manifest["request"] = request.model_dump(mode="json", exclude={"source"})
    manifest["estimated_cost"] = {**manifest.get("estimated_cost", {}), "amount": 0.0}

    def manifest_for(finals: dict[str, Path]) -> dict[str, Any]:
        return {**manifest, "stems": {label: {**manifest["stems"].get(label, {}), "path": str(path)}
                                      for label, path in finals.items()}}

    temps: dict[str, Path] = {}
    try:
        check_room(folder, sum(old.stat().st_size for old in old_stems.values()) + 65_536)
        for label, old in old_stems.items():
            temps[label] = temp_path_for(folder / old.name)
            shutil.copyfile(old, temps[label])
        # stems and manifest as one unit, as a job's own: no copied stem is ever left without its manifest
        finals, manifest_path = place_unit(temps, lambda: job_names(
            folder, request.source.name, recipe.label, list(old_stems), extension, stem_set=recipe.is_stem_set,
            kind="audition" if request.audition is not None else ""), manifest_for)  # an audition keeps its name
    except OSError as exc:
        if (full := disk_error(exc, folder, "the output folder")) is not None:
            raise full from None
        raise OutputError(f"Cannot copy the earlier stems into {folder}: {exc.strerror or exc}.") from None
    finally:
        remove_quietly(*temps.values())
    return JobResult(stems=finals, manifest=manifest_path, flags=list(manifest.get("flags", [])), steps=[],
                     estimated_cost=0.0, timings={})


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stems"), dict) \
            or not isinstance(manifest.get("source", {}), dict):
        return None
    return manifest
