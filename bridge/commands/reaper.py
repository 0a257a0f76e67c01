"""`sam-bridge reaper install`: the REAPER scripts into REAPER's resource folder, actions registered."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bridge.common.config import state_dir
from bridge.os_service.reaper_install import current_platform, default_resource_path, install_scripts


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reaper", help="install the REAPER scripts (actions) into REAPER",
        description="Copies sam-bridge's ReaScripts into REAPER's resource folder (Scripts/sam-bridge/) and adds "
        "their actions to REAPER's action list. Run it while REAPER is closed.")
    sub = p.add_subparsers(dest="reaper_command", metavar="ACTION", required=True)
    install = sub.add_parser("install", help="copy the scripts and register the actions (REAPER closed)")
    install.add_argument("--resource-path", type=Path, metavar="DIR",
                         help="REAPER's resource folder (Options > Show REAPER resource path); default: the "
                              "standard one of this OS")
    install.add_argument("--preset", action="append", default=[], metavar="NAME",
                         help="also an action that separates with this preset, no menu (for a toolbar button "
                              "or shortcut); repeat for more")
    install.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    platform = current_platform()
    resource_path = args.resource_path or default_resource_path(platform, os.environ)
    result = install_scripts(resource_path.expanduser(), state_dir(), platform, presets=tuple(args.preset))
    print(f"Copied {len(result.copied)} scripts to {result.scripts_dir}")
    for name in result.registered:
        print(f"  new action: {name.removesuffix('.lua')}")
    for name in result.already_registered:
        print(f"  action already there: {name.removesuffix('.lua')}")
    print("Start REAPER: the actions are in the Actions list (search \"sam-bridge\"). sam-bridge itself must "
          "be running: sam-bridge run (or sam-bridge service install once).")
    return 0
