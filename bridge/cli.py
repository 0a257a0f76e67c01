"""`sam-bridge` command line: one sub-command per module in `bridge.commands`."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from bridge import __version__
from bridge.common.errors import BridgeError
from bridge.common.processes import ensure_std_streams
from bridge.common.redact import RedactingStream, SafeLogFilter, safe_text

# Each module defines `register(subparsers)`, which adds its parser(s) and sets `func(args) -> int`.
COMMAND_MODULES = ("separate", "run", "status", "presets", "config", "local_service", "service", "ableton",
                   "allow", "reaper", "team")
# The module that registers each sub-command: a command line that names one imports only that module (a
# DAW script calling `status` or `separate` pays for nothing else); `--help` alone imports them all.
MODULE_OF = {"separate": "separate", "run": "run", "status": "status", "cancel": "status", "retry": "status",
             "presets": "presets", "config": "config", "local-service": "local_service", "service": "service",
             "service-run": "service", "ableton": "ableton", "allow": "allow", "reaper": "reaper",
             "team": "team"}

AFTER_VERBOSE, AFTER_QUIET = "verbose after ", "quiet after "  # + the sub-command: -v/-q given after it


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (given the command line) one with just the sub-command it names."""
    parser = argparse.ArgumentParser(
        prog="sam-bridge",
        description="Isolate any sound by describing it: SAM Audio on fal, from your DAW or a folder.",
    )
    parser.add_argument("--version", action="version", version=f"sam-bridge {__version__}")
    _add_log_options(parser, "verbose", "quiet", default_count=0, default_flag=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    named = _command_named(argv) if argv is not None else None
    for name in (MODULE_OF[named],) if named is not None else COMMAND_MODULES:
        importlib.import_module(f"bridge.commands.{name}").register(subparsers)
    return parser


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser (and its own sub-commands', which argparse makes of the same class): it takes
    -v/-q too, so `sam-bridge status -v` works as `sam-bridge -v status` does. argparse copies a sub-parser's
    values over its parent's, so each level has its own names and no value unless given: `-v status -v`
    counts twice, and nothing given before the sub-command is overwritten."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_log_options(self, f"{AFTER_VERBOSE}{self.prog}", f"{AFTER_QUIET}{self.prog}",
                         default_count=argparse.SUPPRESS, default_flag=argparse.SUPPRESS)


def _add_log_options(parser: argparse.ArgumentParser, verbose: str, quiet: str, *, default_count: Any,
                     default_flag: Any) -> None:
    parser.add_argument("-v", "--verbose", action="count", dest=verbose, default=default_count,
                        help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", dest=quiet, default=default_flag,
                        help="only errors")


def _merge_log_options(args: argparse.Namespace) -> None:
    """-v/-q given after the sub-command count as if given before it: commands read `verbose` and `quiet`."""
    values = vars(args)
    for name in [name for name in values if name.startswith((AFTER_VERBOSE, AFTER_QUIET))]:
        given = values.pop(name)
        if name.startswith(AFTER_VERBOSE):
            args.verbose += given
        else:
            args.quiet = args.quiet or given


def _command_named(argv: Sequence[str]) -> str | None:
    """The sub-command on the command line (the top-level options take no values), if it is a known one."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in MODULE_OF else None


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    SafeLogFilter.install()


def entry() -> NoReturn:
    """The `sam-bridge` script and `python -m bridge`: `main()`, then the process ends (see `exit_now`)."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, unless something still runs.

    Freeing every module's objects and the last garbage collections took 160-200 ms after `separate`
    returned (measured between `main()` returning and the process ending), which a DAW script waits for on
    every call. By now the command's files are closed (stems and status files are written under temporary
    names, synced and renamed); the exit handlers still run (logging's flush, temporary folders' cleanup)
    and stdout/stderr are flushed. A live non-daemon thread, work a normal exit waits for, keeps the normal
    exit, as does a Python without the exit handlers' runner.
    """
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others or run_exit_handlers is None:
        raise SystemExit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # gone or closed (the reader of a pipe left): nothing to flush to
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    ensure_std_streams()  # pythonw (the Windows service) has none: every later write must still work
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    _merge_log_options(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not getattr(args, "configures_logging", False):
        configure_logging(args.verbose, args.quiet)
    with _redacted_output():
        return _run(args)


@contextlib.contextmanager
def _redacted_output() -> Iterator[None]:
    """Whatever a command prints passes the key redaction: a last guard for CLI output."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(saved[0]), RedactingStream(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _run(args: argparse.Namespace) -> int:
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
    """To stderr, unless it is gone (the terminal was closed): the exit code still says it. File names and
    service answers in it come from outside: their control sequences are shown as text."""
    with contextlib.suppress(OSError):
        print(safe_text(text, keep_newlines=True), file=sys.stderr)
