"""Keeping `sam-bridge run` going in the background: a systemd user unit (Linux), a launchd LaunchAgent
(macOS) or a Task Scheduler task (Windows), each started at login and restarted if it crashes (on Windows
by `sam-bridge service-run`, which the task runs: Task Scheduler itself only retries a failed start).

The templates live here, in code, and nowhere else: a pip-installed sam-bridge has no `scripts/` folder,
and one source cannot drift. `scripts/services/` holds examples rendered from these functions (a test
keeps them identical) and a README.

Everything is written to the user's own folders; nothing needs admin rights. The fal key is never put in
a file we write: the service reads it from `service.env` (Linux, macOS), a file the user creates, or from
the user's environment (Windows, `setx FAL_KEY ...`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Literal
from xml.sax.saxutils import escape

from bridge.common.errors import ConfigError

log = logging.getLogger(__name__)

Platform = Literal["linux", "macos", "windows"]
PLATFORMS: tuple[Platform, ...] = ("linux", "macos", "windows")

UNIT_NAME = "sam-bridge.service"
LAUNCHD_LABEL = "org.sam-bridge.daemon"
TASK_NAME = "sam-bridge"
ENV_FILE_NAME = "service.env"
MARKER = "Written by `sam-bridge service install`; remove it with `sam-bridge service uninstall`."
DESCRIPTION = "sam-bridge: text-prompted audio separation for DAWs and hot folders"


def stamped(content: str) -> str:
    """`content` with a digest of itself after the marker: `install` tells from it whether the user edited the
    file since (their changes are then kept aside, not overwritten)."""
    return content.replace(MARKER, f"{STAMP_PREFIX}{_digest(content)}]", 1)


def edited_since_written(text: str) -> bool:
    """Whether a file of ours differs from what we wrote (or is too old to tell: then it may)."""
    found = _STAMP.search(text)
    return found is None or _digest(text.replace(found.group(0), MARKER, 1)) != found.group(1)


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


STAMP_PREFIX = f"{MARKER} [sha256 "
_STAMP = re.compile(re.escape(STAMP_PREFIX) + r"([0-9a-f]{16})\]")


def current_platform() -> Platform:
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return "linux"


# --- where things go ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePaths:
    service_file: PurePath  # the unit / plist / task XML we write
    env_file: PurePath | None  # the key file the service reads, if the platform has one
    log_file: PurePath | None  # where the service manager puts the daemon's output, if anywhere
    home: PurePath


def service_paths(platform: Platform, env: Mapping[str, str]) -> ServicePaths:
    """The service's files for `platform`, from the user's environment (HOME, XDG_CONFIG_HOME, LOCALAPPDATA)."""
    if platform == "windows":
        profile = env.get("USERPROFILE") or "C:\\Users\\Default"
        local = env.get("LOCALAPPDATA") or str(PureWindowsPath(profile, "AppData", "Local"))
        folder = PureWindowsPath(local, "sam-bridge", "service")
        return ServicePaths(folder / "sam-bridge-task.xml", None, None, PureWindowsPath(profile))
    home = PurePosixPath(_required(env, "HOME"))
    if platform == "macos":
        return ServicePaths(home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist",
                            home / "Library" / "Application Support" / "sam-bridge" / ENV_FILE_NAME,
                            home / "Library" / "Logs" / "sam-bridge" / "service.log", home)
    xdg = env.get("XDG_CONFIG_HOME", "")
    config_home = PurePosixPath(xdg) if xdg.startswith("/") else home / ".config"
    return ServicePaths(config_home / "systemd" / "user" / UNIT_NAME, config_home / "sam-bridge" / ENV_FILE_NAME,
                        None, home)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set, so sam-bridge cannot tell where your user folders are.",
                          hint=f"Set {name} (it normally is) and run the command again.")
    return value


def daemon_command(platform: Platform, executable: str | None = None,
                   which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The command line that runs this installation's daemon.

    The `sam-bridge` script beside the running Python wins (it is the installed one); then one on PATH;
    else `python -P -m bridge run`. On Windows `pythonw` runs it without a console window, under
    `service-run`, which restarts it after a crash (Task Scheduler only retries a failed start)."""
    python = PurePath(executable or sys.executable)
    folder = python.parent
    if platform == "windows":
        pythonw = folder / "pythonw.exe"
        return module_command(str(pythonw if os.path.exists(pythonw) else python), "service-run")
    beside = folder / "sam-bridge"
    if os.access(beside, os.X_OK):
        return [str(beside), "run"]
    found = which("sam-bridge")
    if found:
        return [found, "run"]
    return module_command(str(python), "run")


