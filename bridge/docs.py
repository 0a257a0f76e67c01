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
from typing import Any

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
