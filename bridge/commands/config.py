"""`sam-bridge config init | show`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help="write or show the configuration")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="write a commented default config (never overwrites)")
    init.add_argument("--path", type=Path, help="where to write it (default: the user config folder)")
    init.set_defaults(func=init_config)
    show = sub.add_parser("show", help="print the resolved config (the key is never shown)")
    show.add_argument("--config", type=Path, help="config file to read")
    show.set_defaults(func=show_config)


def init_config(args: argparse.Namespace) -> int:
    from bridge.common.config import CONFIG_FILE_MODE, DEFAULT_CONFIG_TEXT, config_path

    path = args.path or config_path()
    if path.exists():
        print(f"{path} already exists; it was left untouched. Edit it, or remove it to start over.")
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), CONFIG_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(DEFAULT_CONFIG_TEXT)
    print(f"wrote {path}")
    return 0


def show_config(args: argparse.Namespace) -> int:
    import yaml

    from bridge.common.config import config_path, load_config, log_dir, state_dir
    from bridge.common.database import ENV_VAR as DATABASE_ENV_VAR
    from bridge.common.database import redact
    from bridge.fal.auth import ENV_VAR, key_in_env

    path = args.config or config_path()
    config = load_config(path)
    data = config.model_dump(mode="json")
    data["requests_dir"] = str(config.requests_folder(state_dir()))  # resolved, as `run` uses it
    if data["osc"].get("token"):
        data["osc"]["token"] = "<redacted>"
    if data.get("database"):
        data["database"] = redact(data["database"])
    print(f"# config file: {path}{'' if path.exists() else ' (not present: defaults)'}")
    print(f"# state folder: {state_dir()}")
    print(f"# log folder: {log_dir()}")
    print(f"# {ENV_VAR}: {'set (<redacted>)' if key_in_env() else 'not set (the local stand-in is used)'}")
    if os.environ.get(DATABASE_ENV_VAR):  # it wins over `database:`
        print(f"# {DATABASE_ENV_VAR}: {redact(os.environ[DATABASE_ENV_VAR])}")
    print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    from bridge.presets.library import PresetLibrary

    known = set(PresetLibrary.default(quiet=True).names(include_broken=True))
    for folder in config.hot_folders:
        if folder.preset is not None and folder.preset not in known:
            print(f"# warning: hot folder {folder.path} names the preset {folder.preset!r}, which does not exist: "
                  "files dropped there fail until it does (`sam-bridge presets list`)")
    return 0
