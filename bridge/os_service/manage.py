"""Installing, removing and asking after the service with the service manager's own commands
(systemctl, launchctl, schtasks)."""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge.common.errors import ConfigError
from bridge.os_service.files import (
    MARKER,
    NOT_RESTARTED,
    STAMP_PREFIX,
    STOP_GRACE_SECONDS,
    TASK_NAME,
    ServicePlan,
    edited_since_written,
    shell_line,
    stop_reason,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str


Runner = Callable[[Sequence[str]], CommandResult]


def run_command(args: Sequence[str]) -> CommandResult:
    """Runs a service-manager command; a missing program is a result (127), not an exception."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return CommandResult(127, f"{args[0]} was not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, f"{' '.join(args)} did not finish within 60 s")
    return CommandResult(done.returncode, (done.stdout + done.stderr).strip())


def _text(existing: bytes) -> str | None:
    for encoding in ("utf-8", "utf-16"):  # the task XML is UTF-16, with its byte-order mark
        try:
            text = existing.decode(encoding)
        except UnicodeDecodeError:
            continue
        if MARKER in text:
            return text
    return None


def is_ours(plan: ServicePlan, existing: bytes) -> bool:
    """Whether a file already at the service path was written by us (so it may be replaced or removed)."""
    return _text(existing) is not None


@dataclass(frozen=True)
class Written:
    changed: bool  # False: an identical file was already there
    kept: Path | None = None  # where the user's edited file went, if it was one
    old_text: str = ""
    replaced: bool = False  # an earlier file of ours was there: a service started from it may be running


def write_service_file(plan: ServicePlan) -> Written:
    """Writes the service file atomically.

    A different file of ours is replaced (e.g. sam-bridge moved); if the user edited it since we wrote it,
    their file is first kept beside it as `<name>.edited-<n>`. Anyone else's file is never touched."""
    path = Path(plan.paths.service_file)
    data = plan.encoded()
    kept, text = None, ""
    if path.exists():
        existing = path.read_bytes()
        if existing == data:
            return Written(False)
        found = _text(existing)
        if found is None:
            raise ConfigError(f"{path} already exists and was not written by sam-bridge, so it was left alone.",
                              hint="Move or rename it, then run  sam-bridge service install  again.")
        text = found
        if edited_since_written(text):
            kept = keep_aside(path, _aside_folder(plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.sam-partial")
    temp.write_bytes(data)
    os.replace(temp, path)
    return Written(True, kept, text if kept else "", replaced=bool(text))


def keep_aside(path: Path, folder: Path | None = None) -> Path:
    """Moves `path` to the first free `<name>.edited-<n>` in `folder` (default: its own); an earlier copy is
    never overwritten."""
    folder = folder or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        target = folder / f"{path.name}.edited-{n}"
        try:
            os.link(path, target)  # fails if target exists: no race can overwrite a copy
        except FileExistsError:
            n += 1
            continue
        except OSError:  # no hard links here, or another file system: an exclusive copy
            try:
                with open(target, "xb") as copy:
                    copy.write(path.read_bytes())
            except FileExistsError:
                n += 1
                continue
        path.unlink()
        return target


def _aside_folder(plan: ServicePlan) -> Path:
    """Where an edited service file is kept. launchd loads what lies in LaunchAgents at login, so a copy
    there (with the same Label) could start as a second agent: on macOS it goes to sam-bridge's config
    folder. systemd reads only unit suffixes and Task Scheduler its own store: beside the file is fine."""
    if plan.platform == "macos" and plan.paths.env_file is not None:
        return Path(plan.paths.env_file).parent
    return Path(plan.paths.service_file).parent


def _kept_line(path: Path, kept: Path, text: str, replaced: bool = True) -> str:
    why = ("You had edited" if STAMP_PREFIX in text else
           "An older sam-bridge wrote (it kept no record to tell whether you edited it)")
    then = (": the new file does not have any changes you made, so copy over what you still need."
            if replaced else ".")
    return f"{why} {path}: that version is kept as {kept}{then}"


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def install(plan: ServicePlan, runner: Runner = run_command, start: bool = True) -> Outcome:
    outcome = Outcome()
    written = write_service_file(plan)
    outcome.lines.append(f"{'Wrote' if written.changed else 'Already up to date:'} {plan.paths.service_file}")
    if written.kept is not None:
        outcome.lines.append(_kept_line(Path(plan.paths.service_file), written.kept, written.old_text))
    if plan.paths.log_file is not None:
        Path(plan.paths.log_file).parent.mkdir(parents=True, exist_ok=True)
    if not start:
        outcome.lines.append("Not started (--no-start). Start it with: " + shell_line(plan.enable[-1]))
        return outcome
    for command in plan.prepare:
        runner(command)
    if plan.platform == "macos" and not _wait_agent_unloaded(plan, runner):
        outcome.lines.append("The sam-bridge already running did not stop within "
                             f"{STOP_GRACE_SECONDS + 10:.0f} s, so the new one may not start: see its log file, "
                             "then run  sam-bridge service install  again.")
    # a service started from the earlier file keeps running it (systemd's `enable --now` and Task Scheduler's
    # /Run with IgnoreNew leave a running one alone): the changed one is restarted, so it runs what was written
    ended = False  # a /Run after our /End waits for that instance to be gone
    for command in plan.enable + (plan.restart if written.replaced else []):
        if ended and command[1:2] == ["/Run"]:
            _wait_task_ended(plan, runner)
        ended = plan.platform == "windows" and command[1:2] == ["/End"]
        result = runner(command)
        if result.returncode != 0:
            outcome.ok = False
            outcome.lines.append(f"`{shell_line(command)}` failed ({result.returncode}): {result.output}")
            outcome.lines.append(_manager_hint(plan))
            return outcome
    outcome.lines.append("sam-bridge now starts when you log in, and it is running now"
                         + (" (restarted, so it runs what was just written)." if written.replaced and plan.restart
                            else "."))
    return outcome


def uninstall(plan: ServicePlan, runner: Runner = run_command) -> Outcome:
    outcome = Outcome()
    path = Path(plan.paths.service_file)
    if not path.exists():
        if _task_without_file(plan, runner):
            _run_all(plan.disable, runner)
            outcome.lines.append(f"Removed the task {TASK_NAME} from Task Scheduler ({path} was already gone); "
                                 "sam-bridge no longer starts at login.")
        else:
            outcome.lines.append(f"Nothing to remove: {path} does not exist.")
        return outcome
    text = _text(path.read_bytes())
    if text is None:
        raise ConfigError(f"{path} was not written by sam-bridge, so it was left alone.",
                          hint="Remove it yourself if you no longer need it.")
    _run_all(plan.disable, runner)
    if edited_since_written(text):
        outcome.lines.append(_kept_line(path, keep_aside(path, _aside_folder(plan)), text, replaced=False))
    else:
        path.unlink()
    if plan.platform == "linux":
        runner(plan.enable[0])  # daemon-reload, so systemd forgets the unit
    outcome.lines.append(f"Removed {path}; sam-bridge no longer starts at login.")
    return outcome


def _wait_task_ended(plan: ServicePlan, runner: Runner, seconds: float = 15.0) -> None:
    """schtasks /End returns before the instance is gone; a /Run meanwhile starts none (IgnoreNew), so the
    old daemon would be all there is once it ends. Wait (a while) for the task to stop being Running."""
    deadline = time.monotonic() + seconds
    while task_state(runner(plan.queries[0])).startswith("running") and time.monotonic() < deadline:
        time.sleep(0.25)


def _wait_agent_unloaded(plan: ServicePlan, runner: Runner, seconds: float = STOP_GRACE_SECONDS + 10.0) -> bool:
    """launchctl bootout returns while the agent's daemon is still stopping (launchd sends SIGTERM and waits
    up to its ExitTimeOut), and a bootstrap of a label still loaded fails ("Bootstrap failed: 5: Input/output
    error"): wait until `launchctl print` no longer finds it. The daemon may be finishing what it sent.
    False when it is still loaded at the end."""
    deadline = time.monotonic() + seconds
    said = time.monotonic() + 2.0
    while runner(plan.queries[0]).returncode == 0:
        if time.monotonic() >= deadline:
            return False
        if time.monotonic() >= said:
            log.warning("waiting for the running sam-bridge to stop before the new one starts (it finishes a "
                        "request it sent first; at most %.0f s)", seconds)
            said = deadline
        time.sleep(0.25)
    return True


def _run_all(commands: list[list[str]], runner: Runner) -> None:
    for command in commands:
        result = runner(command)
        if result.returncode != 0:
            log.info("%s: %s", shell_line(command), result.output)  # already stopped or unknown: fine


def _task_without_file(plan: ServicePlan, runner: Runner) -> bool:
    """Windows: the task lives in Task Scheduler once imported, so it outlives a deleted task file."""
    return plan.platform == "windows" and runner(plan.queries[0]).returncode == 0


def status(plan: ServicePlan, runner: Runner = run_command) -> Outcome:
    path = Path(plan.paths.service_file)
    installed = path.exists()
    state = "installed" if installed else "not installed"
    if not installed and _task_without_file(plan, runner):
        installed, state = True, (f"missing, but the task {TASK_NAME} is still registered with Task Scheduler and "
                                  "starts at every logon: sam-bridge service uninstall  removes it")
    outcome = Outcome(ok=installed)
    outcome.lines.append(f"Service file: {path} ({state})")
    outcome.lines.append(f"Runs: {shell_line(plan.command)}")
    if installed:
        running = False
        for command in plan.queries:  # the last one tells whether it runs
            result = runner(command)
            answer = result.output.splitlines()[0] if result.output else f"exit code {result.returncode}"
            if plan.platform == "macos":
                answer = _launchd_state(result)
            elif plan.platform == "windows":
                answer = task_state(result)
            outcome.lines.append(f"{shell_line(command)}: {answer}")
            running = answer in ("active", "state = running") or answer.startswith("running")
        if not running:
            outcome.lines += _why_stopped(plan, runner)
    return outcome


def _why_stopped(plan: ServicePlan, runner: Runner) -> list[str]:
    """The exit the service manager does not restart (NOT_RESTARTED), if that is why it is down."""
    if plan.platform == "linux" and plan.last_exit:
        answer = runner(plan.last_exit).output.strip()
        if answer.isdigit() and int(answer) in NOT_RESTARTED:
            return [f"Stopped: {stop_reason(int(answer))}; systemd does not restart it. After fixing that: "
                    f"systemctl --user restart {plan.last_exit[-1]}"]
    if plan.platform == "macos" and plan.paths.log_file is not None:
        try:
            with open(str(plan.paths.log_file), encoding="utf-8", errors="replace") as handle:
                ends = [line.strip() for line in handle.readlines()[-2000:] if line.startswith(_LAUNCHD_END)]
        except OSError:
            return []
        if ends and "does not restart" in ends[-1]:
            return [f"Stopped: {ends[-1].removeprefix(_LAUNCHD_END)}"]
    return []


_LAUNCHD_END = "sam-bridge service: "  # the start line's last words in the log (files._LAUNCHD_SHELL)


def _launchd_state(result: CommandResult) -> str:
    if result.returncode != 0:
        return "not loaded"
    for line in result.output.splitlines():
        if line.strip().startswith("state ="):
            return line.strip()
    return "loaded"


# schtasks /Query /FO CSV /V columns, in their fixed order (Microsoft, "schtasks query"); the titles and the
# Status words are translated on other Windows languages, the positions and Last Result's numbers are not.
_STATUS, _LAST_RESULT = 3, 6
# Task Scheduler's result codes (winerror.h, SCHED_S_*), shown in decimal by schtasks.
SCHED_S_TASK_RUNNING, SCHED_S_TASK_DISABLED, SCHED_S_TASK_HAS_NOT_RUN, SCHED_S_TASK_TERMINATED = (
    0x41301, 0x41302, 0x41303, 0x41306)


def task_state(result: CommandResult) -> str:
    """The task's real state from `schtasks /Query /TN … /FO CSV /V` (not merely that it exists)."""
    if result.returncode != 0:
        return f"not registered with Task Scheduler ({result.output or result.returncode})"
    rows = [row for row in csv.reader(io.StringIO(result.output)) if len(row) > _LAST_RESULT]
    data = [row for row in rows[1:] if row != rows[0]]  # one header, then a row per trigger
    if not data:
        return f"unreadable answer from schtasks: {result.output[:200]!r}"
    status, last = data[0][_STATUS], data[0][_LAST_RESULT].strip()
    try:
        code = int(last, 16) if last.lower().startswith("0x") else int(last)
    except ValueError:
        code = None
    code = code & 0xFFFFFFFF if code is not None else None
    if code == SCHED_S_TASK_RUNNING or status == "Running":
        return f"running ({status})"
    if code == SCHED_S_TASK_DISABLED or status == "Disabled":
        return f"disabled ({status}): enable it in Task Scheduler or run  sam-bridge service install"
    if code == SCHED_S_TASK_HAS_NOT_RUN:
        return f"not running ({status}); it has not run yet — it starts at your next logon"
    if code == SCHED_S_TASK_TERMINATED:
        return f"not running ({status}); it was ended (schtasks /End or Task Scheduler)"
    if code == 0:
        return f"not running ({status}); it last stopped cleanly"
    if code in NOT_RESTARTED:  # service-run ends with the daemon's code
        return f"not running ({status}); {stop_reason(code)}; it is not restarted"
    return f"not running ({status}); it last ended with code {last}: see the service log"


def _manager_hint(plan: ServicePlan) -> str:
    if plan.platform == "linux":
        return ("systemd's user manager did not take the unit. On systems without it (containers, WSL 1), "
                "run  sam-bridge run  in a terminal instead, or start it from your desktop's autostart.")
    if plan.platform == "macos":
        return "launchd refused the agent; see  launchctl print gui/$(id -u)  and the log file above."
    return "Task Scheduler refused the task; open Task Scheduler to see why, or run  sam-bridge run  yourself."
