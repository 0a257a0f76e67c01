"""What a user writes (request files, presets, options, the config, CLI flags, OSC arguments) is checked
by pydantic models built on `UserModel`, and their errors are put in plain words here, once, for every
way in: pydantic's own wording ("Input should be less than or equal to 10000000" for a NaN) is for
programmers."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import ErrorDetails


def not_finite(value: Any) -> str:
    """The one wording for NaN and infinity, which compare false with every bound (so a range check alone
    lets them through, or reports the wrong bound)."""
    return f"should be a finite number, got {shown(value)}"


def _numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    return get_origin(annotation) in (Union, UnionType) and any(arg in (int, float) for arg in get_args(annotation))


class UserModel(BaseModel):
    """A model a user fills in: NaN/infinity are refused (allow_inf_nan=False), and so are true/false where
    a number is meant (pydantic would take `true` as 1: `reranking_candidates: true` paid for one)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _numeric(field.annotation):
            raise ValueError(f"should be a number, got {str(value).lower()}")
        return value


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict, _SHORT_REPR.maxstring = 2, 4, 4, 36


def shown(value: Any) -> str:
    text = _SHORT_REPR.repr(value)  # bounded: a value built from YAML aliases can be huge
    return text if len(text) <= 40 else text[:37] + "..."


def _bound(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plain_problem(error: ErrorDetails) -> str:
    """A pydantic error in words a musician reads: what is wrong and what is allowed (no field name)."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    # each wording made only when it is the one: the value may be huge (a YAML alias bomb), so none is
    # formatted in vain
    messages: dict[str, Callable[[], str]] = {
        "missing": lambda: "is required",
        "finite_number": lambda: not_finite(got),
        "greater_than_equal": lambda: f"must be at least {_bound(ctx.get('ge'))} (got {shown(got)})",
        "less_than_equal": lambda: f"must be at most {_bound(ctx.get('le'))} (got {shown(got)})",
        "greater_than": lambda: f"must be more than {_bound(ctx.get('gt'))} (got {shown(got)})",
        "less_than": lambda: f"must be less than {_bound(ctx.get('lt'))} (got {shown(got)})",
        "enum": lambda: f"must be one of {ctx.get('expected')} (got {shown(got)})",
        "literal_error": lambda: f"must be one of {ctx.get('expected')} (got {shown(got)})",
        "string_too_short": lambda: "must not be empty",
        "string_too_long": lambda: f"must be at most {ctx.get('max_length')} characters",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} entr(y/ies)",
        "too_long": lambda: f"must have at most {ctx.get('max_length')} entries (got {ctx.get('actual_length')})",
        "string_type": lambda: f"must be text (got {shown(got)}); put it in quotes",
        "bool_parsing": lambda: f"must be true or false (got {shown(got)})",
        "bool_type": lambda: f"must be true or false (got {shown(got)})",
        "int_parsing": lambda: f"must be a whole number (got {shown(got)})",
        "int_type": lambda: f"must be a whole number (got {shown(got)})",
        "int_from_float": lambda: f"must be a whole number (got {shown(got)})",
        "float_parsing": lambda: f"must be a number (got {shown(got)})",
        "float_type": lambda: f"must be a number (got {shown(got)})",
        "path_type": lambda: f"must be a path, written as text (got {shown(got)})",
        "list_type": lambda: f"must be a list, e.g. [a, b] or one `- item` per line (got {shown(got)})",
        "model_type": lambda: f"must be a block of `field: value` lines (got {shown(got)})",
        "model_attributes_type": lambda: f"must be a block of `field: value` lines (got {shown(got)})",
        "dict_type": lambda: f"must be a block of `field: value` lines (got {shown(got)})",
        "string_pattern_mismatch": lambda: (f"is not written as expected (got {shown(got)}; the form: "
                                            f"{ctx.get('pattern')})"),
        "extra_forbidden": lambda: "unknown field (check the spelling)",
    }
    if kind in messages:
        return messages[kind]()
    return str(error["msg"]).removeprefix("Value error, ")


def field_problem(error: ErrorDetails) -> str:
    """`field: what is wrong` (the field dotted, as the user wrote it)."""
    field = ".".join(str(part) for part in error["loc"])
    return f"{field}: {plain_problem(error)}" if field else plain_problem(error)
