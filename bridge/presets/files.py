"""Reading preset files: every mistake is reported as `file:line: field: message`.

Line numbers come from YAML's node marks: the file is composed into a node tree, each key and list
item's line is recorded by its path, and pydantic's error locations are mapped back onto those paths.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from bridge.common.errors import PresetError
from bridge.common.plain import plain_problem
from bridge.presets.schema import LOADER_FIELDS, Preset, StemSpec, name_key


@dataclass(frozen=True)
class PresetProblem:
    file: Path
    line: int | None
    field: str
    message: str
    preset: str | None = None  # the preset it concerns, when its name could be read

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.field}: {self.message}"


class PresetFileError(PresetError):
    """One or more problems in preset files; `problems` lists each with its file and line."""

    def __init__(self, problems: Sequence[PresetProblem], preset: str | None = None) -> None:
        self.problems = tuple(problems)
        files = ", ".join(sorted({problem.file.name for problem in self.problems}))
        what = "a problem" if len(self.problems) == 1 else f"{len(self.problems)} problems"
        headline = (
            f"The preset '{preset}' cannot be used: its file {files} has {what}:"
            if preset
            else f"Preset file {files} has {what}:"
        )
        listing = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(
            f"{headline}\n{listing}",
            "Fix the line(s) shown in a text editor and save the file; "
            "`sam-bridge presets check FILE` checks it again.",
        )


LineMap = dict[tuple[Any, ...], int]


# `name: X` at the start of a line or of a list item: stems have labels, so only presets have names
_NAME_LINE = re.compile(r"""^[ \t]*(?:-[ \t]+)?name[ \t]*:[ \t]*(["']?)(.+?)\1[ \t]*(?:#.*)?$""", re.MULTILINE)


def names_written_in(path: Path) -> list[str]:
    """The preset names a file that cannot be read as YAML seems to define (its `name:` lines), so that
    asking for one of them gets the file's problems rather than being taken as a prompt."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError:
        return []
    return [match.group(2).strip() for match in _NAME_LINE.finditer(text) if match.group(2).strip()]


def read_preset_file(path: Path) -> tuple[list[Preset], list[PresetProblem]]:
    """Every valid preset in `path` and every problem found; never raises for a bad file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return [], [PresetProblem(path, None, "file", f"cannot be read ({reason})")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        return [], [
            PresetProblem(path, bad_line, "file", "is not UTF-8 text; save it as UTF-8 in your editor")
        ]
    try:
        root, data = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = exc.problem or exc.context or "syntax error"
        if exc.problem and exc.context and exc.context_mark:  # e.g. where an unclosed bracket opened
            reason += f", {exc.context} on line {exc.context_mark.line + 1}"
        message = f"is not valid YAML ({reason}); check the indentation, and quote text holding ': ' or ' #'"
        return [], [PresetProblem(path, line, "yaml", message)]
    except yaml.YAMLError as exc:
        return [], [PresetProblem(path, None, "yaml", f"is not valid YAML ({exc})")]
    if root is None:
        return [], [PresetProblem(path, 1, "file", "is empty; a preset needs at least `name:` and `prompt:`")]
    lines: LineMap = {}
    twice = _map_lines(path, root, (), lines)
    items, prefix, problems = _preset_items(path, data, lines)
    presets: list[Preset] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        where = (*prefix, index) if prefix else ()
        preset, item_problems = _validate_item(path, item, where, lines)
        # A key written twice makes the preset ambiguous (YAML silently keeps the last one).
        mine = [(at, problem) for at, problem in twice if at[: len(where)] == where]
        twice = [entry for entry in twice if entry not in mine]
        name = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else None
        problems += [replace(problem, preset=name) for _, problem in mine] + item_problems
        if preset is None or mine:
            continue
        key = name_key(preset.name)
        if key in seen:
            problems.append(
                PresetProblem(
                    path,
                    lines.get((*where, "name"), preset.line),
                    "name",
                    f"'{preset.name}' is already defined on line {seen[key]} of this file; names must differ",
                    preset.name,
                )
            )
            continue
        seen[key] = preset.line or 0
        presets.append(preset)
    problems += [problem for _, problem in twice]
    return presets, sorted(problems, key=lambda problem: problem.line or 0)


def load_preset_file(path: Path) -> list[Preset]:
    """The presets in `path`; PresetFileError (file:line: field: message) on any problem."""
    presets, problems = read_preset_file(path)
    if problems:
        raise PresetFileError(problems)
    return presets


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _map_lines(
    path: Path, node: yaml.Node, where: tuple[Any, ...], lines: LineMap, visited: set[int] | None = None
) -> list[tuple[tuple[Any, ...], PresetProblem]]:
    """Record the line of every key and list item; report keys written twice (YAML keeps the last)."""
    lines.setdefault(where, node.start_mark.line + 1)
    problems: list[tuple[tuple[Any, ...], PresetProblem]] = []
    # An alias reuses its anchor's node: walk each node once, or a self-referencing or
    # "billion laughs" file would never finish (its nested fields then report the alias's line).
    visited = set() if visited is None else visited
    if id(node) in visited:
        return problems
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    (
                        where,
                        PresetProblem(
                            path, line, _field_text(_in_preset((*where, key))), "is written twice; keep one"
                        ),
                    )
                )
            seen.add(key)
            lines[(*where, key)] = line
            problems += _map_lines(path, value_node, (*where, key), lines, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _map_lines(path, item, (*where, index), lines, visited)
    return problems


def _preset_items(
    path: Path, data: Any, lines: LineMap
) -> tuple[list[Any], tuple[Any, ...], list[PresetProblem]]:
    if isinstance(data, dict) and "presets" in data:
        problems = [
            PresetProblem(
                path,
                lines.get((key,)),
                str(key),
                "a file with a `presets:` list holds nothing else at the top level",
            )
            for key in data
            if key != "presets"
        ]
        if not isinstance(data["presets"], list):
            problems.append(
                PresetProblem(
                    path,
                    lines.get(("presets",)),
                    "presets",
                    "must be a list, one `- name: ...` entry per preset",
                )
            )
            return [], (), problems
        return data["presets"], ("presets",), problems
    if isinstance(data, dict):
        return [data], (), []
    message = "must hold one preset (`name:`, `prompt:` ...) or a `presets:` list"
    return [], (), [PresetProblem(path, lines.get(()), "file", message)]


def _validate_item(
    path: Path, item: Any, where: tuple[Any, ...], lines: LineMap
) -> tuple[Preset | None, list[PresetProblem]]:
    if not isinstance(item, dict):
        message = "each preset must be a block of `field: value` lines (name, prompt, options ...)"
        return None, [PresetProblem(path, lines.get(where), _field_text(where) or "file", message)]
    name = item.get("name") if isinstance(item.get("name"), str) else None
    # `origin` and `line` are the loader's to fill in; a file writing them is told they are unknown.
    stems: list[Any] = item["stems"] if isinstance(item.get("stems"), list) else []
    mappings: list[tuple[tuple[Any, ...], Any, type[BaseModel]]] = [((), item, Preset)]
    mappings += [(("stems", index), stem, StemSpec) for index, stem in enumerate(stems)]
    problems = [
        PresetProblem(
            path,
            lines.get((*where, *at, key)),
            _field_text((*at, key)),
            _unknown_field_message(key, _file_fields(model)),
            name,
        )
        for at, mapping, model in mappings
        if isinstance(mapping, dict)
        for key in mapping
        if key in LOADER_FIELDS
    ]
    try:
        preset = Preset.model_validate(_without_loader_fields(item))
    except PydanticValidationError as exc:
        for error in exc.errors():
            # Checks spanning several fields name the exact one in ctx["at"].
            loc = (*error["loc"], *(error.get("ctx") or {}).get("at", ()))
            field = _field_text(loc) or "preset"
            problems.append(
                PresetProblem(path, _line_for((*where, *loc), lines), field, friendly_message(error), name)
            )
        return None, problems
    if problems:
        return None, problems
    placed_stems = None
    if preset.stems is not None:
        placed_stems = [
            stem.model_copy(update={"line": lines.get((*where, "stems", index))})
            for index, stem in enumerate(preset.stems)
        ]
    update = {"origin": path, "line": lines.get(where), "stems": placed_stems}
    return preset.model_copy(update=update), []


def _without_loader_fields(item: dict[Any, Any]) -> dict[Any, Any]:
    cleaned = {key: value for key, value in item.items() if key not in LOADER_FIELDS}
    if isinstance(cleaned.get("stems"), list):
        cleaned["stems"] = [
            _without_loader_fields(stem) if isinstance(stem, dict) else stem for stem in cleaned["stems"]
        ]
    return cleaned


def _file_fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name in model.model_fields if name not in LOADER_FIELDS)


def _in_preset(where: tuple[Any, ...]) -> tuple[Any, ...]:
    return where[2:] if where[:1] == ("presets",) and len(where) > 2 else where


def _line_for(loc: tuple[Any, ...], lines: LineMap) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _field_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unknown_field_message(key: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return f"unknown field; {hint}allowed here: {', '.join(allowed)}"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` inside a preset (for 'allowed here: ...')."""
    annotation: Any = Preset
    for part in (*loc, None):
        while get_origin(annotation) in (Union, UnionType):
            choices = [arg for arg in get_args(annotation) if arg is not type(None)]
            annotation = choices[0] if len(choices) == 1 else None
        if part is None:
            break
        if isinstance(part, int) and get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        elif (
            isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
            and part in annotation.model_fields
        ):
            annotation = annotation.model_fields[part].annotation
        else:
            return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def friendly_message(error: ErrorDetails) -> str:
    """A pydantic error in words a musician reads: what is wrong and what is allowed."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = _file_fields(model) if model else ()
        return _unknown_field_message(loc[-1], allowed) if allowed else "unknown field"
    return plain_problem(error)
