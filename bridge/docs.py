"""README tables generated from the declarations they document (request schema, status file, options,
OSC address space, manifest, built-in presets), so code, validation and docs cannot drift apart.

`python -m bridge.docs` rewrites the marked sections of README.md; a test fails when they are stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel

from bridge.common.options import OutputOptions, ServiceOptions, flag_for
from bridge.common.request import INTERNAL_REQUEST_FIELDS, SeparationRequest
from bridge.engine.manifest import MANIFEST_FIELDS
from bridge.request_files.folder import STATUS_FIELDS

README = Path(__file__).resolve().parent.parent / "README.md"


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("pathlib.", "").replace("bridge.common.request.", "")
    text = re.sub(r"bridge\.\w+\.", "", text)
    return text.replace(" | None", " (optional)").replace(" | ", " or ").replace("dict[str, Any]", "object")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    value = getattr(value, "value", value)
    if value == "":
        return '`""`'
    return "—" if value in (None, {}, []) else f"`{value}`"


def model_table(model: type[BaseModel], skip: AbstractSet[str] | None = None) -> str:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if skip and name in skip:
            continue
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
    return "\n".join(rows)


def option_table(model: type[BaseModel]) -> str:
    """An options model with the CLI flag of each option (OSC: `name=value` in its `options` argument;
    request files and presets: `options: {name: value}`), all from the one declaration."""
    rows = ["| option | type | default | CLI flag | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | `{flag_for(name)}` | "
                    f"{(field.description or '').replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def dict_table(fields: dict[str, str], head: str = "field") -> str:
    return "\n".join([f"| {head} | meaning |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in fields.items())])


def presets_table() -> str:
    from bridge.presets.library import PresetLibrary, builtin_presets_dir

    library = PresetLibrary([("built-in", builtin_presets_dir())])
    rows = ["| preset | isolates | options | tags |", "|---|---|---|---|"]
    for preset in library.presets():
        what = (" → ".join(s.label for s in preset.stems) + " → other") if preset.stems else f'"{preset.prompt}"'
        options = ", ".join(f"{k}={v}" for k, v in preset.options.model_dump(exclude_defaults=True,
                                                                               mode="json").items())
        rows.append(f"| `{preset.name}` | {what} | {options or 'defaults'} | {', '.join(preset.tags)} |")
    return "\n".join(rows)


def _config_type(annotation: Any) -> str:
    """A config value's type as a user writes it: the choices of a Literal, "path" for a checked path."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    optional = " (optional)" if type(None) in get_args(annotation) else ""
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if get_origin(annotation) is Annotated:
        return _config_type(args[0])
    if optional and len(args) == 1:
        return _config_type(args[0]) + optional
    if annotation is Path:
        return "path"
    return _type_name(annotation)


def _yaml_default(field: Any) -> str:
    """A default as it is written in the YAML file (`true`, `{hot-folder: low}`), not as Python prints it."""
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict) and value:
        return "`{" + ", ".join(f"{k}: {getattr(v, 'value', v)}" for k, v in value.items()) + "}`"
    return _default(field)


def config_table() -> str:
    """Every key of the config file, nested ones dotted (`osc.port`; `hot_folders[].path` for each entry of
    the list), from the config model itself."""
    from bridge.common.config import Config

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            inner = field.annotation
            nested = getattr(inner, "__args__", (None,))[0] if getattr(inner, "__origin__", None) is list else None
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, f"{prefix}{name}.")
            elif isinstance(nested, type) and issubclass(nested, BaseModel):
                rows.append(f"| `{prefix}{name}` | list | `[]` | {field.description or ''} |")
                walk(nested, f"{prefix}{name}[].")
            else:
                meaning = (field.description or "").replace("|", chr(92) + "|")
                rows.append(f"| `{prefix}{name}` | {_config_type(inner)} | {_yaml_default(field)} | {meaning} |")

    walk(Config, "")
    return "\n".join(rows)


def hot_folder_ignored() -> str:
    """The names a hot folder never takes, from the lists the watcher itself uses."""
    from bridge.hotfolder.names import (
        DONE_DIR_NAME,
        IGNORED_PREFIXES,
        IGNORED_SUFFIXES,
        OWN_SUFFIXES,
        STEMS_DIR_NAME,
    )

    names = ", ".join(f"`*{suffix}`" for suffix in IGNORED_SUFFIXES)
    starts = ", ".join(f"`{prefix}`" for prefix in IGNORED_PREFIXES)
    own = ", ".join(f"`*{suffix}`" for suffix in OWN_SUFFIXES)
    folders = f"`{STEMS_DIR_NAME}/` and `{DONE_DIR_NAME}/`"
    return (f"- Ignored (a file is skipped without an error file): names ending in {names} (partial downloads and "
            f"renders, DAW peak and analysis files, sync tools' temp files); names starting with {starts} "
            f"(dotfiles, `~$` and `.~lock` lock files, temp names); the files beside stems and sources "
            f"({own}: manifests, sidecars, error and status files) and the stems a manifest beside them "
            f"lists, even when the output folder is inside the hot folder; with `recursive`, the folders "
            f"{folders} (any case) and dot folders. A stem you copy into "
            f"a hot folder on its own is separated again (chain presets).")


def osc_table() -> str:
    from bridge.osc.table import markdown_table

    return markdown_table()


SECTIONS: dict[str, Callable[[], str]] = {
    "request-schema": lambda: model_table(SeparationRequest, INTERNAL_REQUEST_FIELDS),
    "status-schema": lambda: dict_table(STATUS_FIELDS),
    "service-options": lambda: option_table(ServiceOptions),
    "output-options": lambda: option_table(OutputOptions),
    "manifest-schema": lambda: dict_table(MANIFEST_FIELDS),
    "osc-table": osc_table,
    "presets-table": presets_table,
    "config-keys": config_table,
    "hot-ignored": hot_folder_ignored,
}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        body = make()

        def fill(match: re.Match[str], body: str = body) -> str:  # a function: no escape processing
            return match.group(1) + body + "\n" + match.group(2)

        text = pattern.sub(fill, text)
    return text


def main() -> int:
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if new != text:
        README.write_text(new, encoding="utf-8")
        print("README.md tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
