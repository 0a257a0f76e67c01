"""`sam-bridge separate FILE --prompt TEXT | --preset NAME`: one file, two stems, no daemon needed."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.errors import Cancelled, InputError
from bridge.fal_client import RequestHandle
from bridge.jobs import JobState
from bridge.options import Acceleration, OutputFormat, ResidualMethod
from bridge.pipeline import JobResult, Pipeline
from bridge.presets import PresetLibrary, recipe_for
from bridge.progress_display import ProgressDisplay
from bridge.request import Origin, SeparationRequest
from bridge.service_setup import ServiceChoice, open_client


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("separate", help="separate one audio file into target and residual stems",
                              description="Isolate a sound in FILE, described by --prompt or a --preset.")
    p.add_argument("source", type=Path, metavar="FILE", help="audio file (WAV, AIFF, FLAC, MP3, OGG…)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help='what to isolate, e.g. "piano playing"')
    what.add_argument("--preset", help="preset name (see `sam-bridge presets list`)")
    p.add_argument("--project", type=Path, help="project folder: stems go to its Stems/ folder")
    p.add_argument("--output-dir", type=Path, help="exact folder for the stems")
    p.add_argument("--start", type=float, help="seconds into FILE where the part to separate begins")
    p.add_argument("--length", type=float, help="seconds to separate from --start")
    p.add_argument("--acceleration", choices=[a.value for a in Acceleration])
    p.add_argument("--candidates", type=int, dest="reranking_candidates", help="reranking candidates (1-8)")
    p.add_argument("--output-format", choices=[f.value for f in OutputFormat],
                   help="format the service returns (stems are conformed either way)")
    p.add_argument("--residual", choices=[r.value for r in ResidualMethod])
    p.add_argument("--format", help="stem container override: WAV, AIFF, FLAC…")
    p.add_argument("--subtype", help="stem sample format override: PCM_16, PCM_24, FLOAT…")
    service = p.add_mutually_exclusive_group()
    service.add_argument("--local", action="store_true", help="use the built-in local stand-in (no key needed)")
    service.add_argument("--service-url", help="use a stand-in service at this URL (`sam-bridge local-service`)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)


OPTION_ARGS = ("acceleration", "reranking_candidates", "output_format", "residual", "format", "subtype")


def build_request(args: argparse.Namespace) -> SeparationRequest:
    options = {name: getattr(args, name) for name in OPTION_ARGS if getattr(args, name) is not None}
    try:
        return SeparationRequest(
            source=args.source.expanduser().absolute(), prompt=args.prompt, preset=args.preset,
            project_dir=args.project, output_dir=args.output_dir, start=args.start, length=args.length,
            options=options, origin=Origin.cli,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InputError(_first_error(exc)) from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where + ': ' if where else ''}{str(first.get('msg', exc)).removeprefix('Value error, ')}"
    return str(exc)


class CliHooks:
    def __init__(self, display: ProgressDisplay) -> None:
        self.display = display
        self.handles: dict[int, RequestHandle] = {}

    def progress(self, state: JobState, fraction: float, message: str) -> None:
        self.display.update(state.value, fraction, message)

    def submitting(self, step: int) -> None:
        pass

    def submitted(self, step: int, handle: RequestHandle) -> None:
        self.handles[step] = handle

    def cancelled(self) -> bool:
        return False


def run(args: argparse.Namespace) -> int:
    request = build_request(args)
    if not request.source.exists():
        raise InputError(f"{request.source} does not exist.", hint="Check the path (quote names with spaces).")
    library = PresetLibrary.default(project_dir=request.project_dir)
    recipe = recipe_for(request, library)
    choice = ServiceChoice(local=args.local, url=args.service_url)
    began = time.monotonic()
    display = ProgressDisplay(enabled=sys.stderr.isatty() and not args.quiet)
    hooks = CliHooks(display)
    with open_client(choice) as client, tempfile.TemporaryDirectory(prefix="sam-bridge-") as work, display:
        if choice.is_stand_in and not args.json:
            print(f"sam-bridge: {choice.describe()}", file=sys.stderr)
        try:
            result = Pipeline(client).run(request, recipe, hooks, Path(work))
        except KeyboardInterrupt:
            for handle in hooks.handles.values():
                client.cancel(handle)
            raise Cancelled("Cancelled by Ctrl-C; the service request was cancelled and no stem was written."
                            ) from None
    print_result(result, args.json, time.monotonic() - began)
    return 0


def print_result(result: JobResult, as_json: bool, seconds: float) -> None:
    if as_json:
        summary = {
            "stems": {label: str(path) for label, path in result.stems.items()},
            "manifest": str(result.manifest),
            "flags": result.flags,
            "request_ids": [step.request_id for step in result.steps],
            "estimated_cost": result.estimated_cost,
            "seconds": round(seconds, 3),
        }
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    for label, path in result.stems.items():
        print(f"{label}: {path}")
    print(f"manifest: {result.manifest}")
    for flag in result.flags:
        print(f"warning: {flag} (see the manifest)", file=sys.stderr)
