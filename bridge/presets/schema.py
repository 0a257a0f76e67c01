"""What a preset may hold: the pydantic schema of preset files, and the rules names and labels follow.

File format (YAML, UTF-8): a file holds either ONE preset (a mapping with `name:` at the top) or
SEVERAL under a top-level `presets:` list. See `EXAMPLE_PRESET_FILE` for every field, commented.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Self

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from bridge.common.options import OutputOptions, ServiceOptions, unwritable
from bridge.common.plain import UserModel
from bridge.common.request import Span
from bridge.common.stems import label_part

EXAMPLE_PRESET_FILE = """\
# A sam-bridge preset file (YAML). Put it in your presets folder:
#   your config folder/presets/        (`sam-bridge presets list` shows where), or
#   <project>/sam-bridge/presets/      (travels with the project; Live: beside the .als)
# A preset there overrides a built-in preset of the same name. Check a file with
#   sam-bridge presets check my-presets.yaml
# A file holds ONE preset (write its fields at the top level) or SEVERAL under `presets:` as here.
presets:
  - name: lead-vocal                # what you pick in the DAW / on the command line
    description: Lead singer only, best quality
    prompt: lead vocal singing      # short, lowercase description of the sound ("dog barking")
    tags: [music, vocals]           # free words, used to group presets in lists
    options:                        # sent to the separation service; all optional
      acceleration: quality         # fast | balanced | quality
      reranking_candidates: 2       # 1-8: more candidates = better, slower, dearer
      predict_spans: false          # true: let the model find where the sound occurs (short events)
      output_format: wav            # wav | mp3 (what the service returns; stems are always conformed)
      max_chunk_duration: 60        # seconds per chunk at the service (long audio is chunked)
      chunk_overlap: 5              # seconds of overlap between chunks
    output:                         # how stems are written; all optional
      label: lead                   # word in the stem file names (default: the preset name)
      format: FLAC                  # file type override (default: same as the source)
      subtype: PCM_24               # sample format override (default: same as the source)
      residual: complement          # complement (source minus target, nulls exactly) | service
      folder: Stems                 # folder relative to the project (or beside the source)

  - name: my-band-split             # a stem set: each stem is peeled off what is left, in order;
    description: Vocals, drums, bass and the rest   # the final residual is written as "other"
    options: {acceleration: fast}   # applies to every stem (a stem's own options win)
    stems:
      - vocals                      # the name of another preset: its prompt and options
      - drums
      - label: bass                 # or an inline stem with its own prompt and options
        prompt: bass guitar
        options: {reranking_candidates: 2}
"""

# Characters no file name may hold on Windows (a superset of macOS and Linux).
_UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
RESIDUAL_OF_STEM_SET = "other"
MAX_STEMS = 12


def slug(text: str, max_len: int = 40) -> str:
    """Lowercase words joined by '-', safe in file names everywhere; letters of any script are kept."""
    text = unicodedata.normalize("NFC", text).lower()
    words = re.findall(r"[^\W_]+(?:[_'][^\W_]+)*", text)  # letters/digits, keeping "hi_hat", "dog's"
    result = "-".join(word.replace("'", "") for word in words)[:max_len].strip("-")
    if not result:
        return "sound"
    return f"{result}-sound" if result in _WINDOWS_RESERVED else result


def label_problem(label: str) -> str | None:
    """Why `label` cannot be used in a stem file name, or None when it can."""
    if not label.strip():
        return "must not be empty"
    if _UNSAFE_CHARS.search(label) or "." in label:
        return 'is used in file names: use letters, digits, spaces, "-" or "_" (no . / \\ : * ? " < > |)'
    if label != label.strip():
        return "must not start or end with a space"
    if label.lower() in _WINDOWS_RESERVED:
        return "is a reserved file name on Windows; choose another word"
    return None


def _explicit(options: ServiceOptions) -> dict[str, Any]:
    """The options a file actually wrote down (not the defaults), so they can override others."""
    return {key: getattr(options, key) for key in options.model_fields_set}


def merge_options(base: ServiceOptions, *overrides: ServiceOptions) -> ServiceOptions:
    """`base` with every option explicitly set in `overrides` applied, later ones winning."""
    values = base.model_dump()
    for override in overrides:
        values.update(_explicit(override))
    return ServiceOptions.model_validate(values)


def _clean_prompt(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    if not value:
        raise PydanticCustomError(
            "empty_prompt", "must not be empty: describe the sound in a few words, e.g. 'dog barking'"
        )
    return value


class StemSpec(UserModel):
    """One stem of a stem set: a prompt (or spans) to peel off what is left of the source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(max_length=60, description="word used in this stem's file name")
    prompt: str | None = Field(None, max_length=500, description="the sound to isolate")
    spans: list[Span] | None = Field(None, description="where the sound occurs (span-separate)")
    options: ServiceOptions = ServiceOptions.model_validate({})
    preset: str | None = Field(None, description="take prompt and options from this preset")
    line: int | None = Field(None, description="line of the file where the stem is (set by the loader)")

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        # `- vocals` names another preset; a label defaults to that name or to the prompt's words.
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and "label" not in data:
            source = data.get("preset") or data.get("prompt")
            if isinstance(source, str) and source.strip():
                data = {**data, "label": slug(source)}
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        return _clean_prompt(value)

    @field_validator("label")
    @classmethod
    def _safe_label(cls, value: str) -> str:
        problem = label_problem(value)
        if problem:
            raise PydanticCustomError("bad_label", problem)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.preset is not None and (self.prompt is not None or self.spans is not None):
            raise PydanticCustomError(
                "stem_conflict", "a stem names a preset OR gives its own prompt/spans, not both"
            )
        if self.preset is None and self.prompt is None and not self.spans:
            raise PydanticCustomError(
                "stem_empty", "a stem needs a preset name, or a prompt (the sound to isolate)"
            )
        return self


