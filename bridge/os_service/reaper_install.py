"""Installing the REAPER scripts by hand's steps, done for the user: copy them into REAPER's resource
folder (`Scripts/sam-bridge/`), leave a pointer to the daemon's state folder beside them, and register the
actions in `reaper-kb.ini`. REAPER rewrites that file when it quits, so this runs only while REAPER is closed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.common.errors import ConfigError
from bridge.common.shipped import shipped_dir

SCRIPTS_SUBFOLDER = "sam-bridge"
POINTER_FILE = "sam-bridge-state-dir.txt"  # read by sam_bridge_reaper.lua: where daemon.json is
ACTION_PREFIX = "sam-bridge - "
KB_FILE = "reaper-kb.ini"


def shipped_scripts_dir() -> Path:
    """The ReaScripts: the installed `bridge.reaper_scripts`, else `scripts/reaper/` of a checkout."""
    return shipped_dir("bridge.reaper_scripts", "scripts/reaper")


def default_resource_path(platform: str, env: Mapping[str, str]) -> Path:
    """REAPER's resource folder for a normal (not portable) install."""
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if platform == "windows":
        return Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "REAPER"
    if platform == "macos":
        return home / "Library" / "Application Support" / "REAPER"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "REAPER"


def reaper_processes(platform: str) -> list[str]:
    """Names of running REAPER processes (the OS's own process list)."""
    command = ["tasklist", "/FO", "CSV", "/NH"] if platform == "windows" else ["ps", "-A", "-o", "comm="]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = []
    for line in listing.splitlines():
        name = line.split('","')[0].strip('" ') if platform == "windows" else line.strip()
        base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
        if base in ("reaper", "reaper.exe") or base.startswith("reaper.app"):
            names.append(name)
    return names


def command_id(relative_path: str) -> str:
    """A stable action id for a script, as REAPER names script actions (RS + hex)."""
    return "RS" + hashlib.sha1(relative_path.encode("utf-8")).hexdigest()


@dataclass
class InstallResult:
    scripts_dir: Path
    copied: list[Path] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)  # action names added to reaper-kb.ini
    already_registered: list[str] = field(default_factory=list)


def preset_action_name(preset: str) -> str:
    """The file (and action) name for one preset's action: "sam-bridge - Separate vocals.lua"."""
    safe = "".join("-" if c in '<>:"/\\|?*' or ord(c) < 32 else c for c in preset).strip(" .")
    return f"{ACTION_PREFIX}Separate {safe or 'preset'}.lua"


def lua_string(text: str) -> str:
    """A Lua string literal for any text (every byte escaped: no quoting rule to get wrong)."""
    return '"' + "".join(f"\\{b}" for b in text.encode("utf-8")) + '"'


def preset_action_script(preset: str) -> str:
    return "\n".join([
        "-- @noindex",
        f"-- sam-bridge: Separate selected items with the preset {preset!r} (made by `sam-bridge reaper install`",
        "-- --preset): no menu, for a toolbar button or a shortcut.",
        "",
        'local script_dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\\\])") or ""',
        'package.path = script_dir .. "?.lua;" .. package.path',
        "",
        f'require("sam_bridge_reaper").separate_selected_items({lua_string(preset)})',
        "",
    ])


def install_scripts(resource_path: Path, state_dir: Path, platform: str, *, presets: tuple[str, ...] = (),
                    check_running: bool = True) -> InstallResult:
    if check_running:
        running = reaper_processes(platform)
        if running:
            raise ConfigError("REAPER is running: close it first, then run `sam-bridge reaper install` again.",
                              hint="REAPER rewrites its action list when it quits, which would drop the new "
                                   f"actions (running: {', '.join(sorted(set(running)))}).")
    if not resource_path.is_dir():
        raise ConfigError(f"No REAPER resource folder at {resource_path}.",
                          hint="In REAPER: Options > Show REAPER resource path, then pass that folder with "
                               "--resource-path.")
    source = shipped_scripts_dir()
    target = resource_path / "Scripts" / SCRIPTS_SUBFOLDER
    target.mkdir(parents=True, exist_ok=True)
    result = InstallResult(target)
    for script in sorted(source.glob("*.lua")):
        _copy_replacing(script, target / script.name)
        result.copied.append(target / script.name)
    for preset in presets:  # one action per favourite preset
        path = target / preset_action_name(preset)
        _write_replacing(path, preset_action_script(preset))
        result.copied.append(path)
    _write_replacing(target / POINTER_FILE, str(state_dir) + "\n")
    _register(resource_path / KB_FILE, [p.name for p in result.copied if p.name.startswith(ACTION_PREFIX)], result)
    return result


def _register(kb_file: Path, actions: list[str], result: InstallResult) -> None:
    """Append our SCR lines, editing bytes: the rest of the file comes back byte for byte, whatever its
    encoding (REAPER on Windows may write the ANSI code page) and line ends (CRLF there)."""
    data = kb_file.read_bytes() if kb_file.exists() else b""
    newline = b"\r\n" if b"\r\n" in data else b"\n"
    scr_lines = [line for line in data.splitlines() if line.startswith(b"SCR ")]
    added = []
    for name in actions:
        relative = f"{SCRIPTS_SUBFOLDER}/{name}"
        if any(f'"{relative}"'.encode() in line for line in scr_lines):
            result.already_registered.append(name)
            continue
        # SCR <flags> <section: 0 = main> <id> "<shown name>" "<path under Scripts/>"
        added.append(f'SCR 4 0 {command_id(relative)} "Custom: {name}" "{relative}"'.encode())
        result.registered.append(name)
    if added:
        if kb_file.exists():
            backup = kb_file.with_name(KB_FILE + ".before-sam-bridge")
            if not backup.exists():
                shutil.copy2(kb_file, backup)
        if data and not data.endswith((b"\n", b"\r")):
            data += newline
        _write_replacing(kb_file, data + newline.join(added) + newline)


def _copy_replacing(source: Path, target: Path) -> None:
    _write_replacing(target, source.read_bytes())


def _write_replacing(path: Path, data: str | bytes) -> None:
    """Whole file or none: a temp name beside it, then a rename."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            temp.write_text(data, encoding="utf-8")
        else:
            temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def current_platform() -> str:
    if sys.platform == "win32":
        return "windows"
    return "macos" if sys.platform == "darwin" else "linux"
