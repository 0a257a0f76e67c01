"""`sam-bridge presets list|show|check|example`: see, explain and validate presets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the function that needs them: `sam-bridge --help` does not load presets
    from bridge.presets.files import PresetProblem
    from bridge.presets.library import Preset, PresetLibrary
    from bridge.presets.recipe import Recipe


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list, show and check presets",
        description="Presets turn a name (vocals, dialogue-cleanup ...) into a prompt and options. "
        "Yours go in the user presets folder or in <project>/sam-bridge/presets/ and win over "
        "built-ins of the same name.",
    )
    actions = parser.add_subparsers(dest="presets_action", metavar="ACTION")
    parser.set_defaults(func=lambda args: _usage(parser))

    listing = actions.add_parser("list", help="every preset with where it comes from")
    listing.add_argument("--project", type=Path, metavar="DIR", help="also the project's presets")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--config-dir", type=Path, metavar="DIR",
                         help="the config folder whose presets/ are the user's (DAW scripts get the daemon's)")
    listing.set_defaults(func=list_presets)

    show = actions.add_parser("show", help="the settings a preset resolves to")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--project", type=Path, metavar="DIR", help="also the project's presets")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=show_preset)

    check = actions.add_parser("check", help="validate preset files (exit code 1 on any problem)")
    check.add_argument("files", type=Path, nargs="+", metavar="FILE")
    check.add_argument("--project", type=Path, metavar="DIR", help="resolve stem names with these too")
    check.set_defaults(func=check_files)

    example = actions.add_parser("example", help="print a commented example preset file")
    example.set_defaults(func=_print_example)


def _print_example(args: argparse.Namespace) -> int:
    from bridge.presets.schema import EXAMPLE_PRESET_FILE

    return _print(EXAMPLE_PRESET_FILE.rstrip("\n"))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _print(text: str) -> int:
    print(text)
    return 0


def _problem_json(problem: PresetProblem) -> dict[str, Any]:
    return {
        "file": str(problem.file),
        "line": problem.line,
        "field": problem.field,
        "message": problem.message,
        "preset": problem.preset,
    }


def _problems(library: PresetLibrary) -> list[PresetProblem]:
    """Each problem once: a file on two search-path entries (your presets folder, and named on the command
    line as a relative path) reports once, under the later one's name."""
    from bridge.presets.files import PresetFileError

    found: dict[tuple[Path, int | None, str, str], PresetProblem] = {}
    for error in library.errors():
        for problem in error.problems if isinstance(error, PresetFileError) else ():
            found[(problem.file.resolve(), problem.line, problem.field, problem.message)] = problem
    return list(found.values())


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _what(preset: Preset) -> str:
    if preset.stems is not None:
        return "stems: " + ", ".join(stem.label for stem in preset.stems) + " + other"
    if preset.prompt is not None:
        return f'"{preset.prompt}"' + (" + spans" if preset.spans else "")
    return "spans only"