class Preset(UserModel):
    """A named recipe: one prompt (or spans), or a stem set; plus service and output options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=60, description="the name users pick")
    description: str = Field("", max_length=300)
    prompt: str | None = Field(None, max_length=500, description="the sound to isolate")
    spans: list[Span] | None = Field(None, min_length=1, description="where the sound occurs")
    stems: list[StemSpec] | None = Field(
        None, min_length=1, max_length=MAX_STEMS, description="prompts peeled one after another"
    )
    options: ServiceOptions = ServiceOptions.model_validate({})
    output: OutputOptions = OutputOptions.model_validate({})
    tags: list[str] = Field(default_factory=list)
    origin: Path | None = Field(None, description="file the preset came from (set by the loader)")
    line: int | None = Field(None, description="line of that file where it starts (set by the loader)")

    @field_validator("name")
    @classmethod
    def _usable_name(cls, value: str) -> str:
        # Names become hot-folder subfolders and stem file names: the same rules as labels apply.
        value = value.strip()
        if not re.search(r"[^\W_]", value):
            raise PydanticCustomError("bad_name", "must contain letters or digits, e.g. 'vocals'")
        if problem := label_problem(value):
            raise PydanticCustomError("bad_name", problem)
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        return _clean_prompt(value)

    @field_validator("stems")
    @classmethod
    def _distinct_stems(cls, stems: list[StemSpec] | None, info: ValidationInfo) -> list[StemSpec] | None:
        if stems is None:
            return None
        if info.data.get("prompt") is not None or info.data.get("spans") is not None:
            raise PydanticCustomError(
                "stems_conflict", "a stem set takes its prompts from its stems: remove `prompt`/`spans`"
            )
        seen: set[str] = set()
        named: dict[str, str] = {}  # each stem's file name part (casefolded: macOS and Windows ignore case)
        for index, stem in enumerate(stems):
            folded = stem.label.casefold()
            if folded == RESIDUAL_OF_STEM_SET:
                raise PydanticCustomError(
                    "reserved_label",
                    "the label 'other' is kept for what is left after the stems",
                    {"at": (index, "label")},
                )
            if folded in seen:
                raise PydanticCustomError(
                    "duplicate_label",
                    "two stems have the label '{label}': each needs its own",
                    {"label": stem.label, "at": (index, "label")},
                )
            seen.add(folded)
            name = label_part(stem.label)
            if (other := named.get(name.casefold())) is not None:
                raise PydanticCustomError(
                    "same_file_name",
                    "the stems '{other}' and '{label}' would be written to the same file ('… - {name}.wav'): "
                    "make them differ within their first 40 characters",
                    {"other": other, "label": stem.label, "name": name, "at": (index, "label")},
                )
            named[name.casefold()] = stem.label
        return stems

    @field_validator("output")
    @classmethod
    def _writable_output(cls, output: OutputOptions) -> OutputOptions:
        if output.label is not None and (problem := label_problem(output.label)):
            raise PydanticCustomError("bad_label", problem, {"at": ("label",)})
        if unwritable_output := unwritable(output):
            field, why = unwritable_output
            raise PydanticCustomError(f"bad_{field}", "{why}", {"why": why, "at": (field,)})
        folder = output.folder
        if PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).is_absolute() or ":" in folder:
            raise PydanticCustomError(
                "absolute_folder",
                "must be a folder relative to the project, e.g. 'Stems' (got '{got}')",
                {"got": folder, "at": ("folder",)},
            )
        return output

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, tags: list[str]) -> list[str]:
        return [tag.strip() for tag in tags if tag.strip()]

    @model_validator(mode="after")
    def _has_something_to_isolate(self) -> Self:
        if self.prompt is None and self.spans is None and self.stems is None:
            raise PydanticCustomError(
                "nothing_to_isolate",
                "a preset needs a `prompt` (the sound to isolate, e.g. 'a man speaking'), `spans` or `stems`",
                {"at": ("prompt",)},
            )
        return self

    @property
    def stem_labels(self) -> list[str] | None:
        """What a stem set writes: one stem per entry, then "other" (what is left); None for a plain preset."""
        return None if self.stems is None else [stem.label for stem in self.stems] + [RESIDUAL_OF_STEM_SET]

    @property
    def is_stem_set(self) -> bool:
        return self.stems is not None


# Filled in by the loader, never written in a file.
LOADER_FIELDS = ("origin", "line")


def name_key(name: str) -> str:
    """How names are compared: 'Dialogue Cleanup', 'dialogue_cleanup' and 'dialogue-cleanup' are one."""
    return "-".join(re.findall(r"[^\W_]+", unicodedata.normalize("NFC", name).casefold()))
