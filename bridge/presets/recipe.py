"""A request and the preset it names, turned into the steps a job runs (a stem set is several steps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from bridge.common.errors import InputError, PresetError
from bridge.common.options import OutputOptions, ServiceOptions, unwritable
from bridge.common.request import SeparationRequest, Span
from bridge.presets.files import (
    friendly_message,
)
from bridge.presets.schema import (
    RESIDUAL_OF_STEM_SET,
    Preset,
    label_problem,
    slug,
)

if TYPE_CHECKING:
    from bridge.presets.library import PresetLibrary

ADHOC_NAME = "prompt"


RESIDUAL_OF_PRESET = "residual"


@dataclass(frozen=True)
class Step:
    """One fal request."""

    label: str  # used in file names: "vocals", "drums"; for a single preset the recipe's label
    prompt: str | None
    spans: tuple[Span, ...] | None
    options: ServiceOptions


@dataclass(frozen=True)
class Recipe:
    """What the pipeline runs for one request: steps peeled in order, then the residual."""

    name: str  # preset name, or "prompt" for an ad-hoc prompt
    label: str  # for file names: output.label, the preset name, or a slug of the prompt
    steps: tuple[Step, ...]  # 1 for a plain preset; N for a stem set
    residual_label: str  # "residual" for a plain preset, "other" for a stem set
    output: OutputOptions

    @property
    def is_stem_set(self) -> bool:
        """Stems named by stem (`Song - dialogue.wav`, `Song - other.wav`), even for a set of one."""
        return self.residual_label == RESIDUAL_OF_STEM_SET




Model = TypeVar("Model", bound=BaseModel)


def _with_overrides(model: Model, overrides: Mapping[str, Any]) -> Model:
    if not overrides:
        return model
    try:
        return type(model).model_validate({**model.model_dump(), **overrides})
    except PydanticValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {friendly_message(error)}"
            for error in exc.errors()
        )
        raise InputError(
            f"An option in this request cannot be used: {details}.",
            "Change the value as described, or leave the option out to use the preset's.",
        ) from None


def recipe_from_preset(
    preset: Preset,
    service_overrides: Mapping[str, Any] | None = None,
    output_overrides: Mapping[str, Any] | None = None,
    spans: Sequence[Span] | None = None,
) -> Recipe:
    """The steps of a (library-resolved) preset, with a request's option overrides applied."""
    service_overrides = service_overrides or {}
    output = _checked_output(_with_overrides(preset.output, output_overrides or {}))
    label = output.label or slug(preset.name)
    if preset.stems is None:
        step_spans = tuple(spans or preset.spans or ()) or None
        step = Step(label, preset.prompt, step_spans, _with_overrides(preset.options, service_overrides))
        return Recipe(preset.name, label, (step,), RESIDUAL_OF_PRESET, output)
    if spans:
        raise InputError(
            f"Spans cannot be used with '{preset.name}', which splits the sound into several stems.",
            "Use a single-sound preset or a prompt together with the spans, or leave the spans out.",
        )
    steps: list[Step] = []
    for stem in preset.stems:
        if stem.prompt is None and stem.spans is None:
            raise PresetError(
                f"The stem '{stem.label}' of '{preset.name}' has no prompt: load it via a library."
            )
        stem_spans = tuple(stem.spans) if stem.spans else None
        steps.append(
            Step(stem.label, stem.prompt, stem_spans, _with_overrides(stem.options, service_overrides))
        )
    return Recipe(preset.name, label, tuple(steps), RESIDUAL_OF_STEM_SET, output)


def recipe_for(request: SeparationRequest, library: PresetLibrary) -> Recipe:
    """A preset name wins over a prompt; the request's options override the preset's."""
    try:
        service_overrides, output_overrides = request.split_options()
    except ValueError as exc:
        raise InputError(
            f"This request has an option sam-bridge does not know: {exc}.", "Check the spelling."
        ) from None
    if request.preset is not None:
        return recipe_from_preset(
            library.get(request.preset), service_overrides, output_overrides, request.spans
        )
    output = _checked_output(_with_overrides(OutputOptions.model_validate({}), output_overrides))
    label = output.label or (slug(request.prompt) if request.prompt else "spans")
    options = _with_overrides(ServiceOptions.model_validate({}), service_overrides)
    step = Step(label, request.prompt, tuple(request.spans) if request.spans else None, options)
    return Recipe(ADHOC_NAME, label, (step,), RESIDUAL_OF_PRESET, output)


def _checked_output(output: OutputOptions) -> OutputOptions:
    if output.label is not None and (problem := label_problem(output.label)):
        raise InputError(f"The label '{output.label}' cannot be used: it {problem}.", "Choose a plain word.")
    if unwritable_output := unwritable(output):
        field, why = unwritable_output
        raise InputError(f"The option {field} cannot be used: {why}.", "Check the spelling.")
    return output
