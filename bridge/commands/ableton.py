"""`sam-bridge ableton install | where`: puts the Max for Live device into Live's User Library.

The device (`sam-bridge.amxd`, built by scripts/ableton/build_amxd.py) ships inside the Python package as
`bridge.ableton_device`, so a pip install has it too. Live lists Max Audio Effects saved in the User Library
under `Presets/Audio Effects/Max Audio Effect/` (where Live itself saves a new Max Audio Effect); the User
Library is `~/Music/Ableton/User Library` on macOS and `%USERPROFILE%\\Documents\\Ableton\\User Library` on
Windows unless moved in Live's Preferences (Library > Location of User Library): then pass --user-library.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.common.errors import ConfigError
from bridge.common.shipped import shipped_dir

DEVICE_FILE = "sam-bridge.amxd"
DEVICE_FOLDER = ("Presets", "Audio Effects", "Max Audio Effect")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ableton", help="install the Max for Live device into Live's User Library",
                              description="Copies sam-bridge.amxd into Live's User Library, where Live's browser "
                              "lists it under Audio Effects > Max Audio Effect.")
    sub = p.add_subparsers(dest="ableton_command", metavar="ACTION", required=True)
    for name, helptext in (("install", "copy the device into the User Library"),
                           ("where", "show where the device is and where it would go")):
        action = sub.add_parser(name, help=helptext)
        action.add_argument("--user-library", type=Path,
                            help="your User Library, if you moved it in Live's Preferences > Library")
        action.add_argument("--platform", choices=("linux", "macos", "windows"), help=argparse.SUPPRESS)
        action.set_defaults(func=run)


def current_platform() -> str:
    return {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")


def user_library(platform: str, env: Mapping[str, str]) -> Path:
    """Live's default User Library folder on `platform`, from the user's environment."""
    if platform == "macos" and env.get("HOME"):
        return Path(env["HOME"]) / "Music" / "Ableton" / "User Library"
    if platform == "windows" and env.get("USERPROFILE"):
        return Path(env["USERPROFILE"]) / "Documents" / "Ableton" / "User Library"
    if platform == "linux":
        raise ConfigError("Ableton Live does not run on Linux, so there is no User Library to install into.",
                          hint="Run this on the Mac or PC with Live, or pass --user-library with its folder.")
    raise ConfigError("Your home folder is not set, so the User Library cannot be found.",
                      hint="Pass --user-library with the folder Live's Preferences > Library shows.")


def packaged_device() -> Path:
    """The built device: installed as package data, else scripts/ableton/ of a checkout."""
    return shipped_dir("bridge.ableton_device", "scripts/ableton") / DEVICE_FILE


def is_our_device(data: bytes) -> bool:
    return data[:4] == b"ampf" and b"sam_bridge_device.js" in data


def install_device(device: Path, library: Path) -> tuple[Path, str]:
    """Copies the device in; replaces an older sam-bridge device, never anyone else's file."""
    if not library.is_dir():
        raise ConfigError(f"There is no User Library at {library}.",
                          hint="Open Live once (it creates it), or pass --user-library with the folder Live's "
                               "Preferences > Library shows.")
    data = device.read_bytes()
    target = library.joinpath(*DEVICE_FOLDER) / DEVICE_FILE
    if target.exists():
        existing = target.read_bytes()
        if existing == data:
            return target, "already up to date"
        if not is_our_device(existing):
            raise ConfigError(f"{target} exists and is not a sam-bridge device, so it was left alone.",
                              hint="Rename or move it, then run  sam-bridge ableton install  again.")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{DEVICE_FILE}.partial")  # Live's browser never sees a half-copied device
    temp.write_bytes(data)
    os.replace(temp, target)
    return target, "installed"


def run(args: argparse.Namespace) -> int:
    device = packaged_device()
    if not device.is_file():
        raise ConfigError(f"The device is missing from this installation ({device}).",
                          hint="Build it with  python scripts/ableton/build_amxd.py  or reinstall sam-bridge.")
    library = args.user_library or user_library(args.platform or current_platform(), os.environ)
    if args.ableton_command == "where":
        print(f"Device:       {device}")
        print(f"User Library: {library}")
        print(f"Goes to:      {library.joinpath(*DEVICE_FOLDER) / DEVICE_FILE}")
        return 0
    target, what = install_device(device, library)
    print(f"{what.capitalize()}: {target}")
    print("In Live: Browser > User Library (or Audio Effects > Max Audio Effect) > sam-bridge; drop it on an "
          "audio track. If Live was open, it may need a moment to see the new file.")
    return 0
