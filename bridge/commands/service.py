"""`sam-bridge service install|uninstall|status`: run the daemon in the background, started at login."""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.common.errors import ConfigError
from bridge.common.processes import process_alive
from bridge.common.redact import SafeLogFilter
from bridge.os_service import macos_privacy
from bridge.os_service.files import (
    PLATFORMS,
    ServicePlan,
    current_platform,
    key_hint,
    make_plan,
    module_command,
    shell_line,
)
from bridge.os_service.manage import install, status, uninstall
from bridge.os_service.supervise import supervise

if TYPE_CHECKING:  # the config (pydantic) is read only by the actions that need it
    from bridge.common.config import Config


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "service", help="start sam-bridge at login (systemd / launchd / Task Scheduler)",
        description="Install sam-bridge as a background service of your user: a systemd user unit on Linux, "
        "a LaunchAgent on macOS, a Task Scheduler task on Windows. No admin rights needed.")
    sub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    for name, helptext in (("install", "write the service file and start it"),
                           ("uninstall", "stop the service and remove its file"),
                           ("status", "is it installed, enabled, running?")):
        action = sub.add_parser(name, help=helptext)
        if name != "status":
            action.add_argument("--dry-run", action="store_true",
                                help="print what would be written and run, change nothing")
        if name == "install":
            action.add_argument("--no-start", action="store_true", help="write the file but do not start it")
        action.add_argument("--platform", choices=PLATFORMS, help=argparse.SUPPRESS)  # dry runs for other OSes
        action.set_defaults(func=run)
    supervisor = subparsers.add_parser(
        "service-run", help="run the daemon and restart it if it crashes (what the Windows task runs)",
        description="Runs `sam-bridge run` and restarts it after a non-zero exit, waiting 1 s, 2 s, 4 s … up to "
        "a minute between tries, and logs why to service.log in the log folder. Arguments after it go to `run`.")
    supervisor.add_argument("run_args", nargs=argparse.REMAINDER, help="arguments for `sam-bridge run`")
    supervisor.set_defaults(func=service_run, configures_logging=True)


def run(args: argparse.Namespace) -> int:
    platform = args.platform or current_platform()
    dry_run = getattr(args, "dry_run", False)
    if platform != current_platform() and not dry_run:
        raise ConfigError(f"This computer runs {current_platform()}, so a {platform} service cannot be installed "
                          "here.", hint="Use --dry-run to see the files for another system.")
    plan = make_plan(platform, os.environ)
    if dry_run:
        print(describe(plan, args.service_command, getattr(args, "no_start", False)))
        return 0
    if args.service_command == "install":
        outcome = install(plan, start=not args.no_start)
        print("\n".join(outcome.lines))
        print(key_hint(plan))
        if platform == "macos":
            print("\n".join(privacy_notes()))
    elif args.service_command == "uninstall":
        outcome = uninstall(plan)
        print("\n".join(outcome.lines))
    else:
        outcome = status(plan)
        print("\n".join([*outcome.lines, daemon_line()]))
        if platform == "macos":
            print("\n".join(blocked_in_logs(plan)))
    return 0 if outcome.ok else 1


def service_run(args: argparse.Namespace) -> int:
    from bridge.common.config import log_dir
    from bridge.common.processes import SignalStop, ensure_std_streams

    ensure_std_streams()  # pythonw: no console
    path = log_dir() / "service.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=2, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s service-run: %(message)s"))
    root = logging.getLogger()
    for each in (handler, logging.StreamHandler(sys.stderr)):
        SafeLogFilter.install(each)  # the daemon's last stderr lines are logged here: the key stays out
        root.addHandler(each)
    root.setLevel(logging.INFO)
    stop = SignalStop()  # set from a signal handler: no lock (see SignalStop)
    for name in ("SIGTERM", "SIGINT", "SIGBREAK", "SIGHUP"):  # SIGBREAK: Windows' Ctrl-Break
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop.set)
    return supervise(daemon_child_command(args.run_args), stop)


def daemon_child_command(run_args: list[str]) -> list[str]:
    """What `service-run` runs: `sam-bridge run` in this Python."""
    return module_command(sys.executable, "run", *(a for a in run_args if a != "--"))


def service_folders(config: Config) -> list[Path]:
    """The folders the daemon reads and writes besides its own: hot folders, their outputs, allowed roots."""
    folders = [f.path.expanduser() for f in config.hot_folders]
    folders += [f.output_dir.expanduser() for f in config.hot_folders if f.output_dir]
    folders += [p.expanduser() for p in (*config.allowed_source_roots, *config.allowed_output_roots)]
    if config.requests_dir:
        folders.append(config.requests_dir.expanduser())
    return list(dict.fromkeys(folders))


def privacy_notes() -> list[str]:
    """Before the service first needs them: the folders in the config that macOS will ask about."""
    from bridge.common.config import load_config

    home = Path.home()
    protected = macos_privacy.protected_folders(service_folders(load_config()), home)
    program = macos_privacy.service_program()
    if not protected:
        return ["macOS: sources in Desktop, Documents, Downloads, iCloud Drive or on external drives need your "
                f"permission for the service: System Settings > Privacy & Security > Full Disk Access, add  "
                f"{program}  (sam-bridge service status names any folder macOS refused)."]
    lines = ["macOS protects these folders from background services until you allow it:"]
    lines += [f"  {folder}  ({area})" for folder, area in protected]
    lines.append(f"Allow it once: System Settings > Privacy & Security > Full Disk Access, click +, press "
                 f"Cmd-Shift-G, paste  {program}  and switch it on; then  sam-bridge service install  again.")
    return lines


def blocked_in_logs(plan: ServicePlan) -> list[str]:
    """macOS refusals the service met (its output and the daemon's log), each with what to grant."""
    from bridge.common.config import log_dir

    lines: list[str] = []
    for path in (plan.paths.log_file, log_dir() / "daemon.log"):
        try:
            with open(str(path), encoding="utf-8", errors="replace") as handle:
                lines += handle.readlines()[-2000:]
        except (OSError, TypeError):
            continue
    return macos_privacy.explain_log(lines, Path.home(), macos_privacy.service_program())


def describe(plan: ServicePlan, action: str, no_start: bool = False) -> str:
    """What `install` / `uninstall` would do, for --dry-run."""
    lines: list[str] = []
    if action == "install":
        lines += [f"Would write {plan.paths.service_file}:", plan.content.rstrip("\n"), ""]
        if not no_start:
            lines += [f"Would run: {shell_line(command)}  (if it is loaded; a failure is fine)"
                      for command in plan.prepare]
            lines += [f"Would run: {shell_line(command)}" for command in plan.enable]
        lines.append(key_hint(plan))
    elif action == "uninstall":
        lines += [f"Would run: {shell_line(command)}" for command in plan.disable]
        lines.append(f"Would remove {plan.paths.service_file} (only if sam-bridge wrote it)")
    else:
        lines += [f"Would ask: {shell_line(command)}" for command in plan.queries]
    return "\n".join(lines)


def daemon_line() -> str:
    """The daemon as its daemon.json tells it (whoever started it)."""
    from bridge.common.config import state_dir

    info_path = state_dir() / "daemon.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"Daemon: not running (no {info_path})"
    if not process_alive(pid):  # on Windows always alive: daemon.json is removed on exit
        return f"Daemon: not running (pid {pid} in {info_path} has exited)"
    return f"Daemon: running, pid {pid}, version {info.get('version', '?')}, requests in {info.get('requests_dir')}"


