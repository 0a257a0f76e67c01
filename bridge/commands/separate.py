"""`sam-bridge separate FILE... --prompt TEXT | --preset NAME`: two stems per file, no daemon needed.

Several files are separated one after another with the same options; a file that cannot be used is
reported and skipped, anything that concerns them all (key, service, prompt, preset) stops the run. This
module only declares the command line: what a run does is in `separate_run`, imported when one starts, so
`sam-bridge separate --help` loads neither the audio code nor the HTTP client."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bridge.common.options import Acceleration, OutputFormat, ResidualMethod

STEM_FORMATS = ("WAV", "AIFF", "FLAC", "CAF", "W64", "RF64")
WORK_PREFIX = "sam-bridge-"  # the temp directory's work folders (the stand-in's too): ours to clean
STEM_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("separate", help="separate audio files into target and residual stems",
                              description="Isolate a sound in each FILE, described by --prompt or a --preset.")
    p.add_argument("source", type=Path, nargs="+", metavar="FILE",
                   help="audio file(s) (WAV, AIFF, FLAC, MP3, OGG…); several are done one after another")
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
    p.add_argument("--format", type=str.upper, choices=STEM_FORMATS, metavar="FORMAT",
                   help=f"stem container override: {', '.join(STEM_FORMATS)}")
    p.add_argument("--subtype", type=str.upper, choices=STEM_SUBTYPES, metavar="SUBTYPE",
                   help=f"stem sample format override: {', '.join(STEM_SUBTYPES)}")
    service = p.add_mutually_exclusive_group()
    service.add_argument("--local", action="store_true", help="use the built-in local stand-in (no key needed)")
    service.add_argument("--service-url", help="use a stand-in service at this URL (`sam-bridge local-service`)")
    p.add_argument("--upload-bits", type=int, choices=(16, 24), default=24,
                   help="bits of the mono 48 kHz FLAC sent to fal (16: ~40%% fewer bytes for a slow uplink)")
    # Benchmarks and demos: the in-process stand-in's seconds of work per second of audio.
    p.add_argument("--local-delay", type=_non_negative, help=argparse.SUPPRESS)
    p.add_argument("--resume-request", metavar="ID", action="append", default=[],
                   help="collect the result of a request the service already accepted (a run that broke off "
                   "names it) instead of sending FILE again; once per step of a stem set")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (or error)")
    p.set_defaults(func=run)


OPTION_ARGS = ("acceleration", "reranking_candidates", "output_format", "residual", "format", "subtype")


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from bridge.commands.separate_run import run as run_separate

    return run_separate(args)