def list_presets(args: argparse.Namespace) -> int:
    from bridge.presets.library import PresetLibrary, default_search_path

    library = PresetLibrary(default_search_path(project_dir=args.project, config_dir=args.config_dir), quiet=True)
    presets, problems = library.presets(), _problems(library)
    if args.json:
        document = {
            "folders": [{"origin": origin, "path": str(path)} for origin, path in library.search_path],
            "presets": [
                {
                    "name": preset.name,
                    "origin": library.origin_of(preset.name),
                    "file": str(preset.origin) if preset.origin else None,
                    "line": preset.line,
                    "description": preset.description,
                    "prompt": preset.prompt,
                    "stems": preset.stem_labels,
                    "tags": preset.tags,
                }
                for preset in presets
            ],
            "problems": [_problem_json(problem) for problem in problems],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    width = max((len(preset.name) for preset in presets), default=4) + 2
    print(f"{'NAME':<{width}}{'ORIGIN':<10}{'WHAT':<40}DESCRIPTION")
    for preset in presets:
        origin = library.origin_of(preset.name)
        print(f"{preset.name:<{width}}{origin:<10}{_what(preset):<40}{preset.description}".rstrip())
    print("\nPreset folders (a later one wins for a name it also defines):")
    for origin, path in library.search_path:
        print(f"  {origin:<9} {path}")
    if problems:
        print("\nThese preset files have problems (the presets they define cannot be used):")
        for problem in problems:
            print(f"  {problem}")
    return 0


def _recipe_json(recipe: Recipe) -> dict[str, Any]:
    return {
        "label": recipe.label,
        "steps": [
            {
                "label": step.label,
                "prompt": step.prompt,
                "spans": [span.model_dump(mode="json") for span in step.spans] if step.spans else None,
                "options": step.options.model_dump(mode="json"),
            }
            for step in recipe.steps
        ],
        "residual_label": recipe.residual_label,
        "output": recipe.output.model_dump(mode="json"),
    }


def show_preset(args: argparse.Namespace) -> int:
    from bridge.presets.library import PresetLibrary, default_search_path
    from bridge.presets.recipe import recipe_from_preset

    library = PresetLibrary(default_search_path(project_dir=args.project), quiet=True)
    preset = library.get(args.name)  # PresetError: unknown or broken, printed by the CLI
    recipe = recipe_from_preset(preset)
    origin = library.origin_of(preset.name)
    where = f"{preset.origin}:{preset.line}" if preset.origin else "?"
    if args.json:
        document = {
            "name": preset.name,
            "origin": origin,
            "file": str(preset.origin) if preset.origin else None,
            "line": preset.line,
            "description": preset.description,
            "tags": preset.tags,
            **_recipe_json(recipe),
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    print(f"{preset.name}" + (f" - {preset.description}" if preset.description else ""))
    print(f"  from:     {origin} ({where})")
    if preset.tags:
        print(f"  tags:     {', '.join(preset.tags)}")
    for number, step in enumerate(recipe.steps, start=1):
        what = f'prompt "{step.prompt}"' if step.prompt else "no prompt"
        if step.spans:
            what += ", spans " + ", ".join(
                f"{span.start:g}-{span.end:g}s{'' if span.include else ' (excluded)'}" for span in step.spans
            )
        print(f'  request {number}: stem "{step.label}", {what}')
        options = step.options.model_dump(mode="json")
        print("             " + ", ".join(f"{key} {_shown(value)}" for key, value in options.items()))
    method = recipe.output.residual.value
    print(f'  residual: "{recipe.residual_label}" ({method})')
    output = recipe.output
    print(
        f"  output:   folder {output.folder}, label {recipe.label}, "
        f"format {output.format or 'same as source'}, sample format {output.subtype or 'same as source'}"
    )
    return 0


def check_files(args: argparse.Namespace) -> int:
    from bridge.presets.files import read_preset_file
    from bridge.presets.library import PresetLibrary, default_search_path

    files: list[Path] = args.files
    missing = [path for path in files if not path.is_file()]
    for path in missing:
        print(f"{path}: file: not found; give the path of a .yaml preset file")
    present = [path for path in files if path.is_file()]
    # Stems may name built-in, user or project presets: check against those, then the files themselves.
    search_path = default_search_path(project_dir=args.project)
    checked_files = [(f"file {index}", path) for index, path in enumerate(present)]
    library = PresetLibrary([*search_path, *checked_files], quiet=True)
    checked = {path.resolve() for path in present}
    problems = [problem for problem in _problems(library) if problem.file.resolve() in checked]
    for path in present:
        mine = [problem for problem in problems if problem.file.resolve() == path.resolve()]
        for problem in sorted(mine, key=lambda problem: problem.line or 0):
            print(problem)
        if not mine:
            names = [preset.name for preset in read_preset_file(path)[0]]
            print(f"{path}: ok ({len(names)} preset{'s' if len(names) != 1 else ''}: {', '.join(names)})")
    if problems or missing:
        count = len(problems) + len(missing)
        print(f"{count} problem{'s' if count != 1 else ''} found.")
        return 1
    return 0
