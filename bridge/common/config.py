"""The daemon's configuration: one YAML file in the user config folder; CLI flags override it.

Folders come from platformdirs; `SAM_BRIDGE_STATE_DIR` / `SAM_BRIDGE_CONFIG` move them (tests, portable
setups). The fal key is NOT in this file: it stays in the FAL_KEY environment variable.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import AfterValidator, ConfigDict, Field

from bridge.common.cost import PriceTable
from bridge.common.errors import ConfigError
from bridge.common.plain import UserModel
from bridge.common.yaml_model import load_yaml_model

APP = "sam-bridge"


def state_dir() -> Path:
    override = os.environ.get("SAM_BRIDGE_STATE_DIR")
    return Path(override) if override else Path(platformdirs.user_state_dir(APP, appauthor=False))


def config_dir() -> Path:
    override = os.environ.get("SAM_BRIDGE_CONFIG")
    return Path(override).parent if override else Path(platformdirs.user_config_dir(APP, appauthor=False))


def config_path() -> Path:
    override = os.environ.get("SAM_BRIDGE_CONFIG")
    return Path(override) if override else config_dir() / "config.yaml"


CONFIG_FILE_MODE = 0o600  # a new config: only its user reads it (`database:` may hold a password, `osc.token`)


def log_dir() -> Path:
    if os.environ.get("SAM_BRIDGE_STATE_DIR"):
        return state_dir() / "logs"
    return Path(platformdirs.user_log_dir(APP, appauthor=False))


WayIn = Literal["cli", "request-file", "osc", "hot-folder"]
QueuePriority = Literal["normal", "low"]


def _default_priorities() -> dict[WayIn, QueuePriority]:
    return {"hot-folder": "low"}


class _Strict(UserModel):
    model_config = ConfigDict(extra="forbid")


def _full_path(path: Path) -> Path:
    """A folder of the config: `~` is the home folder; anything else relative would depend on the folder the
    daemon happens to start in (a service starts in another one), so it is refused here, with its line."""
    expanded = path.expanduser()
    if not expanded.is_absolute():
        start = "a drive letter like C:\\ (or ~)" if os.name == "nt" else "/ or ~"
        raise ValueError(f"should be a full path, starting with {start}, got {str(path)!r}")
    return expanded


FullPath = Annotated[Path, AfterValidator(_full_path)]


class ServiceConfig(_Strict):
    mode: Literal["auto", "fal", "local"] = Field(
        "auto", description="auto: fal when FAL_KEY is set, else the built-in local stand-in")
    url: str | None = Field(None, description="a stand-in service already running (sam-bridge local-service)")
    local_delay: float = Field(0.02, ge=0, description="stand-in's seconds of work per second of audio")
    start_timeout: float | None = Field(
        600.0, gt=1, description="seconds fal may keep a request waiting to start before dropping it (null: no "
        "limit); a dropped job fails saying so, nothing charged, and its retry sends it anew")
    queue_priority: dict[WayIn, QueuePriority] = Field(
        default_factory=_default_priorities,
        description="fal queue priority per way in: low lets interactive jobs go first")


class OscConfig(_Strict):
    enabled: bool = Field(True, description="false: no OSC server (the Live device and OSC clients need it)")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs allow_clients")
    port: int = Field(9010, ge=0, le=65535, description="UDP port (0: any free one, said in daemon.json)")
    prefix: str = Field("/sam", pattern=r"^/[A-Za-z0-9_/-]*$", description="the start of every OSC address")
    reply_port: int | None = Field(None, ge=1, le=65535, description="fixed reply port (Max's udpreceive)")
    allow_clients: list[str] = Field(default_factory=list, description="client addresses allowed off loopback")
    token: str | None = Field(None, description="shared token, first argument of every request")
    rate_limit: int = Field(20, ge=1, description="separate requests per client per window")
    rate_window: float = Field(60.0, gt=0, description="rate-limit window, seconds")
    rate_limit_total: int = Field(60, ge=1, description="separate requests from all clients together per window")


class HotFolderConfig(_Strict):
    path: FullPath = Field(description="the folder (full path or ~/…); watched as soon as it exists")
    preset: str | None = Field(None, description="None: subfolders named after presets (hot/vocals/, …)")
    output_dir: FullPath | None = Field(None, description="default: Stems/ beside each source")
    recursive: bool = Field(False, description="take files in subfolders too (never in Stems/ or done/)")
    polling: bool = Field(False, description="poll instead of OS events (network drives, SMB/NFS, cloud sync)")
    settle_seconds: float = Field(2.0, ge=0.1, le=600, description="seconds a file must stay unchanged before it "
                                  "is taken (×3 for formats that cannot show they are whole)")
    after_success: Literal["keep", "move-to-done"] = Field(
        "keep", description="move-to-done: the source moves to done/ beside it once its stems are written")


class Config(_Strict):
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    concurrency: int = Field(4, ge=1, le=32, description="jobs in flight at once")
    dedupe: bool = Field(True, description="reuse an identical earlier job's stems instead of paying again")
    upload_bits: Literal[16, 24] = Field(
        24, description="bits of the mono 48 kHz FLAC sent to fal; 16: ~40 % fewer bytes, a -96 dB noise floor")
    daily_budget: float | None = Field(None, ge=0, description="estimated spend per day before jobs wait")
    prices: PriceTable = Field(default_factory=PriceTable)
    confirm_above: float = Field(
        1.0, ge=0, description="estimated cost above which the DAW sides ask before sending (OSC and request-file "
        "estimates carry it)")
    requests_dir: FullPath | None = Field(None, description="request-file folder (default: <state>/requests)")
    default_hot_folder: bool = Field(True, description="watch ~/sam-bridge/hot with one subfolder per preset")
    hot_folders: list[HotFolderConfig] = Field(
        default_factory=list, description="more hot folders, each with the keys below")
    hot_rescan_interval: float = Field(
        30.0, gt=0, description="seconds between full looks at every hot folder (finds what events missed)")
    osc: OscConfig = Field(default_factory=OscConfig)
    allowed_source_roots: list[FullPath] = Field(
        default_factory=list, description="extra folders OSC requests may read (home and hot folders always)")
    allowed_output_roots: list[FullPath] = Field(
        default_factory=list, description="extra folders OSC requests may write (home and hot folders always)")
    database: str | None = Field(
        None, description="team mode: postgresql://user@host/db shared by the team's daemons (or "
        "SAM_BRIDGE_DATABASE); none: this machine's own sqlite journal")
    instance: str | None = Field(
        None, description="this daemon's name in the team (default: host name and state folder)")
    lease_seconds: float = Field(
        30.0, ge=1, le=3600, description="team mode: this daemon, silent this long, is dead; others take its jobs")

    def instance_name(self, state: Path) -> str:
        """The same across restarts: a restarted daemon knows its jobs and claims as its own."""
        import socket

        return self.instance or f"{socket.gethostname()}:{state.resolve()}"

    def requests_folder(self, state: Path) -> Path:
        """Where request files go: `requests_dir`, or `requests` in the daemon's state folder."""
        return self.requests_dir or state / "requests"


