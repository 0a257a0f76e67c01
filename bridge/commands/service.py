"""`sam-bridge service install|uninstall|status`: run the daemon in the background, started at login."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bridge.common.errors import ConfigError
from bridge.common.processes import process_alive
from bridge.os_service.files import PLATFORMS, ServicePlan, current_platform, key_hint, make_plan, shell_line
from bridge.os_service.manage import install, status, uninstall


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
    elif args.service_command == "uninstall":
        outcome = uninstall(plan)
        print("\n".join(outcome.lines))
    else:
        outcome = status(plan)
        print("\n".join([*outcome.lines, daemon_line()]))
    return 0 if outcome.ok else 1


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