def module_command(python: str, *args: str) -> list[str]:
    """`python -m bridge ARGS`, safe in any start folder: `-m` alone puts the current folder first on sys.path,
    and services start in the user's home (or /), where a folder named `bridge` would run instead. `-P`
    (Python 3.11+, sam-bridge's minimum) leaves it off."""
    return [python, "-P", "-m", "bridge", *args]


# --- the templates ------------------------------------------------------------------------------------


# systemd refuses an executable path holding these ("Executable name contains special characters").
_UNSAFE_EXECUTABLE = re.compile(r"['\"\\\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _systemd_exec(command: Sequence[str]) -> str:
    """ExecStart's value running `command` as it is (systemd.service(5), "Command lines")."""
    if _UNSAFE_EXECUTABLE.search(command[0]):  # a shell runs it instead: any character may be in an argument
        command = ["/bin/sh", "-c", 'exec "$0" "$@"', *command]
    return " ".join([_systemd_quote(command[0], executable=True), *(_systemd_quote(a) for a in command[1:])])


def _systemd_quote(arg: str, executable: bool = False) -> str:
    # Double quotes group words; `\` and `"` are escaped, control characters C-escaped; `%` (specifiers) is
    # doubled, and `$` (variables) in the arguments only: systemd expands none in the executable's path.
    text = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not executable:
        text = text.replace("$", "$$")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return f'"{text}"'


def _systemd_env(key: str, value: str) -> str:
    # Environment=: quoted like ExecStart, but `$` has no meaning there, so it stays single.
    text = f"{key}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{text}"'


# Exits a restart cannot cure, each with why: restarting them every few seconds would only fill the log.
# The codes are declared where they are raised (this layer cannot import them; a test keeps them equal):
# bridge.common.errors.InputError/ConfigError 2, bridge.daemon.AlreadyRunning and the team journal's
# InstanceInUse 3, bridge.engine.journal.JournalDamaged 4. The texts go into a shell line: no $ " ` \.
NOT_RESTARTED: dict[int, str] = {
    2: "its configuration or command line is wrong: see the log above",
    3: "another sam-bridge daemon is already running",
    4: "its job journal is damaged: the log above says what to do",
}


def stop_reason(code: int) -> str:
    """Why an exit is not restarted, for `service status`."""
    return f"the daemon exited with code {code} ({NOT_RESTARTED[code]})"


# How long a service manager lets a stop take before it kills the daemon: a stop waits for the answer to a
# submit already on its way (up to the client's connect + read timeouts, 150 s), or the paid job is lost.
STOP_GRACE_SECONDS = 180


def render_systemd_unit(command: Sequence[str], env_file: PurePath,
                        carried: Mapping[str, str] | None = None) -> str:
    exec_start = _systemd_exec(command)
    env_path = str(env_file).replace("%", "%%")
    moved = "".join(f"Environment={_systemd_env(key, value)}\n" for key, value in (carried or {}).items())
    return f"""# {MARKER}
[Unit]
Description={DESCRIPTION}

[Service]
Type=simple
ExecStart={exec_start}
# Your fal key: put FAL_KEY=your-key in this file (chmod 600). The leading "-" makes it optional.
EnvironmentFile=-{env_path}
Environment=PYTHONUNBUFFERED=1
{moved}Restart=on-failure
RestartSec=5
RestartPreventExitStatus={" ".join(str(code) for code in NOT_RESTARTED)}
TimeoutStopSec={STOP_GRACE_SECONDS}

[Install]
WantedBy=default.target
"""


# Sources the optional key file (launchd has no EnvironmentFile of its own), then runs the daemon. launchd
# restarts any non-zero exit (KeepAlive SuccessfulExit false) and has no list of exits to leave alone, so
# the shell stays as the daemon's parent and turns an exit in NOT_RESTARTED into 0 after saying why in the
# log. It passes launchd's SIGTERM on (a stop waits for the daemon) and waits again until the daemon is gone.
# A signal makes `wait` return >128 at once (POSIX); a daemon that stopped at once may then be reaped already
# and its own code lost (dash and bash alike; dash's `wait` then blocks for good, hence the `kill -0`): a stop
# that was asked for and ended so is said as one, exit 0, not as "code 143".
_LAUNCHD_SHELL = ('if [ -f "$0" ]; then set -a; . "$0"; set +a; fi\n'
                  'trap \'sam_stop=1; [ -z "$sam_pid" ] || kill -TERM "$sam_pid" 2>/dev/null\' TERM INT HUP\n'
                  '"$@" & sam_pid=$!\n'
                  '[ -z "$sam_stop" ] || kill -TERM "$sam_pid" 2>/dev/null\n'
                  'wait "$sam_pid"; sam_code=$?\n'
                  'while [ "$sam_code" -gt 128 ] && kill -0 "$sam_pid" 2>/dev/null\n'
                  'do wait "$sam_pid"; sam_code=$?; done\n'
                  'if [ -n "$sam_stop" ] && [ "$sam_code" -gt 128 ]; then\n'
                  'echo "sam-bridge service: the daemon stopped, as launchd asked." >&2; exit 0; fi\n'
                  'case $sam_code in\n'
                  + "".join(f'{code}) echo "sam-bridge service: the daemon exited with code {code} ({why}); launchd '
                            'does not restart it." >&2; exit 0;;\n' for code, why in NOT_RESTARTED.items())
                  + 'esac\n'
                  'echo "sam-bridge service: the daemon exited with code $sam_code." >&2\n'
                  'exit "$sam_code"')


def render_launchd_plist(command: Sequence[str], env_file: PurePath, log_file: PurePath,
                         carried: Mapping[str, str] | None = None) -> str:
    agent = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": ["/bin/sh", "-c", _LAUNCHD_SHELL, str(env_file), *command],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "ThrottleInterval": 10,
        "ExitTimeOut": STOP_GRACE_SECONDS,  # launchd's default, 20 s, would kill a stop waiting for an answer
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1", **(carried or {})},
        "StandardOutPath": str(log_file),
        "StandardErrorPath": str(log_file),
    }
    text = plistlib.dumps(agent, sort_keys=False).decode("utf-8")
    head, _, rest = text.partition("\n")
    return f"{head}\n<!-- {MARKER} -->\n{rest}"