def config_file_present(path: Path) -> bool:
    """False only when nothing is there; a file in a folder this user may not read counts as present, so
    that reading it says why it cannot be read (`exists()` raises, or says False, for it)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    if not config_file_present(path):
        return Config()
    return load_yaml_model(path, Config, ConfigError)


DEFAULT_CONFIG_TEXT = """\
# sam-bridge configuration. Every setting is optional; delete a line to get its default.
# The fal API key is NOT stored here: set the FAL_KEY environment variable.

service:
  mode: auto          # auto: fal when FAL_KEY is set, else the built-in local stand-in | fal | local
  # url: http://127.0.0.1:8765   # a stand-in started with `sam-bridge local-service`
  start_timeout: 600  # seconds a request may wait in fal's queue to start; then fal drops it (null: no limit)
  queue_priority:     # per way in (cli, request-file, osc, hot-folder): normal | low
    hot-folder: low   # batch jobs from hot folders let the DAW's jobs go first

concurrency: 4        # jobs in flight at once
dedupe: true          # same audio + prompt + options as an earlier job: reuse its stems, pay nothing
upload_bits: 24       # 16 for a slow uplink: ~40 % fewer bytes, the service hears a -96 dB noise floor
# daily_budget: 5.00  # estimated spend per day; jobs past it wait with a message

