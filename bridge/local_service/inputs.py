"""Model input of the two endpoints, validated at submit the way fal (FastAPI + pydantic) does it.

Errors come back as fal's 422 body: `{"detail": [{"loc": ["body", field, ...], "msg", "type"}]}`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge.local_service.storage import FileStore, StoredFile

ENDPOINTS = ("separate", "span-separate")
_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)


class _CommonInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audio_url: str
    predict_spans: bool = False
    reranking_candidates: int = Field(1, ge=1)
    acceleration: Literal["fast", "balanced", "quality"] = "balanced"
    max_chunk_duration: float = Field(60.0, gt=0)
    chunk_overlap: float = Field(5.0, ge=0)
    output_format: Literal["wav", "mp3"] = "wav"


class SeparateInput(_CommonInput):
    prompt: str = Field(min_length=1)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must describe the sound to isolate")
        return value


class TimeSpan(BaseModel):
    model_config = ConfigDict(extra="ignore")

    start: float = Field(ge=0)
    end: float = Field(gt=0)
    include: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> TimeSpan:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class SpanSeparateInput(_CommonInput):
    prompt: str | None = None
    spans: list[TimeSpan] = Field(min_length=1)
    trim_to_span: bool = False
    use_sound_activity_ranking: bool = False


ModelInput = SeparateInput | SpanSeparateInput


class InputRejected(Exception):
    """Answered with 422 and `detail` (a list in fal's shape)."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_input(endpoint: str, body: bytes) -> ModelInput:
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        problem = {"loc": ["body"], "msg": f"JSON decode error: {exc}", "type": "json_invalid"}
        raise InputRejected([problem]) from None
    model: type[ModelInput] = SeparateInput if endpoint == "separate" else SpanSeparateInput
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise InputRejected([{"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
                             for error in errors]) from None


@dataclass(frozen=True)
class AudioSource:
    """Where a job reads its audio from, or why it cannot (the job then fails with `problem`)."""

    sha256: str
    path: Path | None
    problem: str | None = None
    stored: StoredFile | None = None  # an uploaded file: it may expire before the job starts
    temporary: bool = False  # a decoded data URI, removed when the job ends


def resolve_audio(audio_url: str, store: FileStore) -> AudioSource:
    """Find the audio for `audio_url` now (submit time), so the submit is counted by audio content.

    Only data URIs and files this service issued are read: a fake must never fetch the outside world.
    """
    match = _DATA_URI.match(audio_url)
    if match:
        if ";base64" not in match["params"].lower():
            return _unreadable(audio_url, "Could not decode audio: the data URI is not base64-encoded")
        try:
            data = base64.b64decode(audio_url[match.end():], validate=False)
        except (binascii.Error, ValueError) as exc:
            return _unreadable(audio_url, f"Could not decode audio: invalid base64 in the data URI ({exc})")
        path = store.work_path(".input")
        with open(path, "xb") as out:
            out.write(data)
        return AudioSource(hashlib.sha256(data).hexdigest(), path, temporary=True)
    file_id = store.file_id_in(audio_url)
    if file_id is None:
        shown = audio_url if len(audio_url) <= 120 else audio_url[:117] + "..."
        return _unreadable(audio_url, f"Could not download the file at audio_url ({shown}): the local "
                           "service only reads data URIs and files uploaded to it")
    record = store.lookup(file_id)
    gone = "Could not download the file at audio_url: 404 Not Found (the file link has expired or never existed)"
    if record is None:
        return _unreadable(audio_url, gone)
    try:
        return AudioSource(store.file_hash(record), record.path, stored=record)
    except FileNotFoundError:  # deleted between the lookup and the read (its time came, or the store was full)
        return _unreadable(audio_url, gone)


def _unreadable(audio_url: str, problem: str) -> AudioSource:
    # Counted by the URL text, since there is no audio to hash.
    return AudioSource(hashlib.sha256(audio_url.encode()).hexdigest(), None, problem)
