"""`<name>.sam.json`: what was separated, how, and how well the stems line up. Written last, atomically:
the signal DAW scripts wait for. Schema documented in the README (`MANIFEST_FIELDS` below is that table)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import __version__
from bridge.common.flags import flags_in_words

if TYPE_CHECKING:
    from bridge.audio.conform import ConformReport
    from bridge.audio.source import SourceInfo
    from bridge.common.request import SeparationRequest
    from bridge.presets.recipe import Recipe

SCHEMA_VERSION = 1

MANIFEST_FIELDS: dict[str, str] = {
    "schema": "manifest schema version (1)",
    "tool": "`sam-bridge <version>`",
    "created_at": "ISO-8601 UTC time the stems were written",
    "source": "`path`, `sha256` (of its audio: a WAV/RF64/W64/AIFF file's format and audio chunks, another "
              "format's whole file), `format`, `subtype`, `samplerate`, `channels`, `frames` of the source file",
    "part": "`start_frame`, `frames`, `start_seconds`: the part of the source the stems cover",
    "service": "what made the stems: `stand-in` (the built-in stand-in: a band split, not SAM Audio), else the "
    "app and the host it was asked at, e.g. `fal-ai/sam-audio@queue.fal.run`; dedupe reuses only stems of the "
    "service in use",
    "preset": "preset name, or `prompt` for an ad-hoc prompt",
    "label": "the word used in the file names",
    "steps": "one entry per service request: `label`, `prompt`, `options`, `request_id`, `alignment` "
    "(`offset_samples`, `drift_samples`, `correlation`, `method`), `projection`, `null_test` (`exact`: target + "
    "residual == source to the last bit; `measured`: see `null_test_dbfs`, the peak difference in dBFS; "
    "`not-finite`: a NaN or infinite sample, the worst result), `null_test_dbfs`, `flags`, "
    "`quality` (`source_dbfs`, `target_dbfs`, `residual_dbfs`, `explained`, `correlation`: what the quality flags "
    "come from), "
    "`estimated_cost`, `upload` (`content_type`, `bytes`, `source_file_as_is`: what was sent; null when the "
    "step was resumed), `service_log_tail`",
    "stems": "label → `path`, `format`, `subtype`, `samplerate`, `channels`, `frames`",
    "format_reason": "why the stems' container or sample format is not the source's (e.g. a lossy source gives "
    "WAV), else null",
    "residual_method": "`complement` (source − target) or `service`",
    "flags": flags_in_words(meanings=True) + " (see [Quality flags](#quality-flags))",
    "timings": "seconds per stage (`prepare`, `upload`, `service`, `download`, `conform`, `write`, `total`)",
    "estimated_cost": "`amount` and `currency`, from the configured price table (0 on a stand-in)",
    "reused_from": "manifest of an earlier identical job whose stems were reused (dedupe), else null",
    "request": "the request as received (origin, tag, options, start/length)",
}


@dataclass
class StepRecord:
    """One service request of a job, as the pipeline saw it and the manifest records it."""

    label: str
    prompt: str | None
    request_id: str | None = None
    report: ConformReport | None = None
    seconds: float = 0.0
    estimated_cost: float = 0.0
    service_logs: list[str] = field(default_factory=list)
    upload: dict[str, object] | None = None  # what was sent: content type, bytes, the source file as is?


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def null_test_verdict(peak_dbfs: float) -> str:
    """−inf is an exact null; +inf or NaN a sample that was not a number, the worst result: JSON has no
    infinities, so `null_test_dbfs` is null for both and this says which."""
    if peak_dbfs == -math.inf:
        return "exact"
    return "measured" if math.isfinite(peak_dbfs) else "not-finite"


def build_manifest(
    *,
    request: SeparationRequest,
    recipe: Recipe,
    source: SourceInfo,
    source_hash: str,
    start_frame: int,
    frames: int,
    stems: Mapping[str, Path],
    steps: Sequence[StepRecord],
    flags: Sequence[str],
    timings: Mapping[str, float],
    estimated_cost: float,
    currency: str = "USD",
    reused_from: str | None = None,
    service: str,
) -> dict[str, Any]:
    last = steps[-1].report if steps else None
    return {
        "schema": SCHEMA_VERSION,
        "tool": f"sam-bridge {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {
            "path": str(source.path), "sha256": source_hash, "format": source.format, "subtype": source.subtype,
            "samplerate": source.samplerate, "channels": source.channels, "frames": source.frames,
        },
        "part": {"start_frame": start_frame, "frames": frames,
                 "start_seconds": round(start_frame / source.samplerate, 6)},
        "service": service,
        "preset": recipe.name,
        "label": recipe.label,
        "steps": [
            {
                "label": step.label,
                "prompt": step.prompt,
                "options": recipe.steps[i].options.to_payload() if i < len(recipe.steps) else {},
                "request_id": step.request_id,
                "alignment": None if step.report is None else {
                    "offset_samples": step.report.offset_samples,
                    "drift_samples": step.report.drift_samples,
                    "correlation": round(step.report.correlation, 4),
                    "method": step.report.method,
                },
                "projection": step.report.projection if step.report else None,
                "null_test": null_test_verdict(step.report.null_test_dbfs) if step.report else None,
                "null_test_dbfs": _finite(step.report.null_test_dbfs) if step.report else None,
                "flags": list(step.report.flags) if step.report else [],
                "quality": step.report.quality.as_dict() if step.report and step.report.quality else None,
                "estimated_cost": step.estimated_cost,
                "upload": step.upload,
                "service_log_tail": step.service_logs[-5:],
            }
            for i, step in enumerate(steps)
        ],
        "stems": {
            label: {
                "path": str(path),
                "format": last.out_format if last else None,
                "subtype": last.out_subtype if last else None,
                "samplerate": source.samplerate,
                "channels": source.channels,
                "frames": frames,
            }
            for label, path in stems.items()
        },
        "format_reason": last.format_reason if last else None,
        "residual_method": recipe.output.residual.value,
        "flags": list(flags),
        "timings": dict(timings),
        "estimated_cost": {"amount": estimated_cost, "currency": currency},
        "reused_from": reused_from,
        "request": request.model_dump(mode="json", exclude={"source"}),
    }


def part_seconds(manifest_path: Path) -> tuple[float, float] | None:
    """(start, length) in seconds of the source a written manifest's stems cover (its `part`), so that a
    DAW can place an audition's window; None when the manifest cannot say."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        part, rate = manifest["part"], float(manifest["source"]["samplerate"])
        start, length = part["start_frame"] / rate, part["frames"] / rate
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    return (start, length) if math.isfinite(start) and math.isfinite(length) and rate > 0 else None
