"""`sam-bridge local-service`: run the built-in stand-in for fal on this computer (tests, demos)."""

from __future__ import annotations

import argparse
import sys

from bridge.common.errors import InputError
from bridge.common.loopback import is_loopback_host


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "local-service",
        help="run a local stand-in for fal (no account, no cost; for tests and demos)",
        description="Serve fal's queue and upload protocol on this computer with a simple, predictable "
        "'separation' (frequency bands chosen from the prompt's words). Stop it with Ctrl-C.",
    )
    parser.add_argument("--host", default=None,
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=8765,
                        help="port to listen on (default 8765; 0 = any free port)")
    parser.add_argument("--key", default=None,
                        help="the only API key to accept (default: accept any key)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS_PER_SECOND",
                        help="extra processing time per second of audio, to feel like the real service")
    parser.add_argument("--job-time", type=float, default=0.0, metavar="SECONDS",
                        help="extra fixed processing time per job")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs processed at once (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, not {args.port}.")
    host = args.host or "127.0.0.1"
    allow_remote = args.host is not None
    if allow_remote and not is_loopback_host(host):
        print(f"warning: listening on {host}: other computers that can reach it can use this service "
              "and read the files uploaded to it.", file=sys.stderr, flush=True)
    from bridge.local_service.server import serve  # numpy, scipy: only when the stand-in runs

    serve(host, args.port, args.key, args.delay, args.job_time, args.concurrency, allow_remote=allow_remote)
    return 0
