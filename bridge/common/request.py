"""One request model for every way in (CLI, request file, OSC, hot folder).

A way in only builds a `SeparationRequest` and hands it to the job engine; the same model is the
request-file schema (documented in the README from these field descriptions).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from bridge.common.options import OutputOptions, ServiceOptions, folder_problem
from bridge.common.path_policy import PathPolicy
from bridge.common.plain import UserModel, plain_problem, shown


class Origin(StrEnum):
    cli = "cli"
    request_file = "request-file"
    osc = "osc"
    hot_folder = "hot-folder"


MAX_SECONDS = 1e7  # 115 days: beyond any audio file, and far from where seconds × rate overflows


# START-END[:include|exclude] in seconds, plain decimal numbers, spaces allowed around each part
_SPAN_TEXT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*(?::\s*(include|exclude)\s*)?",
                        re.ASCII)


class Span(UserModel):
    """A time span in seconds into the source (the service's AudioTimeSpan)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: float = Field(ge=0, le=MAX_SECONDS)
    end: float = Field(gt=0, le=MAX_SECONDS)
    include: bool = True

    @model_validator(mode="before")
    @classmethod
    def _text_or_fields(cls, value: Any) -> Any:
        # A request file may write a span as the CLI and OSC do ("2-9.5", "4-5:exclude"), through the same
        # parser, so a script author can copy either form.
        if isinstance(value, str):
            return cls.parse(value).model_dump()
        if not isinstance(value, dict | Span):
            raise ValueError(f"give a span as text, e.g. \"12.5-20\" or \"12.5-20:exclude\", or as "
                             f"{{\"start\": 12.5, \"end\": 20}} (got {shown(value)})")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end <= self.start:
            raise ValueError(f"span end ({self.end}) must be after its start ({self.start})")
        return self

    @classmethod
    def parse(cls, text: str) -> Span:
        """`12.5-20` (a span to keep) or `12.5-20:exclude` (a span to leave out), in seconds: how the CLI's
        --span and OSC's spans argument write one. ValueError says what is wrong, in words."""
        written = _SPAN_TEXT.fullmatch(text)
        if written is None:  # float() alone took "1_000", other scripts' digits and "nan"
            raise ValueError(f"{text!r}: give START-END in seconds, e.g. 12.5-20 (or 12.5-20:exclude)")
        start, end, kind = written.groups()
        try:
            return cls(start=float(start), end=float(end), include=kind != "exclude")
        except ValueError as exc:  # pydantic's ValidationError is one: its first message, in words
            errors = getattr(exc, "errors", None)
            detail = plain_problem(errors()[0]) if callable(errors) else str(exc)
            raise ValueError(f"{text!r}: {detail}") from None


# Set by the way in itself, never by whoever writes a request: not in the documented schema.
INTERNAL_REQUEST_FIELDS = frozenset({"origin", "idempotency_key", "confined_to"})


class SeparationRequest(UserModel):
    """What to separate, how, and where the stems go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path = Field(description="audio file to separate (absolute, or relative to the request)")
    preset: str | None = Field(None, description="preset name (wins over prompt when both are given)")
    prompt: str | None = Field(None, max_length=500, description="ad-hoc description of the sound to isolate")
    project_dir: Path | None = Field(None, description="project folder; stems go to its Stems/ folder")
    output_dir: Path | None = Field(None, description="exact folder for the stems (overrides project_dir)")
    start: float | None = Field(None, ge=0, le=MAX_SECONDS, description="seconds into the source where the part begins")
    length: float | None = Field(None, gt=0, le=MAX_SECONDS, description="seconds of source to separate from start")
    spans: list[Span] | None = Field(
        None, description="spans to separate instead of the prompt's whole part (span-separate), in seconds: each "
        "as `--span` writes it, `\"12.5-20\"` (keep) or `\"30-35:exclude\"` (leave out), or as "
        "`{\"start\": 12.5, \"end\": 20, \"include\": true}`; e.g. `\"spans\": [\"12.5-20\", \"30-35:exclude\"]`")
    audition: float | None = Field(
        None, gt=0, le=600, description="audition: separate only the loudest window of this many seconds of the "
        "part (with `length`, inside start..start+length; with `start` alone, the first from `start`); "
        "stems named `.audition.target`/`.audition.residual`")
    estimate_only: bool = Field(False, description="send nothing: answer with the seconds, requests and estimated "
                                "cost")
    tag: str = Field("", max_length=200, description="caller's own id, echoed in every reply")
    options: dict[str, Any] = Field(default_factory=dict, description="service/output option overrides")
    origin: Origin = Field(Origin.cli, description="which way in made this request")
    idempotency_key: str | None = Field(
        None, description="a way in's own key: a second request with the same key is not run again"
    )
    confined_to: PathPolicy | None = Field(
        None, description="the allowed folders of an untrusted way in, checked by the engine at use; "
        "None: a trusted way in (CLI, a private requests folder)"
    )

    @field_validator("source", mode="before")
    @classmethod
    def _source_is_a_path(cls, value: Any) -> Any:
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ValueError("give the path of an audio file")
        return value

    @field_validator("prompt", "preset")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value or None

    @field_validator("options")
    @classmethod
    def _folder_inside(cls, options: dict[str, Any]) -> dict[str, Any]:
        folder = options.get("folder")
        if isinstance(folder, str) and (problem := folder_problem(folder)):
            raise ValueError(f"options.folder {problem}")
        return options

    @model_validator(mode="after")
    def _needs_what(self) -> SeparationRequest:
        if self.preset is None and self.prompt is None and not self.spans:
            raise ValueError("give a preset name or a prompt (a text describing the sound to isolate)")
        if self.length is not None and self.start is None:
            object.__setattr__(self, "start", 0.0)
        return self

    def split_options(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split `options` into service-option and output-option overrides (unknown keys raise)."""
        service_keys = set(ServiceOptions.model_fields)
        output_keys = set(OutputOptions.model_fields)
        unknown = set(self.options) - service_keys - output_keys
        if unknown:
            allowed = ", ".join(sorted(service_keys | output_keys))
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
        service = {k: v for k, v in self.options.items() if k in service_keys}
        output = {k: v for k, v in self.options.items() if k in output_keys}
        return service, output