prices:               # used for cost estimates only; check fal's pricing page
  currency: USD
  per_30s: 0.05
  per_30s_extra_candidate: 0.025
  rounding: none      # none: proportional (fal states no rounding) | second | unit (whole 30 s, cautious)
confirm_above: 1.00   # REAPER and the Live device ask before sending a job estimated above this

# requests_dir: ~/.local/state/sam-bridge/requests   # where DAW scripts drop request files

default_hot_folder: true   # ~/sam-bridge/hot/<preset>/: drop audio in, stems appear in Stems/
hot_folders: []
#  - path: /Volumes/Studio/to-separate
#    preset: vocals          # omit: subfolders are named after presets
#    output_dir: /Volumes/Studio/stems
#    polling: true           # network drives (SMB/NFS) and cloud-sync folders
#    settle_seconds: 3
#    after_success: keep     # or move-to-done

osc:
  enabled: true
  host: 127.0.0.1     # anything else requires allow_clients and token (UDP has no sender authentication)
  port: 9010
  prefix: /sam
  # reply_port: 9011  # reply to a fixed port (Max's udpreceive) instead of the sender's port
  allow_clients: []
  # token: change-me  # required (sam-bridge refuses to start without it) when bound beyond loopback
  rate_limit: 20      # /separate requests per client per rate_window seconds
  rate_window: 60
  rate_limit_total: 60  # paid jobs accepted from all OSC clients together per rate_window seconds

allowed_source_roots: []   # OSC may read under your home and hot folders, plus these
allowed_output_roots: []   # OSC may write under your home and hot folders, plus these

# Team mode: several workstations share one journal (jobs, claims, dedupe, budget) on PostgreSQL.
# database: postgresql://sam@nas.local/sam_bridge   # or SAM_BRIDGE_DATABASE (keeps the password off disk)
# instance: studio-a       # this daemon's name in the team (default: host name + state folder)
# lease_seconds: 30        # a daemon silent this long is dead: the others take over its jobs
"""


ALLOWED_ROOT_KEYS = ("allowed_source_roots", "allowed_output_roots")


def with_allowed_root(text: str, key: str, folder: Path) -> str:
    """The config file's text with `folder` added to the list `key`, its comments and layout kept.

    Handles the two forms the file has: `key: []` (as `config init` writes it) and a block list under `key:`;
    without the key, the list is added at the end. The caller validates the result before writing it."""
    if key not in ALLOWED_ROOT_KEYS:
        raise ValueError(key)
    item = f"  - {json.dumps(str(folder), ensure_ascii=False)}"  # a JSON string is a valid YAML scalar
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(rf"^{key}:\s*(\[\s*\])?\s*(#.*)?$", line)
        if not match:
            continue
        if match.group(1) is not None:  # `key: []  # comment`
            comment = f"  {match.group(2)}" if match.group(2) else ""
            lines[index: index + 1] = [f"{key}:{comment}", item]
        else:  # a block list: after its last item
            end = index + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t", "-")) or not lines[end].strip()):
                end += 1
            while end > index + 1 and not lines[end - 1].strip():
                end -= 1
            lines.insert(end, item)
        return "\n".join(lines) + "\n"
    return text.rstrip("\n") + ("\n" if text.strip() else "") + f"{key}:\n{item}\n"
