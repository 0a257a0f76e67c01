"""YAML → pydantic model, with errors that name the file, the line and the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from pydantic_core import ErrorDetails

from bridge.common.plain import plain_problem

M = TypeVar("M", bound=pydantic.BaseModel)


def node_lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], int]]:
    """(location, 1-based line) of every key and item in a composed YAML tree."""
    yield path, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            where = (*path, key.value)
            yield where, key.start_mark.line + 1
            for sub in node_lines(value, where):
                if sub[0] != where:
                    yield sub
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from node_lines(item, (*path, index))


def keys_written_twice(node: yaml.Node) -> list[tuple[tuple[Any, ...], int]]:
    """(location, line) of every mapping key written a second time: YAML keeps the last one silently.
    Each node is walked once (an alias reuses its anchor's node)."""
    found: list[tuple[tuple[Any, ...], int]] = []
    seen_nodes: set[int] = set()

    def walk(current: yaml.Node, path: tuple[Any, ...]) -> None:
        if id(current) in seen_nodes:
            return
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: set[Any] = set()
            for key, value in current.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name in keys:
                    found.append(((*path, name), key.start_mark.line + 1))
                keys.add(name)
                walk(value, (*path, name))
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*path, index))

    walk(node, ())
    return found


def line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    """Line of the deepest known part of `loc` (pydantic locations may name a missing field)."""
    for depth in range(len(loc), -1, -1):
        if loc[:depth] in lines:
            return lines[loc[:depth]]
    return 1


def describe_error(error: ErrorDetails) -> str:
    """A pydantic error in plain words, with what is allowed."""
    if error["type"] == "extra_forbidden":
        return "unknown setting (check the spelling)"
    return plain_problem(error)


def load_yaml_model(path: Path, model: type[M], error: type[Exception]) -> M:
    """Parse `path` into `model`; raise `error("file:line: field: message; …")` on any problem."""
    try:
        data_bytes = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        text = data_bytes.decode("utf-8-sig")  # a byte-order mark (some Windows editors write one) is fine
    except UnicodeDecodeError as exc:  # Latin-1 from an old editor, UTF-16 from Notepad's "Unicode"
        bad_line = data_bytes[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{bad_line}: not UTF-8 text; save the file as UTF-8 (in Notepad: Save as, Encoding "
                    "UTF-8)") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise error(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    twice = keys_written_twice(node) if node is not None else []
    if twice:
        raise error("\n".join(f"{path}:{line}: {'.'.join(str(p) for p in where)}: is written twice; keep one"
                              for where, line in twice))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}:1: expected a mapping of settings (key: value)")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = dict(node_lines(node)) if node is not None else {}
        problems = []
        for item in exc.errors():
            loc = tuple(item["loc"])
            field = ".".join(str(p) for p in loc) or "(top)"
            problems.append(f"{path}:{line_of(lines, loc)}: {field}: {describe_error(item)}")
        raise error("\n".join(problems)) from None
