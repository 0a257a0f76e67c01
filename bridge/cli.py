"""`sam-bridge` command line: one sub-command per module in `bridge.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from bridge import __version__
from bridge.common.errors import BridgeError

# Each module defines `register(subparsers)`, which adds its parser(s) and sets `func(args) -> int`.
COMMAND_MODULES = ("separate", "run", "status", "team", "presets", "config", "local_service", "service")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-bridge",
        description="Isolate any sound by describing it: SAM Audio on fal, from your DAW or a folder.",
    )
    parser.add_argument("--version", action="version", version=f"sam-bridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"bridge.commands.{name}").register(subparsers)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not getattr(args, "configures_logging", False):
        configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except BridgeError as err:
        _tell(f"sam-bridge: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _tell("sam-bridge: interrupted")
        return 130
    except BrokenPipeError:  # `sam-bridge status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, as a shell reports it


def _tell(text: str) -> None:
    """To stderr, unless it is gone (the terminal was closed): the exit code still says it."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr)