def render_task_xml(command: Sequence[str], user_id: str | None, working_dir: PurePath) -> str:
    """A Task Scheduler task (schema 1.2) that starts the daemon at the user's logon."""
    user = f"\n      <UserId>{escape(user_id)}</UserId>" if user_id else ""
    principal_user = f"\n      <UserId>{escape(user_id)}</UserId>" if user_id else ""
    arguments = subprocess.list2cmdline(list(command[1:]))
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<!-- {MARKER} -->
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>{escape(DESCRIPTION)}</Description>
    <URI>\\{TASK_NAME}</URI>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>{user}
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">{principal_user}
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>3</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(command[0])}</Command>
      <Arguments>{escape(arguments)}</Arguments>
      <WorkingDirectory>{escape(str(working_dir))}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


# --- the plan: what install/uninstall/status write and run ---------------------------------------------

# What moves sam-bridge's folders (a portable install): set where `install` runs, the service gets it too,
# so it uses the config and state `sam-bridge config show` reports there.
CARRIED_ENV = ("SAM_BRIDGE_CONFIG", "SAM_BRIDGE_STATE_DIR", "SAM_BRIDGE_HOT_DIR")


def carried_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Absolute, as the service starts in another folder (systemd: home; launchd: /)."""
    return {key: os.path.abspath(os.path.expanduser(env[key])) for key in CARRIED_ENV if env.get(key)}



@dataclass(frozen=True)
class ServicePlan:
    platform: Platform
    paths: ServicePaths
    command: list[str]
    content: str  # the service file's text (Windows: written as UTF-16)
    prepare: list[list[str]] = field(default_factory=list)  # run first; failing is fine (nothing to undo)
    enable: list[list[str]] = field(default_factory=list)  # run after writing the file
    disable: list[list[str]] = field(default_factory=list)  # run before removing it
    queries: list[list[str]] = field(default_factory=list)  # tell whether it is enabled / running
    restart: list[list[str]] = field(default_factory=list)  # after `enable`, when an earlier file was replaced
    last_exit: list[str] = field(default_factory=list)  # systemd: the daemon's last exit code, when stopped
    not_carried: list[str] = field(default_factory=list)  # CARRIED_ENV set here that the service cannot take

    def encoded(self) -> bytes:
        return self.content.encode("utf-16" if self.platform == "windows" else "utf-8")


def make_plan(platform: Platform, env: Mapping[str, str], command: list[str] | None = None,
              uid: int | None = None) -> ServicePlan:
    paths = service_paths(platform, env)
    command = command or daemon_command(platform)
    carried = carried_environment(env)
    if platform == "linux":
        assert paths.env_file is not None
        ctl = ["systemctl", "--user"]
        return ServicePlan(
            platform, paths, command, stamped(render_systemd_unit(command, paths.env_file, carried)),
            enable=[[*ctl, "daemon-reload"], [*ctl, "enable", "--now", UNIT_NAME]],
            restart=[[*ctl, "restart", UNIT_NAME]],  # `enable --now` leaves a running unit on its old command
            disable=[[*ctl, "disable", "--now", UNIT_NAME]],
            queries=[[*ctl, "is-enabled", UNIT_NAME], [*ctl, "is-active", UNIT_NAME]],
            last_exit=[*ctl, "show", "--property=ExecMainStatus", "--value", UNIT_NAME])
    if platform == "macos":
        assert paths.env_file is not None and paths.log_file is not None
        domain = f"gui/{uid if uid is not None else _uid()}"
        return ServicePlan(
            platform, paths, command, stamped(render_launchd_plist(command, paths.env_file, paths.log_file, carried)),
            prepare=[["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"]],  # bootstrap refuses a loaded agent
            enable=[["launchctl", "bootstrap", domain, str(paths.service_file)]],
            disable=[["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"]],
            queries=[["launchctl", "print", f"{domain}/{LAUNCHD_LABEL}"]])
    user = f"{env['USERDOMAIN']}\\{env['USERNAME']}" if env.get("USERDOMAIN") and env.get("USERNAME") else None
    return ServicePlan(
        platform, paths, command, stamped(render_task_xml(command, user, paths.home)), not_carried=sorted(carried),
        enable=[["schtasks", "/Create", "/TN", TASK_NAME, "/XML", str(paths.service_file), "/F"],
                ["schtasks", "/Run", "/TN", TASK_NAME]],
        # a running instance keeps its old command and /Run (IgnoreNew) starts no second one: end it, run anew
        restart=[["schtasks", "/End", "/TN", TASK_NAME], ["schtasks", "/Run", "/TN", TASK_NAME]],
        disable=[["schtasks", "/End", "/TN", TASK_NAME], ["schtasks", "/Delete", "/TN", TASK_NAME, "/F"]],
        queries=[["schtasks", "/Query", "/TN", TASK_NAME, "/FO", "CSV", "/V"]])


def _uid() -> int:
    getuid = getattr(os, "getuid", None)
    return int(getuid()) if getuid else 0


def key_hint(plan: ServicePlan) -> str:
    """How the user gives the service their fal key (we never write it anywhere)."""
    if plan.platform == "windows":
        moved = "".join(f"\n{key} is set here, but a scheduled task does not take it from this window: run  "
                        f"setx {key} <its value>  too." for key in plan.not_carried)
        return ("The service reads your fal key from your user environment: run  setx FAL_KEY your-key  once, "
                "then sign out and in again." + moved)
    return (f"The service reads your fal key from {plan.paths.env_file}: put the line  FAL_KEY=your-key  "
            "in it (only you should be able to read it: chmod 600). Without a key it uses the built-in "
            "local stand-in, not SAM Audio.")


# --- doing it -----------------------------------------------------------------------------------------
























def shell_line(args: Sequence[str]) -> str:
    """A command as a person would type it (arguments with spaces in quotes)."""
    return " ".join(f'"{a}"' if (" " in a or not a) else a for a in args)


# --- the examples in scripts/services/ ------------------------------------------------------------------

EXAMPLE_ENVIRONMENTS: dict[Platform, tuple[dict[str, str], list[str]]] = {
    "linux": ({"HOME": "/home/you"}, ["/home/you/.local/bin/sam-bridge", "run"]),
    "macos": ({"HOME": "/Users/you"}, ["/Users/you/.local/bin/sam-bridge", "run"]),
    "windows": ({"USERPROFILE": "C:\\Users\\you", "LOCALAPPDATA": "C:\\Users\\you\\AppData\\Local",
                 "USERDOMAIN": "STUDIO-PC", "USERNAME": "you"},
                module_command("C:\\Users\\you\\AppData\\Local\\Programs\\Python\\Python311\\pythonw.exe",
                               "service-run")),
}


def example_files() -> dict[str, bytes]:
    """The example service files shipped in scripts/services/, rendered for a user called "you"."""
    files = {}
    for platform, (env, command) in EXAMPLE_ENVIRONMENTS.items():
        plan = make_plan(platform, env, command, uid=501)
        files[plan.paths.service_file.name] = plan.encoded()
    return files


if __name__ == "__main__":  # python -m bridge.os_service.files scripts/services: refresh the examples
    target = Path(sys.argv[1])
    for name, data in example_files().items():
        (target / name).write_bytes(data)
        print(f"wrote {target / name}")
