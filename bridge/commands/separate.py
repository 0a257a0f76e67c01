"""`sam-bridge separate FILE... --prompt TEXT | --preset NAME`: two stems per file, no daemon needed.

Several files are separated one after another with the same options; a file that cannot be used is
reported and skipped, anything that concerns them all (key, service, prompt, preset) stops the run. This
module only declares the command line: what a run does is in `separate_run`, imported when one starts, so
`sam-bridge separate --help` loads neither the audio code nor the HTTP client."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.common.options import option_flags

if TYPE_CHECKING:
    from bridge.common.request import Span

STEM_FORMATS = ("WAV", "AIFF", "FLAC", "CAF", "W64", "RF64")
STEM_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("separate", help="separate audio files into target and residual stems",
                              description="Isolate a sound in each FILE, described by --prompt or a --preset.")
    p.add_argument("source", type=Path, nargs="+", metavar="FILE",
                   help="audio file(s) (WAV, AIFF, FLAC, MP3, OGG…); several are done one after another")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt", help='what to isolate, e.g. "piano playing"')
    what.add_argument("--preset", help="preset name (see `sam-bridge presets list`)")
    p.add_argument("--project", type=Path, help="project folder: stems go to its Stems/ folder")
    p.add_argument("--output-dir", type=Path, help="exact folder for the stems")
    p.add_argument("--start", type=float, help="seconds into FILE where the part to separate begins")
    p.add_argument("--length", type=float, help="seconds to separate from --start")
    for name, flag, kwargs in option_flags():  # every service and output option, from its one declaration
        if name in _CHOICES:
            kwargs = {**kwargs, "choices": _CHOICES[name], "help": f"{kwargs['help']}: {', '.join(_CHOICES[name])}"}
        p.add_argument(flag, **kwargs)
    p.add_argument("--span", action="append", type=parse_span, dest="spans", metavar="START-END[:exclude]",
                   help="a span to separate in seconds (span-separate; repeatable); START-END:exclude marks a "
                   "span to leave out")
    p.add_argument("--estimate", action="store_true",
                   help="print seconds, requests and estimated cost per file and in total; send nothing")
    p.add_argument("--audition", nargs="?", type=_positive, const=AUDITION_DEFAULT, metavar="SECONDS",
                   help=f"separate only the loudest SECONDS (default {AUDITION_DEFAULT:g}) of the part (--start with "
                   "--length: inside it; --start alone: from --start); "
                   "the stems are named .audition; prints what the whole would cost")
    service = p.add_mutually_exclusive_group()
    service.add_argument("--local", action="store_true", help="use the built-in local stand-in (no key needed)")
    service.add_argument("--service-url", help="use a stand-in service at this URL (`sam-bridge local-service`)")
    # Benchmarks and demos: the in-process stand-in's seconds of work per second of audio.
    p.add_argument("--upload-bits", type=int, choices=(16, 24), default=24,
                   help="bits of the mono 48 kHz FLAC sent to fal (16: ~40%% fewer bytes for a slow uplink)")
    p.add_argument("--local-delay", type=_non_negative, help=argparse.SUPPRESS)
    p.add_argument("--resume-request", metavar="ID", action="append", default=[],
                   help="collect the result of a request the service already accepted (a run that broke off "
                   "names it) instead of sending FILE again; once per step of a stem set")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (or error)")
    p.set_defaults(func=run)


AUDITION_DEFAULT = 10.0
_CHOICES = {"format": STEM_FORMATS, "subtype": STEM_SUBTYPES}


def parse_span(text: str) -> Span:
    """`12.5-20` (a span to keep) or `12.5-20:exclude` (a span to leave out), in seconds."""
    from bridge.common.request import Span

    try:
        return Span.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value

def run(args: argparse.Namespace) -> int:
    from bridge.commands.separate_run import run as run_separate

    return run_separate(args)
