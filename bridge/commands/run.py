"""`sam-bridge run`: start the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run the daemon (request files, OSC, hot folders)",
                              description="Run the sam-bridge daemon. Without FAL_KEY it uses the built-in "
                              "local stand-in service.")
    p.add_argument("--config", type=Path, help="config file (default: the user config folder's config.yaml)")
    service = p.add_mutually_exclusive_group()
    service.add_argument("--local", action="store_true", help="use the built-in local stand-in (no key needed)")
    service.add_argument("--service-url", help="use a stand-in service at this URL")
    p.add_argument("--concurrency", type=int, help="jobs in flight at once")
    p.add_argument("--osc-port", type=int, help="OSC port (0: any free port)")
    p.add_argument("--no-osc", action="store_true", help="do not start the OSC server")
    p.add_argument("--no-hot-folder", action="store_true", help="do not watch the default hot folder")
    p.set_defaults(func=run, configures_logging=True)


def run(args: argparse.Namespace) -> int:
    from bridge.common.config import config_file_present, config_path, load_config
    from bridge.common.errors import ConfigError
    from bridge.daemon import choose_service, run_daemon

    if args.config is not None and not config_file_present(args.config):  # named on purpose: not to be lost
        raise ConfigError(f"The config file {args.config} does not exist.",
                          hint="Check the path; without --config the daemon reads "
                               f"{config_path()} (`sam-bridge config init` writes one).")
    config_file = args.config or config_path()
    config = load_config(config_file)
    updates: dict[str, Any] = {}
    if args.concurrency is not None:
        updates["concurrency"] = args.concurrency
    if args.no_hot_folder:
        updates["default_hot_folder"] = False
    osc_updates: dict[str, Any] = {}
    if args.osc_port is not None:
        osc_updates["port"] = args.osc_port
    if args.no_osc:
        osc_updates["enabled"] = False
    if osc_updates:
        updates["osc"] = config.osc.model_copy(update=osc_updates)
    config = config.model_validate({**config.model_dump(), **updates})
    choice = choose_service(config, args.local, args.service_url)
    return run_daemon(config, choice, verbose=args.verbose, quiet=args.quiet, config_file=config_file)
