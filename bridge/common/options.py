"""The options a separation takes: service options (sent to fal) and output options (ours).

Declared once here; presets, request files, OSC requests, the CLI and the README table all use these
models. Unknown keys are refused so a typo never silently does nothing.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.common.plain import UserModel


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


class ServiceOptions(UserModel):
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
    # Not on fal's own model page (only in a schema generated from fal's): sent only when set, so a strict
    # model never meets a field it does not know; unset, the service's default applies (60 s and 5 s).
    max_chunk_duration: float | None = Field(
        None, gt=0, le=600, description="seconds per chunk at the service (sent only when set; fal: 60)")
    chunk_overlap: float | None = Field(
        None, ge=0, le=60, description="seconds of overlap between chunks (sent only when set; fal: 5)")

    def to_payload(self) -> dict[str, Any]:
        """The model input fields: the seed page's always, the chunk fields only when a user set them."""
        return self.model_dump(mode="json", exclude_none=True)


# CLI flags whose name is not the field's (`--candidates` is shorter); every other option's flag is its
# field name with dashes. Every option of both models has a flag: `option_flags()` makes them all.
FLAG_NAMES = {"reranking_candidates": "--candidates"}


def option_models() -> tuple[type[BaseModel], ...]:
    return (ServiceOptions, OutputOptions)


def flag_for(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def option_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """(field, flag, argparse keywords) for every service and output option: the CLI adds them all, so an
    option declared here cannot be missing from the command line."""
    flags: list[tuple[str, str, dict[str, Any]]] = []
    for model in option_models():
        for name, field in model.model_fields.items():
            kwargs: dict[str, Any] = {"dest": name, "help": field.description, "default": None}
            annotation = field.annotation
            choices = [member.value for member in annotation] if isinstance(annotation, type) and issubclass(
                annotation, StrEnum) else None
            if annotation is bool:
                kwargs.update(action="store_const", const=True)
            elif choices:
                kwargs["choices"] = choices
            elif annotation is int:
                kwargs["type"] = int
            elif annotation is float:
                kwargs["type"] = float
            if name in ("format", "subtype"):  # written upper case by libsndfile; any case is fine to type
                kwargs.update(type=str.upper, metavar=name.upper())
            flags.append((name, flag_for(name), kwargs))
    return flags


def parse_option_text(text: str) -> dict[str, Any]:
    """`key=value key=value` (OSC's `options` argument): values as JSON where they parse (numbers, true,
    false), else text; keys checked against the declared options."""
    import json

    known = {name for model in option_models() for name in model.model_fields}
    options: dict[str, Any] = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"options: {item!r} is not key=value")
        if key not in known:
            raise ValueError(f"options: unknown option {key!r}; allowed: {', '.join(sorted(known))}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


class OutputOptions(UserModel):
    """How the stems are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = Field(None, max_length=60, description="word used in stem file names")
    format: str | None = Field(None, description="container override, e.g. WAV, FLAC, AIFF")
    subtype: str | None = Field(None, description="sample format override, e.g. PCM_24, FLOAT")
    residual: ResidualMethod = Field(ResidualMethod.complement, description="complement | service")
    folder: str = Field("Stems", description="output folder, relative to the project (or the source)")

    @field_validator("folder")
    @classmethod
    def _inside(cls, folder: str) -> str:
        if problem := folder_problem(folder):
            raise ValueError(problem)
        return folder


def folder_problem(folder: str) -> str | None:
    """Why an `output.folder`/`options.folder` could lead out of the project (None: it cannot). Presets
    travel with shared projects and requests come from other programs: a folder is always relative and
    never climbs (`..`)."""
    if PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).is_absolute() or ":" in folder \
            or folder.startswith(("/", "\\", "~")):
        return f"must be a folder relative to the project, e.g. 'Stems' (got '{folder}')"
    if ".." in re.split(r"[/\\]", folder):
        return f"must not climb out of the project with '..' (got '{folder}')"
    if "\x00" in folder or not folder.strip():
        return "must name a folder, e.g. 'Stems'"
    return None


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
