"""The options a separation takes: service options (sent to fal) and output options (ours).

Declared once here; presets, request files, OSC requests, the CLI and the README table all use these
models. Unknown keys are refused so a typo never silently does nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Acceleration(StrEnum):
    fast = "fast"
    balanced = "balanced"
    quality = "quality"


class OutputFormat(StrEnum):
    wav = "wav"
    mp3 = "mp3"


class ResidualMethod(StrEnum):
    complement = "complement"  # residual = source - target: nulls exactly against the source
    service = "service"  # the residual the service returned, conformed like the target


class ServiceOptions(BaseModel):
    """Model input of `fal-ai/sam-audio/separate` besides `audio_url` and `prompt`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predict_spans: bool = Field(False, description="let the model find where the sound occurs")
    reranking_candidates: int = Field(
        1, ge=1, le=8, description="candidates to generate and rank (more = better, slower, dearer)"
    )
    acceleration: Acceleration = Field(Acceleration.balanced, description="fast | balanced | quality")
    output_format: OutputFormat = Field(
        OutputFormat.wav, description="format the service returns (wav | mp3); stems are always conformed"
    )
    max_chunk_duration: float = Field(60.0, gt=0, le=600, description="seconds per chunk at the service")
    chunk_overlap: float = Field(5.0, ge=0, le=60, description="seconds of overlap between chunks")

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class OutputOptions(BaseModel):
    """How the stems are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = Field(None, max_length=60, description="word used in stem file names")
    format: str | None = Field(None, description="container override, e.g. WAV, FLAC, AIFF")
    subtype: str | None = Field(None, description="sample format override, e.g. PCM_24, FLOAT")
    residual: ResidualMethod = Field(ResidualMethod.complement, description="complement | service")
    folder: str = Field("Stems", description="output folder, relative to the project (or the source)")


def unwritable(output: OutputOptions) -> tuple[str, str] | None:
    """(field, why) when the stems' file type or sample format is not one sam-bridge can write: presets and
    requests both check it, so a typo is refused rather than quietly written as the source's format."""
    if output.format is None and output.subtype is None:
        return None
    import soundfile  # libsndfile (and numpy) only when there is something to check: `--help` stays quick

    formats = soundfile.available_formats()
    if output.format is not None and output.format.upper() not in formats:
        return "format", (f"'{output.format}' is not a file type sam-bridge can write; allowed: "
                          f"{', '.join(sorted(formats))}")
    if output.subtype is not None:
        subtypes = soundfile.available_subtypes(output.format.upper() if output.format else None)
        if output.subtype.upper() not in subtypes:
            where = f" for {output.format}" if output.format else ""
            return "subtype", (f"'{output.subtype}' is not a sample format{where}; allowed: "
                               f"{', '.join(sorted(subtypes))}")
    return None
