"""`sam-bridge allow PATH`: lets OSC requests (the Ableton device) read sources under PATH and write stems there.

OSC may only touch your home folder and the hot folders; a Live project on an external drive is refused
until its folder is allowed. This adds it to `allowed_source_roots` and `allowed_output_roots` in the config
file, keeping the file's comments and mode (it may hold secrets) and a symlink to it, after checking the folder
and the resulting config.
"""

from __future__ import annotations

import argparse
import os
import stat
import uuid
from pathlib import Path
from typing import Any

from bridge.common.config import CONFIG_FILE_MODE, Config, config_path, load_config, with_allowed_root
from bridge.common.errors import ConfigError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "allow", help="let OSC requests (the Ableton device) use a folder outside your home folder",
        description="Adds a folder to the config's allowed_source_roots and allowed_output_roots, so OSC "
        "requests may read audio under it and write stems there. Restart sam-bridge afterwards.")
    p.add_argument("path", type=Path, help="the folder, e.g. a Live project on an external drive")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--read-only", action="store_true", help="only read sources there (stems go elsewhere)")
    which.add_argument("--write-only", action="store_true", help="only write stems there")
    p.add_argument("--config", type=Path, help="config file (default: the user config folder's config.yaml)")
    p.set_defaults(func=run)


def checked_folder(raw: Path) -> Path:
    folder = Path(os.path.abspath(raw.expanduser()))
    if not folder.exists():
        raise ConfigError(f"{folder} does not exist.", hint="Check the path (a drive that is not mounted?).")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder.",
                          hint=f"Allow the folder that holds it:  sam-bridge allow \"{folder.parent}\"")
    resolved = folder.resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError(f"{folder} is a whole drive's root; allowing it would let OSC requests read anything.",
                          hint="Allow the project's folder (or a folder of projects) instead.")
    return resolved


def replace_config(target: Path, text: str) -> Config:
    """Write `text` beside `target` with `target`'s mode (a new config: private), check it, then rename it
    over `target`: never a config the daemon would refuse, never a secret made readable to others."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = CONFIG_FILE_MODE
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if hasattr(os, "fchmod"):  # exactly the old mode, whatever the umask (not on Windows)
                os.fchmod(out.fileno(), mode)
            out.write(text)
        updated = load_config(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return updated


def run(args: argparse.Namespace) -> int:
    folder = checked_folder(args.path)
    path = args.config or config_path()
    config = load_config(path)  # the current file must be valid before it is changed
    keys = [k for k, wanted in (("allowed_source_roots", not args.write_only),
                                ("allowed_output_roots", not args.read_only)) if wanted]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    changed = []
    for key in keys:
        if any(Path(os.path.abspath(p.expanduser())).resolve() == folder for p in getattr(config, key)):
            continue
        text = with_allowed_root(text, key, folder)
        changed.append(key)
    if not changed:
        print(f"{folder} is already allowed in {path}.")
        return 0
    updated = replace_config(path.resolve(), text)  # a symlinked config (dotfiles): the file it points to
    if not all(folder in [p.resolve() for p in getattr(updated, key)] for key in changed):
        raise ConfigError(f"{path} was updated but does not list {folder}; please check the file.")
    print(f"Allowed {folder} ({' and '.join('reading sources' if 'source' in k else 'writing stems' for k in changed)})"
          f" in {path}.")
    print("Restart sam-bridge to use it: stop and start  sam-bridge run  (as a service on Linux: "
          "systemctl --user restart sam-bridge; on macOS and Windows: sign out and in, or stop and start it).")
    return 0
